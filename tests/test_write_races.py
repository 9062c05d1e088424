"""Writes that race with other processes or fail half-way: the ONNX cache exports the bytes it hashed,
a full temp folder is one line, an output that appears during a long write is kept, two quantize runs
never share a folder, a failed quantize --exist-ok keeps the earlier set, killed cache exports' temps go.
Real files and real processes throughout."""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import MNIST_DIR, assert_user_error, need, run_cli


def labelled_checkpoint(path: Path, tag: str) -> Path:
    """The shipped LeNet-5 MNIST weights as a convzoo checkpoint whose class names carry `tag`: which
    model an export came from shows in its metadata."""
    from convzoo.engine.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint("lenet5:mnist")
    ckpt["class_names"] = [f"{name}-{tag}" for name in ckpt["class_names"]]
    save_checkpoint(path, ckpt)
    return path


def exported_class_names(path: Path) -> list[str]:
    import onnx

    from convzoo.metadata import read_onnx_metadata

    return read_onnx_metadata(onnx.load(str(path)), path)["class_names"]


# --- 1. the ONNX cache stores the export of the bytes it hashed -------------------------------------


def test_cache_exports_the_bytes_it_hashed_though_the_file_is_replaced(tmp_path):
    """Training replaces best.pt atomically while predict exports it: the entry named after the first
    bytes' sha256 must hold their model, not the new file's (every later predict of them was wrong)."""
    from convzoo.deploy.predict import cache_entry, export_intact, export_to_cache, read_model_bytes

    best = labelled_checkpoint(tmp_path / "best.pt", "old")
    data = read_model_bytes(best)
    os.replace(labelled_checkpoint(tmp_path / "next.pt", "new"), best)  # as training saves a better model
    onnx_path, scratch = export_to_cache(best, data, cache_entry(data))
    assert scratch is None and onnx_path == cache_entry(data) and export_intact(onnx_path)
    assert exported_class_names(onnx_path)[0] == "0-old"


def test_checkpoint_bytes_are_checked_as_the_file_would_be(tmp_path):
    """Loading from bytes keeps the loader's checks (CRC of zip entries) and names the user's file."""
    from convzoo.engine.checkpoint import load_checkpoint
    from convzoo.errors import CheckpointError

    best = labelled_checkpoint(tmp_path / "best.pt", "x")
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a weight: only the CRC-32 check notices
    with pytest.raises(CheckpointError, match=r"best\.pt: corrupt checkpoint: the bytes of its entry"):
        load_checkpoint(best, data=bytes(data))
    shipped = load_checkpoint("lenet5:mnist")  # a .safetensors file, read as bytes
    from convzoo.models import pretrained

    path = pretrained.resolve("lenet5:mnist")
    again = load_checkpoint(path, data=path.read_bytes())
    assert again["class_names"] == shipped["class_names"]
    assert all((again["state_dict"][k] == v).all() for k, v in shipped["state_dict"].items())


# --- 2. a temp folder that cannot take a file is one line ------------------------------------------


def small_file_limit():
    """RLIMIT_FSIZE (no root needed): any write past 100 kB fails with EFBIG, as on a full disk; an ONNX
    export of LeNet-5 is 250 kB."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def parent_env() -> dict:
    """This process's environment less what `import convzoo` set in it, so the command sets it itself."""
    return {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}


def limited_cli(*args, env: dict) -> subprocess.CompletedProcess:
    """A new interpreter: what its imports write (torch's caches in $TMPDIR, ~/.cache) is under test too."""
    return run_cli(*args, base_env=parent_env(), env=env, preexec_fn=small_file_limit, fresh=True)


@pytest.mark.real_data
def test_writes_failing_in_the_temp_folder_are_one_line(tmp_path):
    tmp, home = tmp_path / "tmp", tmp_path / "home"
    tmp.mkdir()
    home.mkdir()
    # torch's compiler cache (made by torch.export, empty) is torch's own folder, not a leftover of convzoo's;
    # HOME: onnxruntime's telemetry (off unless the user turns it on) kept a device id in ~/.cache/Microsoft
    env = {"TMPDIR": str(tmp), "HOME": str(home), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    # export: nothing goes through the temp folder any more; the output's own write fails
    proc = limited_cli("export", "--ckpt", "lenet5:mnist", "--output", tmp_path / "m.onnx", env=env)
    assert_user_error(proc, f"{tmp_path / 'm.onnx'}: cannot write: File too large")
    # export --int8: its fp32 graph is written to the temp folder first
    proc = limited_cli("export", "--ckpt", "lenet5:mnist", "--int8", "--data-path", need(MNIST_DIR),
                       "--output", tmp_path / "q.onnx", env=env)
    assert_user_error(proc, f"{tmp}: cannot write in this temporary folder ($TMPDIR): File too large")
    # predict from a checkpoint where the cache cannot be written: the export falls back to the temp folder
    (tmp_path / "cache").write_text("a file, not a folder")
    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    proc = limited_cli("predict", "--model", "lenet5:mnist", tmp_path / "digit.png",
                       env={**env, "CONVZOO_CACHE": str(tmp_path / "cache")})
    assert_user_error(proc, f"{tmp}: cannot write in this temporary folder ($TMPDIR): File too large")
    assert list(tmp.iterdir()) == [] and not (tmp_path / "m.onnx").exists() and not (tmp_path / "q.onnx").exists()
    assert not (home / ".cache" / "Microsoft").exists()


# --- 3. an output that appears during a long write is kept ------------------------------------------


def test_output_that_appears_during_the_write_is_not_replaced(tmp_path):
    """Without --exist-ok the target was free at the start (check_target) but a user's file, or another
    export's result, may take the name before the temp file is renamed: it stays, and the run says so."""
    from convzoo.atomic import atomic_write_bytes, atomic_path
    from convzoo.errors import ConfigError

    target = tmp_path / "model.onnx"
    with pytest.raises(ConfigError, match="appeared while it was being written; nothing was replaced"):
        with atomic_path(target, ".onnx", replace=False) as tmp:
            tmp.write_bytes(b"the export")
            target.write_bytes(b"the user's notes")  # created after the start's check, before the rename
    assert target.read_bytes() == b"the user's notes"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp left behind
    # a dangling symlink is a name taken too
    link = tmp_path / "link.onnx"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="appeared"):
        atomic_write_bytes(link, b"x", replace=False)
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()
    atomic_write_bytes(tmp_path / "free.onnx", b"y", replace=False)  # a free name is written as before
    assert (tmp_path / "free.onnx").read_bytes() == b"y"


def test_export_keeps_a_file_created_while_it_ran(tmp_path):
    """The whole export path: save_onnx's verify step runs between the write and the rename, the moment
    a second export into the same new path used to land its file, which the first then replaced."""
    import onnx

    from convzoo.deploy.export import save_onnx
    from convzoo.errors import ConfigError

    first = tmp_path / "first.onnx"
    assert run_cli("export", "--ckpt", "lenet5:mnist", "--output", first, check=0)
    target = tmp_path / "shared.onnx"
    with pytest.raises(ConfigError, match="shared.onnx: appeared while it was being written"):
        save_onnx(onnx.load(str(first)), target, verify=lambda _: target.write_bytes(b"other export"),
                  replace=False)
    assert target.read_bytes() == b"other export"


# --- 4, 5. quantize: one run per folder; a failed --exist-ok run keeps the earlier set ---------------


def quantize(out: Path, *flags, limit: bool = False) -> subprocess.CompletedProcess:
    args = ["quantize", "--ckpt", "lenet5:mnist", "--method", "ptq", "--calib-batches", "1", "--train-limit", "64",
            "--threads", "1", "--data-path", need(MNIST_DIR), "--output-dir", out, *flags]
    if limit:
        return limited_cli(*args, env={})
    return run_cli(*args)


@pytest.mark.real_data
def test_quantize_refuses_a_folder_another_run_is_writing(tmp_path):
    """Two quantize runs into one folder mixed their files and both exited 0 (one report scored the
    other's int8 model). The lock is train's; here this process holds it, as a running quantize would."""
    from convzoo.engine import rundir

    out = tmp_path / "quant"
    out.mkdir()
    rundir.lock(out)
    try:
        proc = quantize(out)
        assert_user_error(proc, f"{out}: another convzoo train or quantize is writing this output folder now")
        assert [p.name for p in out.iterdir()] == [rundir.LOCK_FILE]
    finally:
        rundir.unlock(out)


@pytest.mark.real_data
def test_failed_quantize_exist_ok_keeps_the_earlier_results(tmp_path):
    """--exist-ok deleted the earlier files before anything could fail: a failure (here a write past the
    file-size limit, as on a full disk) or a SIGTERM left the folder empty."""
    out = tmp_path / "quant"
    first = quantize(out)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert {"model-fp32.onnx", "model-int8.onnx", "int8-report.json"} <= set(before)
    proc = quantize(out, "--exist-ok", limit=True)
    after = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert after == before, proc.stderr
    # named as the output (it named the hidden staging folder's file, gone by then)
    assert_user_error(proc, f"{out}/model-", "cannot write: File too large")
    assert ".quantize-" not in proc.stderr, proc.stderr
    assert [p.name for p in out.iterdir() if p.name.startswith(".quantize-")] == []


# --- 6. temps of killed cache exports are swept ----------------------------------------------------


def test_cached_export_sweeps_temps_of_other_killed_exports(tmp_path, monkeypatch):
    """A cache export killed half-way left `.HASH.onnx.XXXXXXXX.onnx` for ever (temps were swept for the
    same entry only). The next cached export of any checkpoint removes those no writer holds; one a live
    writer holds (locked), and one younger than atomic.MIN_STALE_AGE_S, stay."""
    from convzoo.cache import cache_root
    from convzoo.deploy.predict import Predictor

    folder = cache_root() / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    stale, live, young = (folder / f".{c * 64}.onnx.{c * 8}.onnx" for c in "abc")
    for temp in (stale, live, young):
        temp.write_bytes(b"half an export")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(live, (hour_ago, hour_ago))
    os.utime(young, (time.time() + 3600,) * 2)  # younger than the rule's age whenever the sweep runs
    holder = os.open(live, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as its writer does while it writes
    try:
        Predictor(labelled_checkpoint(tmp_path / "best.pt", "x"))
        assert not stale.exists() and live.exists() and young.exists()
    finally:
        os.close(holder)


def test_a_lock_taken_on_a_lock_file_removed_meanwhile_is_refused(tmp_path, monkeypatch):
    """A run rolling back removes its lock file while it holds it: a second run that opened the file just
    before, then locked it once released, held a lock on a removed file, and a third run could lock the new
    one beside it (two writers). lock() now checks the file it locked is still the folder's."""
    from convzoo.engine import rundir
    from convzoo.errors import ConfigError

    real_flock = fcntl.flock

    def flock_after_removal(fd, operation):
        (tmp_path / rundir.LOCK_FILE).unlink()  # the rolling-back run, between this run's open and flock
        (tmp_path / rundir.LOCK_FILE).touch()  # and a third run's new lock file
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_removal)
    with pytest.raises(ConfigError, match="another convzoo train is writing this output folder"):
        rundir.lock(tmp_path)
    assert tmp_path.resolve() not in rundir._locks
    monkeypatch.setattr(fcntl, "flock", real_flock)
    rundir.lock(tmp_path)  # the folder's own lock file: taken
    assert tmp_path.resolve() in rundir._locks
    rundir.unlock(tmp_path)
