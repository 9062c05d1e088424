"""Atomic file writes: write beside the target, fsync, rename. Readers never see half a file and a
crash never replaces a good file with a broken one.

A temp file is `.{target}.{8 random chars}{suffix}` beside its target, created with the mode a plain
open() would give it (0666 minus the umask, not mkstemp's 0600), and flock()ed by its writer for as
long as it is being written. A writer killed with SIGKILL loses its lock with its life, so
`remove_stale_temps` -- run when a run or a download starts, and on a process's first write of a
target -- can tell a leftover from a file another process is still writing.
Failing writes (no space, read-only or forbidden folder, file-size limit) become one WriteError
naming the target, and the temp file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locks, leftovers are removed by age alone
    fcntl = None

from .errors import ConfigError, ConvzooError, WriteError

# Also matches tempfile.mkstemp's spelling, which earlier versions left behind.
TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9]{1,8})$")
# A temp younger than this may belong to a writer that has created it but not yet locked it.
MIN_STALE_AGE_S = 1.0
_swept: set[str] = set()  # targets (folder/name) this process has already cleared of leftovers
# errnos that, raised while the caller writes the temp file, mean the write failed because of where
# it goes (not a bug, not a missing input the caller was reading).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def write_error(path, exc: OSError) -> WriteError:
    return WriteError(f"cannot write: {exc.strerror or exc}", path)


def check_target(path, *, inputs=(), suffixes: tuple[str, ...] = (), exist_ok: bool = True) -> Path:
    """An output file path, refused before any work when writing it would destroy one of `inputs`
    (`export --ckpt best.pt --output best.pt` replaced the weights with ONNX and said it succeeded),
    or it has none of `suffixes`, is empty, or is a folder; and, unless `exist_ok` (--exist-ok), when
    something is there already (`export --output notes.onnx` replaced a user's file)."""
    if str(path) == "":
        raise WriteError("the output path is empty", "''")
    path = Path(path)
    for source in inputs:
        if Path(source).exists() and (path.resolve() == Path(source).resolve()
                                      or (path.exists() and os.path.samefile(path, source))):
            raise WriteError(f"is also the input {source}: writing it would destroy that; choose another output", path)
    if suffixes and path.name.lower() in suffixes:  # '.onnx' alone: a hidden file with no name, not a suffix
        raise WriteError(f"the output needs a name before {path.name} (e.g. model{path.name})", path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise WriteError(f"the output must end in {' or '.join(suffixes)}", path)
    if path.is_dir():
        raise WriteError("is a folder; give a file name", path)
    if path.exists() and not path.is_file():  # a FIFO: opening it to look inside waits for a writer for ever
        raise WriteError("not a regular file (a FIFO or device); give a file name", path)
    if not exist_ok and (path.exists() or path.is_symlink()):
        raise ConfigError("already exists; pass --exist-ok to overwrite it, or choose another --output", path)
    return path


def check_writable_folder(path) -> None:
    """Refuse, before any work, an output whose folder cannot take a file (`--grid /proc/self/x.png`
    failed only after every prediction was printed). The nearest folder that exists is probed with a
    nameless temp file: permission bits say nothing to root, nor about /proc or a read-only mount."""
    import tempfile

    folder = Path(path).absolute().parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent  # created when the file is written
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder")
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise WriteError(f"cannot write in {folder} ({exc.strerror or exc})", path) from None


def make_folder(path) -> Path:
    """mkdir -p, with a path component that is a file (best.pt/x.onnx) or no permission as a WriteError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create this folder ({exc.strerror or exc})", path) from None
    return path


def write_failure(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` if a write failed because of where it goes (not a bug, nor a network
    error: a download's URLError is an OSError too). Libraries often fail again while cleaning up
    (torch.save's zip writer raises a RuntimeError while handling the ENOSPC), so the chain of
    exceptions `exc` was raised during is searched too."""
    for _ in range(8):
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS and not isinstance(exc, ConnectionError):
            return exc
        exc = exc.__cause__ or exc.__context__
        if exc is None:
            return None
    return None


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp", *, replace: bool = True):
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`.
    Without `replace` (no --exist-ok) it takes that name only if it is still free (publish)."""
    path = Path(path)
    # Leftovers of this target only (a user's folder may hold hidden files of any name), once per
    # target and process: a scan per write would cost O(files) each.
    key = os.path.join(os.path.abspath(path.parent), path.name)
    if key not in _swept:
        _swept.add(key)
        remove_stale_temps(path.parent, [path.name])
    fd, tmp = create_temp(path, suffix)
    try:
        try:
            yield tmp
        except Exception as exc:
            cause = write_failure(exc)
            if cause is not None:
                raise write_error(path, cause) from None
            raise
        try:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            publish(tmp, path, replace=replace)
        except OSError as exc:
            raise write_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


# errnos of os.link on a file system without hard links (FAT, some FUSE and network mounts)
NO_LINK_ERRNOS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


def publish(tmp: Path, path: Path, *, replace: bool) -> None:
    """Give the written temp file its name. Without `replace`, `path` was free when the work began
    (check_target), but a long export leaves time for a user's file, or another convzoo's output, to
    appear there: os.link fails on an existing name, where os.replace would destroy it. The temp name
    is unlinked by the caller. Where hard links are not supported, the name is checked once more just
    before the rename (a far smaller window)."""
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise appeared(path) from None
    except OSError as exc:
        if exc.errno not in NO_LINK_ERRNOS:
            raise
    if path.exists() or path.is_symlink():
        raise appeared(path)
    os.replace(tmp, path)


def appeared(path) -> ConfigError:
    return ConfigError("appeared while it was being written; nothing was replaced (pass --exist-ok to overwrite "
                       "it, or choose another output)", path)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", *, replace: bool = True):
    """A file object to write `path` through, atomically (see atomic_path); closed before the rename,
    so errors the close reports (a full disk often shows only there) are WriteErrors too."""
    with atomic_path(path, replace=replace) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write_bytes(path, payload: bytes, *, replace: bool = True) -> None:
    with atomic_open(path, replace=replace) as f:
        f.write(payload)


@contextlib.contextmanager
def scratch_folder(prefix: str = "convzoo-"):
    """A temp folder for intermediate files (onnxruntime's quantizer reads and writes paths), removed
    at the end; a write failing there is one WriteError naming $TMPDIR (scratch_errors)."""
    with make_scratch(prefix) as tmp, scratch_errors(tmp):
        yield Path(tmp)


def make_scratch(prefix: str):
    """A tempfile.TemporaryDirectory; a $TMPDIR that cannot take one is a WriteError naming it."""
    import tempfile

    try:
        return tempfile.TemporaryDirectory(prefix=prefix)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise scratch_error(tempfile.gettempdir(), exc) from None


def scratch_error(folder, exc: OSError) -> WriteError:
    """A write into the temp folder failed: named as that (under a file-size limit, the output's own
    name was never reached, and a bare "/tmp: cannot write" read as a mistake in the path)."""
    return WriteError(f"cannot write in this temporary folder ($TMPDIR): {exc.strerror or exc}", folder)


@contextlib.contextmanager
def scratch_errors(folder):
    """A failing write into the temp folder `folder` (full or read-only $TMPDIR, a file-size limit)
    as one WriteError naming the temp folder it is in, not a traceback nor a file already removed.
    Other errors pass unchanged (an output's own WriteError names the output)."""
    try:
        yield
    except Exception as exc:
        cause = write_failure(exc)
        if cause is None or (isinstance(exc, ConvzooError) and not inside(exc.path, folder)):
            raise
        raise scratch_error(Path(folder).parent, cause) from None


def inside(path, folder) -> bool:
    folder = os.path.abspath(folder)
    return path is not None and os.path.commonpath([os.path.abspath(path), folder]) == folder


def create_temp(path: Path, suffix: str) -> tuple[int, Path]:
    """Create and lock a fresh temp file beside `path`; (fd holding the lock, its path)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            # 0o666: the kernel applies the umask, exactly as for a plain open().
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise write_error(path, exc) from None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fresh file: nobody else holds it
        return fd, tmp
    raise WriteError("cannot create a temporary file beside it (100 names taken)", path)


def remove_outputs(folder: Path, names) -> None:
    """An earlier run's files `names` in `folder`, all removed before the first new one is written
    (`--exist-ok`): a new run stopped half-way must not leave its files beside the old ones."""
    for name in names:
        try:
            (folder / name).unlink(missing_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot remove the earlier {name} ({exc.strerror or exc})", folder) from None


def remove_stale_temps(folder, targets=None) -> list[Path]:
    """Remove temp files left in `folder` by killed writers (of `targets`, names, or of anything).

    A temp counts as left over when no process holds its lock. Only convzoo's own naming pattern is
    touched; what cannot be removed (a read-only folder) is left for the write itself to report.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    removed = []
    for entry in entries:
        match = TEMP_RE.match(entry.name)
        if not match or (targets is not None and match["target"] not in targets):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if time.time() - entry.stat(follow_symlinks=False).st_mtime < MIN_STALE_AGE_S:
                continue
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:  # BlockingIOError: a live writer holds it
            pass
        finally:
            os.close(fd)
    return removed
