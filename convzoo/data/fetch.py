"""Find a data set on disk, or download and verify it.

Search order: --data-path, $CONVZOO_DATA, the user cache ($CONVZOO_CACHE or ~/.cache/convzoo),
/usr/share/datasets/<name>/ (Debian's packages). Within a folder the layouts people already have are
accepted: flat, one sub-folder per data set, torchvision's <Name>/raw, MindSpore's Data/train +
Data/test with `train-images.idx3-ubyte` spellings, gzipped or not, `cifar-10-batches-bin/`,
MindSpore's `cifar-10-verify-bin/` and torchvision's `cifar-10-batches-py/` (Python pickles).

Local copies that fail their checksum are used with a one-line warning (they may be partial or
re-encoded on purpose); a download that fails its checksum is always rejected and removed.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import stat
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from ..atomic import atomic_path, remove_stale_temps
from ..cache import cache_root
from ..errors import ConfigError, DataError, DownloadError, not_found
from .catalog import DatasetSpec, FileSpec
from .formats import PICKLE_PROTO, cifar_pickle_limit, decode_cifar_batch, gunzip_capped, holds_image_classes

MANIFEST = ".convzoo-verified.json"
SYSTEM_ROOT = Path("/usr/share/datasets")
TIMEOUT_S = 30
# The slow-download rule. --timeout bounds each network read, so a mirror that trickles a byte now
# and then would never time out: once GRACE_S (or --timeout, if longer) has passed since the request,
# a download must have averaged at least MIN_RATE bytes/s, or it is cut and the next mirror tried.
# 4 KiB/s is a slow modem (MNIST's 9.9 MB train images in at most 40 min); it also caps the whole
# download at about size / MIN_RATE (CIFAR-10's 170 MB: 11.5 h), however a mirror paces its bytes.
MIN_RATE = 4096
GRACE_S = 30.0


@dataclass
class FileCheck:
    spec: FileSpec
    path: Path
    status: str  # verified | differs | unchecked | foreign
    detail: str = ""
    owner: str = ""  # foreign: the title of the catalog data set whose official file this is


@dataclass
class Located:
    spec: DatasetSpec
    root: Path
    source: str  # where it was found: --data-path, $CONVZOO_DATA, cache, system, download
    files: dict[str, Path]  # FileSpec.name -> path on disk
    checks: list[FileCheck] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return all(c.status == "verified" for c in self.checks)

    def path(self, file: FileSpec) -> Path:
        return self.files[file.name]

    def warning(self) -> str | None:
        """One line saying what differs from the official files, or None."""
        bad = [c for c in self.checks if c.status != "verified"]
        if not bad:
            return None
        by_detail: dict[str, list[str]] = {}
        for c in bad:
            by_detail.setdefault(c.detail, []).append(c.path.name)
        parts = "; ".join(f"{', '.join(names)}: {detail}" for detail, names in by_detail.items())
        return f"warning: {self.root}: {self.spec.title} files are not the official ones ({parts}); using them anyway"


def search_roots(data_path=None) -> list[tuple[str, Path]]:
    if data_path:
        return [("--data-path", Path(data_path))]
    roots = []
    if os.environ.get("CONVZOO_DATA"):
        roots.append(("$CONVZOO_DATA", Path(os.environ["CONVZOO_DATA"])))
    roots += [("cache", cache_root()), ("system", SYSTEM_ROOT)]
    return roots


def locate(spec: DatasetSpec, data_path=None, *, download: bool = True, mirrors=None, verify: bool = True,
           splits=None) -> Located:
    """Find `spec` locally (in search order) or download it; returns paths and checksum results.
    `splits`: the splits needed (None: all). A folder holding their files is enough (eval reads the
    test files alone); when none has them, the whole data set is downloaded as usual."""
    if data_path is not None and not Path(data_path).is_dir():
        raise DataError("--data-path is not a folder" if Path(data_path).exists()
                        else not_found(data_path, "no such folder (--data-path)"),
                        data_path)
    if not spec.reader.official:  # the user's own folder: no files to find, verify or download
        if data_path is None:
            raise DataError(f"--dataset {spec.name} reads your own images: pass --data-path FOLDER (one sub-folder "
                            "of images per class)")
        return Located(spec, Path(data_path).resolve(), "--data-path", {})
    for source, root in search_roots(data_path):
        found = find_in(spec, root, splits)
        if found is not None:
            located = Located(spec, common_folder(found), source, found)
            if verify:
                located.checks = verify_files(spec, found)
                refuse_foreign(located)
            return located
        if source == "--data-path":
            # The user's folder holds part of the set: name what is wrong there instead of
            # downloading into it (which failed, naming another file).
            incomplete = incomplete_error(spec, root, splits)
            if incomplete is not None:
                raise incomplete
            if not download:  # (download_dataset refuses it before downloading: one scan of the folder)
                refuse_image_folder(spec, root)
            break  # an explicit folder is the only place looked in
    if not download:
        raise missing_error(spec, data_path, splits)
    try:
        return download_dataset(spec, Path(data_path) if data_path else cache_root(), mirrors=mirrors, splits=splits)
    except DownloadError as exc:
        if data_path is not None:
            raise
        # offline, a model trained with --data-path and used without it ended on a DNS error alone
        where = ", ".join(str(r) for _, r in search_roots(None))
        raise DownloadError(f"{exc.message}; {spec.title} is not in {where} either: pass --data-path FOLDER where it is (or "
                            "set $CONVZOO_DATA)", exc.path) from None


def refuse_image_folder(spec: DatasetSpec, root: Path) -> None:
    """A --data-path of the user's own images (class folders) given for a catalog data set (no --dataset:
    MNIST) is a mistake: MNIST was downloaded into it, and trained on. Called once none of `spec`'s files
    is found there, before any download."""
    if holds_image_classes(root):
        raise DataError(f"holds class folders of images and none of {spec.title}'s files, so nothing is downloaded "
                        f"into it: for your own images pass --dataset folder (`convzoo data info folder` for the data "
                        "commands)", root)


def needed_files(spec: DatasetSpec, splits=None) -> list[FileSpec]:
    """`spec`'s files of `splits` (None: all of them)."""
    return [f for f in spec.files if splits is None or f.split in splits]


def missing_error(spec: DatasetSpec, data_path, splits=None) -> DataError:
    where = ", ".join(str(r) for _, r in search_roots(data_path))
    names = ", ".join(f.name for f in needed_files(spec, splits)[:2]) + ", ..."
    return DataError(
        f"{spec.title} not found (looked for {names} in {where}); "
        f"run `convzoo data download {spec.name}` or pass --data-path FOLDER",
        data_path or spec.name,
    )


def layout_folders(spec: DatasetSpec, root: Path) -> list[Path]:
    """The folders under `root` where `spec`'s files may sit: flat, one sub-folder per data set, <Name>/raw."""
    subs = [root] + [root / n for n in (spec.name, *spec.folder_names)] + [root / n / "raw" for n in spec.folder_names]
    return list(dict.fromkeys(subs))


def find_in(spec: DatasetSpec, root: Path, splits=None) -> dict[str, Path] | None:
    """Paths of all of `spec`'s files of `splits` (None: all) under `root` in any known layout, or None."""
    if not root.is_dir():
        return None
    for folder in layout_folders(spec, root):
        found = {}
        for file in needed_files(spec, splits):
            path = find_file(folder, file, spec)
            if path is None:
                break
            found[file.name] = path
        else:
            if spec.meta_file:
                meta = find_file(folder, FileSpec(spec.meta_file, "train", "meta"), spec)
                if meta is not None:
                    found[spec.meta_file] = meta
            return found
    return None


def find_file(folder: Path, file: FileSpec, spec: DatasetSpec) -> Path | None:
    path = next((path for path in candidates(folder, file, spec) if path.is_file()), None)
    if path is not None and path.suffix == ".gz":
        check_plain_twin(path)
    return path


def check_plain_twin(gz: Path) -> None:
    """X.gz is read before X. torchvision's raw/ keeps both, the same bytes; an X of another length
    than X.gz inflates to (its gzip trailer says, no decompressing) is another file, and was silently
    ignored: refused, naming both. Same length, different bytes is not caught (it costs a full read)."""
    plain = gz.with_suffix("")
    if not plain.is_file():
        return
    try:
        with open(gz, "rb") as f:
            f.seek(-4, os.SEEK_END)
            inflated = int.from_bytes(f.read(4), "little")  # ISIZE: the length mod 2**32
        size = plain.stat().st_size
    except OSError:  # too short or unreadable: reading it reports that
        return
    if inflated != size % 2**32:
        raise DataError(f"decompresses to {inflated:,} bytes but {plain.name} beside it has {size:,}: two different "
                        f"copies; remove the wrong one", gz)


def candidates(folder: Path, file: FileSpec, spec: DatasetSpec) -> list[Path]:
    """Where `file` may sit in `folder`: its split's sub-folders, each spelling, in order of preference."""
    return [folder / sub / name for sub in spec.split_folders.get(file.split, (".",)) for name in spellings(file.name)]


def incomplete_error(spec: DatasetSpec, root: Path, splits=None) -> DataError | None:
    """For a folder without a complete copy: the first layout folder holding some of `spec`'s files
    names the first needed file that is missing there or not a regular file (a FIFO, a folder, a
    link to /dev/zero or to nothing). None when no layout folder holds any of them."""
    for folder in layout_folders(spec, root):
        found = {f.name: find_file(folder, f, spec) for f in spec.files}
        if not any(found.values()):
            continue
        for file in needed_files(spec, splits):
            if found[file.name] is None:
                path, problem = file_problem(folder, file, spec, found)
                return DataError(f"{problem} (the folder holds {spec.title}'s other files, so nothing is "
                                 "downloaded into it)", path)
    return None


def file_problem(folder: Path, file: FileSpec, spec: DatasetSpec, found: dict[str, Path | None]) -> tuple[Path, str]:
    """(path as shown, problem) for a needed `file` that find_file did not find in `folder` (`found`:
    find_file's answer there for each of the set's files, by name)."""
    for path in candidates(folder, file, spec):
        if os.path.lexists(path):  # there, but is_file() said no
            return path, "a link to nothing" if path.is_symlink() and not path.exists() else "not a regular file"
    # Missing: named where its split's other files sit (MindSpore's Data/train), every spelling in one.
    siblings = [found[f.name] for f in spec.files if f.split == file.split and found[f.name] is not None]
    shown = file.name.removesuffix(".gz") + "(.gz)" if file.name.endswith(".gz") else file.name
    return (siblings[0].parent if siblings else folder) / shown, "missing"


def spellings(name: str) -> list[str]:
    """train-images-idx3-ubyte.gz -> also without .gz and MindSpore's train-images.idx3-ubyte;
    data_batch_1.bin -> also the Python pickle data_batch_1."""
    stem = name.removesuffix(".gz")
    dotted = stem.replace("-idx", ".idx")
    return list(dict.fromkeys([name, stem, dotted, dotted + ".gz", name.removesuffix(".bin")]))


def verify_files(spec: DatasetSpec, files: dict[str, Path]) -> list[FileCheck]:
    manifest = read_manifest(next(iter(files.values())).parent)
    return [check_file(f, files[f.name], manifest) for f in spec.files if f.name in files]


def check_file(file: FileSpec, path: Path, manifest: dict) -> FileCheck:
    """Is `path` the official `file`? Reads at most what a faithful copy can hold, inflates at most
    the official file's decompressed size (a bigger file or stream simply is not the official one)."""
    try:
        size = path.stat().st_size
        limit = max_copy_bytes(file)
        if size > limit:
            return FileCheck(file, path, "differs", f"{size:,} bytes, more than any copy of the official file "
                                                    f"({limit:,})")
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", path) from None
    pickled = file.role == "batch" and data[:1] == PICKLE_PROTO
    official = file.python_md5 if pickled else file.md5
    data_md5 = md5_hex(data)
    if official and data_md5 == official:
        return FileCheck(file, path, "verified", "md5 matches the official file")
    if manifest.get(path.name) and manifest[path.name] == hashlib.sha256(data).hexdigest():
        return FileCheck(file, path, "verified", "sha256 matches the verified download")
    raw = gunzip_capped(data, limit if file.role == "batch" else file.raw_size, path)
    if raw is None:
        return FileCheck(file, path, "differs", "decompresses to more than the official file holds")
    raw_md5 = data_md5 if raw is data else md5_hex(raw)
    if file.raw_md5 and raw_md5 == file.raw_md5:
        return FileCheck(file, path, "verified", "decompressed md5 matches the official file")
    count = record_count(file, raw, path)
    what = f"{count:,} of {file.count:,} records" if count != file.count else f"{count:,} records"
    owner = foreign_owner(file, {data_md5, raw_md5})
    if owner:
        return FileCheck(file, path, "foreign", f"md5 matches {owner}'s official file", owner)
    if official or file.raw_md5:
        return FileCheck(file, path, "differs", f"{what}, md5 {raw_md5[:12]}... is not the official one")
    return FileCheck(file, path, "differs", f"{what}, no official per-file checksum and no verified-download record")


def foreign_owner(file: FileSpec, digests: set[str]) -> str:
    """The title of another catalog data set whose official file of the same name has one of these
    md5s (MNIST and Fashion-MNIST share file names), else ''. Given check_file's digests: nothing re-read."""
    from .catalog import DATASETS

    for other in DATASETS.values():
        for f in other.files:
            if f.name == file.name and f.md5 != file.md5 and (f.md5 in digests or f.raw_md5 in digests):
                return other.title
    return ""


def refuse_foreign(located: Located) -> None:
    """Another data set's official files under this one's names (MNIST's digits read as Fashion-MNIST
    scored 0.11 with per-class rows of T-shirts) are refused, not used with a warning."""
    foreign = [c for c in located.checks if c.status == "foreign"]
    if foreign:
        owner, title = foreign[0].owner, located.spec.title
        names = ", ".join(c.path.name for c in foreign)
        raise DataError(f"these are {owner}'s files, not {title}'s ({names}: md5 of {owner}'s official files); "
                        f"pass --data-path to a folder of {title}'s files", located.root)


def max_copy_bytes(file: FileSpec) -> int:
    """The largest file that can still be a faithful copy of `file`: its records raw or gzipped (gzip
    adds well under 1% to incompressible bytes), or for CIFAR-10 a Python pickle of them."""
    if file.role == "batch":
        return cifar_pickle_limit(file.count)
    return file.raw_size + file.raw_size // 100 + 1024


def record_count(file: FileSpec, raw: bytes, path) -> int:
    if file.role == "batch":
        return len(decode_cifar_batch(raw, path)[1]) if raw[:1] == PICKLE_PROTO else len(raw) // 3073
    return int.from_bytes(raw[4:8], "big") if len(raw) >= 8 else 0


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def read_manifest(folder: Path) -> dict:
    """The sha256s a verified archive download recorded; anything unreadable or implausible is no record."""
    try:
        with open(folder / MANIFEST, "rb") as f:
            text = f.read(1 << 16)  # a few file names and hashes
        manifest = json.loads(text)
    except (OSError, ValueError, RecursionError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


# ---------------------------------------------------------------- download


def download_dataset(spec: DatasetSpec, root: Path, *, mirrors=None, timeout: float = TIMEOUT_S,
                     splits=None) -> Located:
    """Download every file of `spec` into root/<name>/, verified; returns it located. Those of `splits`
    (the ones the caller needs) come first, so a failure names one of them. The folders
    this call creates are removed again if it fails and they are still empty (no stray empty
    mnist/ in the user's folder); files already downloaded are kept, as is any folder it found."""
    if not spec.reader.official:
        raise DataError(f"--dataset {spec.name} reads your own images: there is nothing to download", spec.name)
    for mirror in mirrors or ():
        check_mirror(mirror)
    if root != cache_root():  # the user's --data-path (convzoo's own cache is no folder of theirs)
        refuse_image_folder(spec, root)
    target = root / spec.name
    created = missing_folders(target)
    try:
        return download_into(spec, root, target, mirrors, timeout, splits)
    except BaseException:
        for folder in reversed(created):  # innermost first; rmdir refuses a folder that holds anything
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def check_mirror(url) -> None:
    """A mirror is a base URL: http(s) with a host, or file:. Not ftp: its control connection is read
    line by line, out of reach of the slow-download rule (a trickling FTP server hung the download).
    Nor user:password@ (urllib looked 'user:pw@host' up as a host name, and the error printed the
    password: checked first, so no message shows it), nor a ?query or #fragment (the file name would be
    appended after it)."""
    credentials = re.match(r"[^:/?#]+://([^/?#]*)@([^/?#]*)", url) if isinstance(url, str) else None
    if credentials:
        raise ConfigError(f"--mirror ...@{credentials[2][:100]}: credentials in mirror URLs are not supported "
                          "(serve the files without them, or from a folder: file:/path/)")
    try:  # urlsplit and .port raise ValueError on a malformed host ('http://[::1') or port ('h:99999')
        parts = urlsplit(url) if isinstance(url, str) else None
        ok = parts is not None and parts.scheme in ("http", "https", "file") and \
            (parts.scheme == "file" or bool(parts.hostname)) and (parts.port or 0) >= 0
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"--mirror must be a base URL such as https://host/path/, got {str(url)[:100]!r}")
    if "?" in url or "#" in url:
        raise ConfigError(f"--mirror {url[:100]!r}: a mirror is a base URL without a ?query or #fragment "
                          "(the file name is appended to it)")


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, outermost first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def download_into(spec: DatasetSpec, root: Path, target: Path, mirrors, timeout: float, splits=None) -> Located:
    """download_dataset's work, into the folder `target` (root/<name>)."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=target, prefix=".probe")
        probe.close()
    except OSError as exc:
        cache = os.environ.get("CONVZOO_CACHE")  # where it is set, the folder it names may be what is wrong
        where = f"set $CONVZOO_CACHE (now {cache!r}) to one" if cache else "set $CONVZOO_CACHE"
        raise DataError(f"cannot write to the data folder ({exc.strerror or exc}); pass --data-path to a writable "
                        f"folder or {where}", target) from None
    # What a killed download left: its .part files and half-extracted archives.
    remove_stale_temps(target, [f.name for f in spec.files] + ([spec.archive.name] if spec.archive else []))
    remove_stale_extractions(target)
    mirrors = list(mirrors or spec.mirrors)
    if spec.archive:
        archive = target / spec.archive.name
        if not is_official(archive, spec.archive.md5, spec.archive.size):
            download_file([m.rstrip("/") + "/" + spec.archive.name for m in mirrors], archive, spec.archive.md5,
                          spec.archive.size, timeout)
        extract_archive(archive, target, spec.archive.folder)
    else:
        for file in sorted(spec.files, key=lambda f: splits is not None and f.split not in splits):
            dest = target / file.name
            if is_official(dest, file.md5, file.size):
                continue
            download_file([m.rstrip("/") + "/" + file.name for m in mirrors], dest, file.md5, file.size, timeout)
    found = find_in(spec, root)
    if found is None:
        raise DataError(f"downloaded {spec.title} but its files are incomplete", target)
    return Located(spec, common_folder(found), "download", found, verify_files(spec, found))


def is_official(path: Path, md5: str, size: int | None) -> bool:
    """An earlier download already in place: the official size, then the official md5 (streamed)."""
    try:
        if not path.is_file() or (size is not None and path.stat().st_size > size):
            return False
        digest = hashlib.md5()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == md5


def common_folder(found: dict[str, Path]) -> Path:
    """The folder the files were found in, as the user named it: symlinks are not followed (files
    linked in from several places made it "/")."""
    return Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in found.values()]))


def download_file(urls: list[str], dest: Path, md5: str, size: int | None, timeout: float = TIMEOUT_S) -> Path:
    """Stream the first URL that works into `dest`; md5 checked before the final rename.

    `size` is the official file's byte size: a server that announces or sends more is cut off there
    (an endless or hostile mirror cannot fill the disk). Failures (HTTP errors, timeouts, dropped
    connections, too many bytes, too slow (see MIN_RATE), wrong checksum, a file: URL that is not a
    regular file) move on to the next mirror; the temp file is always removed, so nothing
    half-downloaded is ever left behind.
    """
    failures = []
    for url in urls:
        try:
            with atomic_path(dest, ".part") as tmp:  # renamed onto dest only if the block completes
                with open(tmp, "wb") as out:
                    digest = stream(url, out, timeout, dest.name, size)
                if digest != md5:
                    raise ChecksumMismatch(digest)
            return dest
        except ChecksumMismatch as exc:
            failures.append(f"{url}: md5 {exc} does not match the official {md5} (rejected and removed)")
        except (TooLarge, TooSlow) as exc:
            failures.append(f"{url}: {exc} (stopped and removed)")
        except NotRegular:
            failures.append(f"{url}: not a regular file (refused)")
        except urllib.error.HTTPError as exc:
            failures.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            failures.append(f"{url}: {reason}" if isinstance(reason, str) else f"{url}: {type(reason).__name__}: {reason}")
        except ValueError as exc:  # urllib's parse of a malformed URL (a redirect to 'http://[::1/x')
            failures.append(f"{url}: invalid URL ({str(exc)[:100]})")
    raise DownloadError("download failed on every mirror: " + " | ".join(failures), dest)


class ChecksumMismatch(Exception):
    """A downloaded file's md5 (the exception's text) is not the official one."""


class TooLarge(Exception):
    """A server announced or sent more bytes than the official file has."""


class TooSlow(Exception):
    """A download fell below the slow-download rule (MIN_RATE after the grace period)."""


class NotRegular(Exception):
    """A file: URL names a FIFO, device or folder: reading it could block for ever or never end."""


class Pace:
    """The slow-download rule for one request. Checked after every read, and by a watchdog thread
    that cuts the connection's socket: a trickle inside the headers (read line by line, each
    byte within --timeout) or inside one read never returns to the loop that checks."""

    def __init__(self, timeout: float):
        self.start = time.monotonic()
        self.grace = max(GRACE_S, timeout)
        self.done = 0  # body bytes received so far
        self.failed: str | None = None
        self.sock: socket.socket | None = None
        self.stopped = threading.Event()

    def check(self) -> str | None:
        elapsed = time.monotonic() - self.start
        if self.failed is None and elapsed > self.grace and self.done < MIN_RATE * elapsed:
            self.failed = (f"too slow: {self.done:,} bytes in {elapsed:.0f} s, under the minimum average "
                           f"of {MIN_RATE:,} bytes/s")
        return self.failed

    def watch(self) -> None:
        while not self.stopped.wait(min(1.0, self.grace / 4)):
            if self.check():
                try:  # the plain socket's shutdown, also under TLS: the blocked read sees the end
                    if self.sock is not None:
                        socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
                except OSError:
                    pass
                return


class _Watched:
    """Mixed into urllib's HTTP(S) handlers: hands each connection's socket to `pace` once connected."""

    pace: Pace

    def do_open(self, http_class, req, **kwargs):
        pace = self.pace

        class Connection(http_class):
            def connect(self):
                super().connect()
                pace.sock = self.sock

        return super().do_open(Connection, req, **kwargs)


class _HTTP(_Watched, urllib.request.HTTPHandler):
    pass


class _Redirect(urllib.request.HTTPRedirectHandler):
    """Redirects to http(s) only: urllib's own also follow one to ftp:, which the rule cannot watch."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.URLError(f"redirected to {newurl[:100]}, not an http(s) URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _HTTPS(_Watched, urllib.request.HTTPSHandler):
    pass


def open_url(url: str, timeout: float, pace: Pace):
    """(response, announced size or 0). A file: URL is opened here, not by urllib: only a regular
    file is read (a FIFO blocks open and read for ever, and no --timeout applies to files)."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        handlers = [_HTTP(), _HTTPS()]
        for handler in handlers:
            handler.pace = pace
        resp = urllib.request.build_opener(*handlers, _Redirect()).open(url, timeout=timeout)
        announced = (resp.headers.get("Content-Length") or "").strip()
        if announced.startswith("-"):  # http.client would read on, expecting a negative count of bytes
            resp.close()
            raise urllib.error.URLError(f"invalid Content-Length header {announced[:40]!r}")
        try:
            return resp, int(announced or 0)
        except ValueError:  # a garbled header: the byte count in stream() still applies
            return resp, 0
    if parts.netloc not in ("", "localhost"):
        raise urllib.error.URLError(f"file: URL on another host ({parts.netloc})")
    try:  # O_NONBLOCK: opening a FIFO does not wait for a writer
        fd = os.open(urllib.request.url2pathname(parts.path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise urllib.error.URLError(exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegular()
        os.set_blocking(fd, True)
        return open(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def stream(url: str, out, timeout: float, label: str, limit: int | None = None) -> str:
    """Copy `url` into `out`, at most `limit` bytes; returns the md5 of what was copied."""
    from tqdm import tqdm

    digest = hashlib.md5()
    pace = Pace(timeout)
    threading.Thread(target=pace.watch, daemon=True).start()
    try:
        resp, total = open_url(url, timeout, pace)
        with resp:
            if limit is not None and total > limit:
                raise TooLarge(f"announces {total:,} bytes, more than the official {limit:,}")
            done = 0
            # read1: what has arrived, so the rule is checked between trickled bytes, not after 64 KiB of them
            read = getattr(resp, "read1", resp.read)
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=label,
                      disable=not sys.stderr.isatty()) as bar:
                # Never ask for more than one byte past the limit: that byte is the proof of excess.
                while chunk := read(1 << 16 if limit is None else min(1 << 16, limit + 1 - done)):
                    done += len(chunk)
                    if limit is not None and done > limit:
                        raise TooLarge(f"sends more than the official {limit:,} bytes")
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                    pace.done = done
                    if pace.check():
                        raise TooSlow(pace.failed)
        if pace.failed:  # the watchdog cut the socket: what ended early (headers, body) ended for that
            raise TooSlow(pace.failed)
    except (TooSlow, TooLarge, NotRegular):
        raise
    except Exception:
        if pace.failed:  # whatever the cut socket raised (short read, TLS error), the cause is the rule
            raise TooSlow(pace.failed) from None
        raise
    finally:
        pace.stopped.set()
    if total and done != total:
        raise http.client.IncompleteRead(b"", total - done)
    return digest.hexdigest()


EXTRACTING = ".convzoo-extract-"  # the prefix of an extraction's temporary folder in the data folder
EXTRACT_MARK = ".convzoo-extracting"  # the file in it that says convzoo made it


def remove_stale_extractions(target: Path) -> None:
    """Remove the temporary folders a killed extraction left (one being extracted is locked: see
    extract_archive). Only convzoo's own: its prefix and its mark inside (a user's `.extract` folder with
    their files in the data folder was removed with them)."""
    import shutil

    for folder in target.glob(EXTRACTING + "*"):
        try:
            # Too young: its extractor may not have locked it yet.
            if (not folder.is_dir() or folder.is_symlink() or time.time() - folder.stat().st_mtime < 1
                    or not (folder / EXTRACT_MARK).is_file()):
                continue
        except OSError:
            continue
        lock = try_lock(folder)
        if lock is not None:
            shutil.rmtree(folder, ignore_errors=True)
            os.close(lock)


def try_lock(folder: Path):
    """An fd holding an exclusive lock on `folder`, or None if another process holds it (or no locks)."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def extract_archive(archive: Path, target: Path, folder: str) -> None:
    """Extract `folder`'s regular files from a tarball into target/folder, refusing any member
    that would land outside target (absolute paths, '..', links, devices)."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                parts = PurePosixPath(m.name).parts
                if m.name.startswith("/") or ".." in parts:
                    raise DataError(f"unsafe member path {m.name!r} in archive (escapes the target folder)", archive)
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"archive member {m.name!r} is a link or device; refused", archive)
            wanted = [m for m in members if m.isfile() and PurePosixPath(m.name).parts[:1] == (folder,)]
            if not wanted:
                raise DataError(f"archive has no {folder}/ folder", archive)
            with tempfile.TemporaryDirectory(dir=target, prefix=EXTRACTING) as tmp:
                lock = try_lock(Path(tmp))  # held while extracting: remove_stale_extractions leaves it alone
                Path(tmp, EXTRACT_MARK).touch()
                try:
                    tar.extractall(tmp, members=wanted, filter="data")
                    files = {Path(tmp, m.name).name: hashlib.sha256(Path(tmp, m.name).read_bytes()).hexdigest()
                             for m in wanted}
                    Path(tmp, folder, MANIFEST).write_text(json.dumps(files, indent=1))
                    final = target / folder
                    if final.exists():
                        import shutil

                        shutil.rmtree(final)
                    os.replace(Path(tmp, folder), final)
                finally:
                    if lock is not None:
                        os.close(lock)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot extract archive: {exc}", archive) from None
