"""Giving freed heap memory back to the OS, for the server (bodies, pipelined responses) and its protocol."""

from __future__ import annotations


def trim_heap() -> None:
    """Freed heap memory given back to the OS (glibc's malloc_trim; elsewhere nothing). Bodies arrive in
    pieces (up to 256 KiB per socket read, 5 MB buffers) between other allocations; freed, they leave holes
    that glibc keeps: 300 half-sent uploads left RSS 34-64 MB above its start after they ended, 2 MB trimmed."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl, Windows)
        pass


_trim_pending = False


def trim_heap_soon(loop) -> None:
    """trim_heap a second from now, once however many callers ask meanwhile (many connections going at once)."""
    global _trim_pending
    if not _trim_pending:
        _trim_pending = True
        loop.call_later(1.0, _trim)


def _trim() -> None:
    global _trim_pending
    _trim_pending = False
    trim_heap()
