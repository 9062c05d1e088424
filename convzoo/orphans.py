"""Child processes that do not outlive their parent (DDP ranks of `train --procs`, serve's workers)."""

from __future__ import annotations

import signal


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In the child: `sig` when the parent dies, even by SIGKILL (Linux prctl; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
