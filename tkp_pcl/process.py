"""Child processes tied to their parent (standard library only, so the harness's light
commands can use it without importing torch)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["die_with_parent", "signals_held"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send this process ``sig`` when its parent exits, even by SIGKILL
    (Linux ``prctl(PR_SET_PDEATHSIG)``; it survives ``exec``). Returns whether the parent,
    ``parent_pid``, is still alive afterwards: False means it died before the request took
    effect and the caller should exit now. Elsewhere than on Linux, nothing is set (True).

    The signal follows the parent *thread* that started this process: start children from
    the main thread."""
    if not sys.platform.startswith("linux"):
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    return os.getppid() == parent_pid


@contextmanager
def signals_held(signals=(signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold ``signals`` back while the block runs (each one that came is raised again on leaving,
    to the handler in place before): around starting a process, whose at-fork callbacks would
    swallow the ``KeyboardInterrupt`` a Python handler raises there. Main thread only (elsewhere
    nothing is held)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)
