"""The run directory: config.yaml, metrics.csv, train.log, checkpoints. Only rank 0 writes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import yamlfile
from ..atomic import atomic_write_bytes, remove_outputs, remove_stale_temps, write_error
from ..errors import ConfigError, DataError, first_line, printable

METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "val_acc", "test_acc", "lr", "epoch_time_s", "images_per_s",
                 "wall_s"]  # wall_s: seconds of training since the run began (time to accuracy); newer runs only
OPTIONAL_METRICS = {"wall_s"}
# What a run writes atomically: only these files' leftover temps are removed (--output-dir may be
# a folder that also holds the user's own hidden files).
RUN_FILES = ["last.pt", "best.pt", "config.yaml", "metrics.csv", "summary.json", "curves.png"]
WRITTEN_FILES = ["train.log", "evals.csv"]  # appended to, not replaced; a run writes them too
MAX_CONFIG_BYTES = 1 << 20  # a run's config.yaml is a few KB


def check(path: Path, *, resume: bool, exist_ok: bool) -> None:
    """The run folder can be used (nothing is created or changed): not a file, and not another run's
    unless told to continue or overwrite it."""
    if path.exists() and not path.is_dir():
        raise ConfigError("output folder is a file", path)
    if is_locked(path):  # first: a run still writing the folder explains whatever else it holds
        raise busy(path)
    if not resume and not exist_ok and (path / "config.yaml").exists():
        if not (path / "last.pt").exists():  # stopped before its first checkpoint: nothing to --resume
            raise ConfigError("output folder holds a run that saved no checkpoint (stopped in its first epoch?); "
                              "pass --exist-ok to start it over, or another --output-dir", path)
        raise ConfigError("output folder already holds a run; pass --resume to continue it, --exist-ok to "
                          "overwrite it, or another --output-dir", path)
    # No config.yaml, yet files of the names a run writes (another model's best.pt, a run whose config
    # was deleted): they were replaced without a word.
    taken = [name for name in RUN_FILES + WRITTEN_FILES if (path / name).exists()] if path.is_dir() else []
    if not resume and not exist_ok and taken:
        raise ConfigError(f"output folder already holds {', '.join(taken)}, which this run would write over; pass "
                          "--exist-ok to overwrite them, or another --output-dir", path)


def prepare(path: Path, *, resume: bool, exist_ok: bool, clear: bool = True) -> Path:
    """Create or reuse the run folder (check()ed again); refuse one that holds another run unless told otherwise.
    `clear=False`: an --exist-ok run's old files stay until clear_outputs() (once nothing can fail the start)."""
    check(path, resume=resume, exist_ok=exist_ok)
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as exc:
        raise ConfigError(f"output folder is not writable ({exc.strerror or exc})", path) from None
    lock(path)
    if exist_ok and not resume and clear:
        clear_outputs(path)
    # Temp files of writes killed half-way (a SIGKILLed checkpoint save leaves .last.pt.*.tmp): only
    # one convzoo writes a run folder, and a live writer's temps are locked, so these are leftovers.
    remove_stale_temps(path, RUN_FILES)
    return path


def clear_outputs(path: Path) -> None:
    """Overwrite (--exist-ok) means the old run goes: a new run that stopped early or diverged had left
    its config beside the old checkpoints and metrics."""
    remove_outputs(path, RUN_FILES + WRITTEN_FILES)


@dataclass
class Snapshot:
    """What a run folder held before a run began: enough to undo that run's start (rollback)."""

    path: Path
    created: list[Path]  # the folders the run will create, innermost (the run folder) first; [] if it exists
    names: set[str]


def snapshot(path: Path) -> Snapshot:
    path = Path(path)
    if path.is_dir():
        return Snapshot(path, [], {p.name for p in path.iterdir()})
    created = [path]
    while not created[-1].parent.exists() and created[-1].parent != created[-1]:
        created.append(created[-1].parent)
    return Snapshot(path, created, set())


def rollback(before: Snapshot, owned: frozenset[str] | None = None) -> None:
    """Leave the run folder as it was before this run's start (a logger that failed once the folder
    was prepared): the entries it added go (its lock included), then the folders it created, each
    only while empty. A parent it created may have gained another run's folder meanwhile (`exp/a`
    failing while `exp/b` trains): removing that parent whole deleted the other run.
    Only for a start that changed nothing else (prepare(clear=False), before train.log and config.yaml);
    `owned`: the only names the run writes there (quantize's outputs; a file the user saved in the folder
    meanwhile is not the run's), None for any."""
    # The lock is held until its entries are gone: released first, another run could take the folder
    # and start writing entries this loop would then delete.
    for entry in before.path.iterdir() if before.path.is_dir() else ():
        if entry.name not in before.names and entry.name != LOCK_FILE and (owned is None or entry.name in owned):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    if LOCK_FILE not in before.names:
        with contextlib.suppress(OSError):  # (the folder replaced by a file meanwhile: not ours to explain)
            (before.path / LOCK_FILE).unlink()
    unlock(before.path)
    for folder in before.created:  # innermost first; the first one not empty keeps itself and its parents
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            break


def unlock(path: Path) -> None:
    fd = _locks.pop(Path(path).resolve(), None)
    if fd is not None:
        os.close(fd)


LOCK_FILE = ".convzoo-train.lock"
_locks: dict[Path, int] = {}  # run folder -> the descriptor holding its lock, until this process exits


def lock(path: Path, what: str = "train") -> None:
    """One training at a time per run folder: two `train --exist-ok` into one folder at once both
    wrote its files (train.log held both runs' lines); quantize takes the same lock on its output
    folder (`what` names the writers in the refusal). An flock, released when the process ends
    however it ends; a second train in the same process (the Python API) reuses it."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return
    key = path.resolve()
    if key in _locks:
        return
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"output folder is not writable ({exc.strerror or exc})", path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The file locked must still be the folder's: a run rolling back removes its lock file while holding
        # it, and a lock taken on the removed file would let a third run lock a new one beside this one.
        held, named = os.fstat(fd), os.stat(path / LOCK_FILE)
        if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
            raise OSError
    except OSError:
        os.close(fd)
        raise busy(path, what) from None
    _locks[key] = fd


def busy(path: Path, what: str = "train") -> ConfigError:
    return ConfigError(f"another convzoo {what} is writing this output folder now; wait for it to end or "
                       "choose another --output-dir", path)


def is_locked(path: Path) -> bool:
    """Whether another process holds the folder's lock now (looked at, not taken: check() changes nothing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: lock() takes none either
        return False
    if path.resolve() in _locks:  # this process's own (the Python API training again)
        return False
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file, or none readable: lock() itself says what is wrong
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the shared lock taken to look


def saved_config(preset: str | dict | None, given: dict) -> tuple[dict, str, dict]:
    """The config a run was started with, from its last.pt (so a resume given no settings continues it
    unchanged: the CLI's --resume and the API's resume=True), where it came from for messages, and the
    paths to use over the recipe's (below). The run is found as training would place it: its output_dir,
    model and dataset as given, else the preset's or config file's, else the defaults; a run's own
    config.yaml (`--config runs/x/config.yaml --resume`) names the run beside it, from any folder: its
    output_dir and data_path were written relative to where the run began, so the run's folder and the
    data folder last.pt records are taken instead (returned as settings given, which win over the file)."""
    from ..config import TrainConfig, recipe_settings
    from .checkpoint import load_checkpoint

    chosen, defaults = recipe_settings(preset), TrainConfig()
    own = own_run_folder(preset) if not given.get("output_dir") else None
    where = TrainConfig(**{k: given.get(k) or chosen.get(k) or getattr(defaults, k) for k in ("model", "dataset",
                                                                                           "output_dir")})
    path = Path(own or where.run_dir()) / "last.pt"
    if is_locked(path.parent):  # its last.pt is being written: no other reason is the real one
        raise busy(path.parent)
    state = load_checkpoint(path)
    config = state.get("config", {})
    paths = {"output_dir": own} if own else {}
    if isinstance(config, dict) and not given.get("data_path"):
        recorded = config.get("data_path")
        if own and chosen.get("data_path") == recorded and recorded:  # the run's own, as it began
            paths["data_path"] = run_data_path(state, recorded)
        elif not chosen.get("data_path"):
            config = {**config, "data_path": run_data_path(state, recorded)}
    return config, f"{path}: its saved config", paths


def own_run_folder(preset) -> str | None:
    """The run folder whose own config.yaml --config names (the file every start writes there, last.pt
    beside it), or None. Another YAML file kept in a run folder is a recipe: its output_dir says where
    its run is (`runs/a/long.yaml` with `output_dir: runs/a-long` resumed runs/a)."""
    from ..config import is_config_file

    if not isinstance(preset, str) or not is_config_file(preset) or Path(preset).name != "config.yaml":
        return None
    folder = Path(os.path.abspath(Path(preset).parent))  # config.yaml then records where the run is, for any folder
    return str(folder) if (folder / "last.pt").is_file() else None


def run_data_path(state: dict, recorded):
    """The data folder a resumed run reads when no --data-path is given: its own --data-path, which
    may be relative to the folder it began in (`--data-path "my images"`), so the absolute one last.pt
    records is taken where the two differ (resumed from elsewhere). A folder that is gone is named as
    the run's, not as a --data-path the user never gave."""
    if not isinstance(recorded, str) or not recorded:  # found where convzoo looks ($CONVZOO_DATA, the cache)
        return recorded
    # older checkpoints record only an image folder's (data.path, also absolute)
    folder = state.get("data") if isinstance(state.get("data"), dict) else {}
    absolute = state.get("resolved_data_path") or folder.get("path")
    chosen = recorded
    if isinstance(absolute, str) and Path(absolute).is_absolute() and not same_folder(recorded, absolute):
        chosen = absolute
    if not Path(chosen).is_dir():
        given_as = "" if chosen == recorded else f" {recorded!r}"
        raise DataError(f"the run's data folder (its --data-path{given_as}, recorded in last.pt) is not there any more "
                        "(moved or deleted); pass --data-path FOLDER where its images are now", chosen)
    return chosen


def same_folder(a: str, b: str) -> bool:
    """Whether two paths name one folder, links followed; False for a path that cannot be one (a NUL byte)."""
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, ValueError):
        return False


def check_resumed_checkpoint(path: Path, state: dict) -> None:
    """last.pt must be this run's: a checkpoint of another model copied over it would otherwise be
    continued, and its best.pt, metrics and config written over the run's own. The run's config.yaml
    (written at every start) names the model; an unreadable one proves nothing and is rewritten."""
    try:
        config = read_config(path)
    except DataError:
        return
    model = config.get("model")
    if isinstance(model, str) and model != state.get("model"):
        raise ConfigError(f"last.pt is a {state.get('model')!r} checkpoint, but this run trains {model!r} "
                          "(config.yaml): it is not this run's; nothing was changed", path)


def read_config(path: Path) -> dict:
    """The run's config.yaml as a mapping ({} when there is none); a file too large, unreadable, not a
    mapping or one whose aliases expand too far (yamlfile.load_settings) is one DataError line."""
    file = path / "config.yaml"
    try:
        if not file.is_file():
            return {}
        if file.stat().st_size > MAX_CONFIG_BYTES:
            raise DataError(f"config.yaml is larger than {MAX_CONFIG_BYTES >> 20} MB; a run's is a few KB", file)
        return yamlfile.load_settings(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yamlfile.SettingsError) as exc:
        raise DataError(f"cannot read config.yaml ({first_line(exc)})", file) from None


def write_config(path: Path, config: dict) -> None:
    atomic_write_bytes(path / "config.yaml", yamlfile.dump_settings(config).encode())


def write_metrics(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, METRIC_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(path / "metrics.csv", buf.getvalue().encode())


def write_summary(path: Path, summary: dict) -> None:
    atomic_write_bytes(path / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())


def append_eval(path: Path, point: dict) -> None:
    """One evaluation (wall_s, epoch, step, split, accuracy) appended to evals.csv."""
    file = path / "evals.csv"
    try:
        with open(file, "a", newline="") as f:
            writer = csv.DictWriter(f, ["wall_s", "epoch", "step", "split", "accuracy"])
            if f.tell() == 0:
                writer.writeheader()
            writer.writerow(point)
    except OSError as exc:
        raise write_error(file, exc) from None


def trim_evals(path: Path, epoch: int, step: int) -> None:
    """On --resume, drop evals.csv's rows past last.pt's position (`epoch` epochs done, `step` steps
    into the next): they were appended by the interrupted process after its last checkpoint (a save
    that failed on a full disk, a kill), and the resumed run evaluates those steps again, so each
    appeared twice. metrics.csv needs no such care: it is rewritten from last.pt's history.
    A row's position is (its 1-based epoch - 1, its step); the end-of-epoch evaluation (step =
    steps per epoch) comes before the checkpoint written after it (epoch + 1, step 0). Rows that are
    not numbers, and a file that is not the one append_eval writes, are left as they are."""
    file = path / "evals.csv"
    lines = eval_lines(file)
    if not lines:  # none, or not the file append_eval writes: left alone
        return
    kept = [lines[0]] + [row for row in lines[1:] if not _past(row, epoch, step)]
    if len(kept) < len(lines):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerows(kept)  # as csv.DictWriter wrote them
        atomic_write_bytes(file, buf.getvalue().encode())


def eval_lines(file: Path) -> list[list[str]] | None:
    """evals.csv's rows, header first, or None where there is no such file or it is not the one
    append_eval writes."""
    try:
        with open(file, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except (FileNotFoundError, UnicodeDecodeError, csv.Error):
        return None
    except OSError as exc:  # a folder, no permission: appending to it would fail as well
        raise DataError(f"cannot read evaluations ({exc.strerror or exc})", file) from None
    return lines if lines and lines[0][1:5] == ["epoch", "step", "split", "accuracy"] else None


def evals_before(path: Path, epoch: int, step: int) -> list[tuple[int, int, str, float]]:
    """evals.csv's (epoch, step, split, accuracy) up to last.pt's position (`epoch` epochs done, `step`
    steps into the next), as trim_evals keeps them; rows that are not numbers are left out."""
    out = []
    for row in (eval_lines(path / "evals.csv") or [])[1:]:
        try:
            point = int(row[1]), int(row[2]), row[3], float(row[4])
        except (IndexError, ValueError):
            continue
        if not _past(row, epoch, step):
            out.append(point)
    return out


def _past(row: list[str], epoch: int, step: int) -> bool:
    try:
        return (int(row[1]) - 1, int(row[2])) > (epoch, step)
    except (IndexError, ValueError):
        return False


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv as rows of floats (None where empty); a damaged file is one DataError line."""
    file = path / "metrics.csv"
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM, as Excel saves, is not a column name
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise DataError("no metrics.csv: not a convzoo run folder", path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read metrics ({exc})", file) from None
    if not rows:
        raise DataError("metrics.csv holds no logged step (an empty file, or a header alone)", file)
    missing = [k for k in METRIC_FIELDS if k not in rows[0] and k not in OPTIONAL_METRICS]
    if missing:
        raise DataError(f"metrics.csv lacks the columns {', '.join(missing)}", file)
    history = []
    for line, row in enumerate(rows, start=2):
        try:
            history.append({k: float(v) if v not in ("", None) else None for k, v in row.items() if k is not None})
        except (TypeError, ValueError):
            raise DataError(f"line {line} holds a value that is not a number", file) from None
        epoch = history[-1]["epoch"]
        if epoch is None or not math.isfinite(epoch) or not 0 <= epoch <= 1e9:
            raise DataError(f"line {line}: epoch {row['epoch']!r} is not an epoch number", file)
        for key, (low, high) in METRIC_RANGES.items():  # NaN was picked as the best epoch; 1e308 plotted
            value = history[-1].get(key)
            if key == "train_loss" and value is not None and not math.isfinite(value):
                continue  # a diverged run's NaN or inf loss is worth a report
            if value is not None and not low <= value <= high:  # False for NaN too
                raise DataError(f"line {line}: {key} {row[key]!r} is not in {low:g}..{high:g}", file)
    return history


# What the trainer can write (train_loss may also be NaN or inf; a finite 1.7e308 broke the plot's axis).
METRIC_RANGES = {"train_loss": (0, 1e30), "train_acc": (0, 1), "val_acc": (0, 1), "test_acc": (0, 1), "lr": (0, 1e6),
                 "epoch_time_s": (0, 1e9), "images_per_s": (0, 1e12), "wall_s": (0, 1e9)}


class RunLog:
    """Writes the seeds' text lines to train.log and stdout, or JSON lines to stdout with --json.
    A train.log that cannot be written (full disk, read-only folder) is one WriteError."""

    def __init__(self, folder: Path | None, *, json_lines: bool = False, quiet: bool = False):
        self.path = folder / "train.log" if folder else None
        try:
            self.file = open(self.path, "a", buffering=1) if folder else None
        except OSError as exc:
            raise write_error(self.path, exc) from None
        self.json_lines = json_lines
        self.quiet = quiet
        self.write_hook = None  # set by a progress bar so lines print above it

    def line(self, text: str, event: str | None = None, **fields) -> None:
        """`text` to train.log and stdout; with --json, `{"event": event, **fields}` to stdout instead
        (every JSON line names its event; a line without one is text only)."""
        text = printable(text)  # a run folder, data folder or class named with a newline stays on its line
        if self.file:
            try:
                self.file.write(text + "\n")  # line-buffered: a full disk shows here, not at close
            except OSError as exc:
                self.close()
                raise write_error(self.path, exc) from None
        if self.quiet:
            return
        if self.json_lines:
            if event:
                print(json.dumps({"event": event, **fields}), flush=True)
        elif self.write_hook:
            self.write_hook(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.file:
            file, self.file = self.file, None
            try:
                file.close()
            except OSError:  # its write already failed and was reported
                pass


def warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
