"""User-facing errors: the CLI prints them as one line and exits 2; anything else is a bug."""

import errno
import os
import re
from collections import Counter

# C0, DEL, C1 (8-bit CSI), line/paragraph separators, bidirectional overrides (a class name with U+202E
# printed the rest of the line reversed), and surrogates: a file name's bytes that are not UTF-8 reach
# Python as U+DC80..U+DCFF (surrogateescape), which no terminal can print.
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` on one line: control characters (a newline in a file or class name, a terminal escape)
    escaped as Python writes them, a file name's bytes that are not UTF-8 as \\xNN, everything else
    (accents, CJK) kept."""
    return UNPRINTABLE.sub(escaped, text)


def escaped(match: re.Match) -> str:
    char = match.group()
    if "\udc80" <= char <= "\udcff":  # the byte surrogateescape stood for
        return f"\\x{ord(char) - 0xDC00:02x}"
    return repr(char)[1:-1]


class Terminated(KeyboardInterrupt):
    """Raised in place of KeyboardInterrupt after a SIGTERM (SLURM preemption, kubectl delete,
    timeout, docker stop): cleanup code runs as for Ctrl-C, and the CLI exits 143, 128 + the signal,
    as a plain SIGTERM would."""

    signum = 15


class ConvzooError(Exception):
    """A mistake in the user's input (files, flags, data); never a bug in convzoo."""

    def __init__(self, message: str, path=None):
        self.message = message  # without the path: the same problem can be told of another path
        self.path = str(path) if path is not None else None
        super().__init__(printable(f"{self.path}: {message}" if self.path else message))


class DataError(ConvzooError):
    """Missing, corrupt or unverifiable data files."""


class DownloadError(DataError):
    """Every mirror failed, or a download failed its checksum."""


class CheckpointError(ConvzooError):
    """A checkpoint that is missing, corrupt, unsafe or of another model."""


class ConfigError(ConvzooError):
    """Bad flags, unknown names, impossible settings."""


class WriteError(ConvzooError):
    """An output that cannot be written: no space, a read-only or forbidden folder, a file-size limit."""


class PathError(ConvzooError):
    """A path no file can have: a name longer than the file system allows, a link that leads to itself."""


UNUSABLE_PATH = {errno.ENAMETOOLONG: "file name too long (the file system's limit is 255 bytes a name)",
                 errno.ELOOP: "a symbolic link loop (the link leads back to itself)"}


NOT_UTF8 = "holds bytes that are not UTF-8 (a name from an old archive?); rename it, or choose another"


def not_utf8(text) -> bool:
    """Is `text` a str holding the surrogates Python decodes a file name's non-UTF-8 bytes to? Such a path
    cannot go into a checkpoint, config.yaml, a report or onnxruntime (a traceback, or "not a loadable
    ONNX model"). Image files and the images of a data set may have such names: they are read, not kept."""
    if not isinstance(text, str) or text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def not_found(path, message: str) -> str:
    """`message` ('checkpoint not found') for a path that is not there, unless it is a link: a link loop, or
    a link to nothing, was 'not found' (a run's looping last.pt: 'start it over with --exist-ok')."""
    if not os.path.islink(path):
        return message
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return UNUSABLE_PATH[errno.ELOOP]
        return f"a broken link (to {os.readlink(path)}, which is not there)"
    return message


def not_a_file(path, missing: str, wrong: str = "not a regular file") -> str:
    """Why `path`, not a regular file, cannot be read: `missing` where nothing is there (a link loop or a
    link to nothing named as one: not_found), else `wrong` (a folder, a device, a pipe)."""
    return wrong if os.path.exists(path) else not_found(path, missing)


def path_error(exc: BaseException) -> PathError | None:
    """The PathError behind an OSError of that kind, or pathlib's RuntimeError for a link loop (Python
    3.11's resolve()), else None. Caught once where commands and API calls end, as any path the user
    gives can be one: checking each where it is first used missed most (every command traced back)."""
    if isinstance(exc, OSError) and exc.errno in UNUSABLE_PATH:
        return PathError(UNUSABLE_PATH[exc.errno], exc.filename)
    loop = re.fullmatch(r"Symlink loop from '(.*)'", str(exc)) if type(exc) is RuntimeError else None
    return PathError(UNUSABLE_PATH[errno.ELOOP], loop.group(1)) if loop else None


def closest(name: str, choices) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    import difflib

    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown(kind: str, name: str, choices, hint: str = "") -> ConfigError:
    choices = sorted(choices)
    return ConfigError(f"unknown {kind} {name!r}{closest(name, choices)}; choose from: {', '.join(choices)}{hint}")


def repeated_key(pairs: list[tuple[str, object]]) -> str | None:
    """For json.loads' object_pairs_hook: what is wrong when an object gives a key more than once (JSON
    keeps the last one, silently), or None. The server's 422 and a --classes file's error say it alike."""
    if len({key for key, _ in pairs}) == len(pairs):
        return None
    key, count = Counter(key for key, _ in pairs).most_common(1)[0]
    return f"the JSON key {key[:40]!r} is given {count} times; give it once"


def first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's first line of text (or its type name), short enough for a one-line error."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if len(line) <= limit:
        return line
    cut = line[:limit - 3].rsplit(" ", 1)[0]  # at a word's end, and marked as cut
    return (cut if len(cut) > limit // 2 else line[:limit - 3]) + "..."


def shown(value, limit: int = 60) -> str:
    """`value` quoted for an error message, at most `limit` characters; a container is written only
    as far as shown (reprlib), so a YAML alias bomb's value is never expanded in full to be cut."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, limit, limit
    return repr((value if isinstance(value, str) else short.repr(value))[:limit])
