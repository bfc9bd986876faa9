"""Signals, for every command that trains or serves (``bench run``, ``bench worker``, the
torchrun entry :mod:`bench.run.ddp`, ``bench ui``): SIGTERM (a scheduler, a container stop,
``timeout``) stops it exactly as Ctrl-C (SIGINT) does.

- The first SIGINT or SIGTERM raises :class:`Interrupted` (a ``KeyboardInterrupt``) in the main
  thread: the trial being run is closed as interrupted (Optuna FAIL, MLflow KILLED, checkpoint
  kept: the next run resumes it) and child processes are sent that one signal and waited for
  (:func:`stop_processes`). The command then prints one line and exits with 128 + the signal's
  number (:func:`exit_code`: 130 for SIGINT, 143 for SIGTERM).
- Later ones, while that shutdown runs, are noted on stderr and otherwise ignored, so the
  shutdown is never cut half-way (``kill -9`` still stops at once; the next run then finds the
  trial dead and resumes it).
- SIGUSR2 (:data:`PREEMPT`: the pre-timeout signal ``bench submit`` asks Slurm for, through
  submitit) is a soft stop: the trial goes on to the end of its current epoch (its checkpoint
  written), then stops as an interrupt does. A SIGINT or SIGTERM that comes before then stops at
  once. Either way :func:`preempted` tells the worker that a scheduler wants the node back.
- A child started with :func:`child_env` (``bench run --workers N``'s workers) is tied to its
  parent by :func:`stop_on_signals`: if the parent dies, even by ``kill -9``, it receives SIGTERM.

Standard library only (``bench ui`` uses it without importing torch).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tkp_pcl.process import die_with_parent

SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: the soft stop: submitit's pre-timeout signal for Slurm (``--signal=USR2@<delay>``)
PREEMPT = signal.SIGUSR2
PARENT_ENV = "BENCH_PARENT_PID"  # set by a parent for the children that die with it


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received: ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def signum_of(e: BaseException) -> int:
    """The signal an interrupt came from (a plain ``KeyboardInterrupt``: SIGINT)."""
    return getattr(e, "signum", int(signal.SIGINT))


def exit_code(e: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process its signal ended."""
    return 128 + signum_of(e)


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process that is to die with this one (see
    :func:`stop_on_signals`)."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def _tie_to_parent() -> None:
    """In a child started with :func:`child_env`: SIGTERM when the parent dies; if it already
    has, stop now (the handler installed just before raises :class:`Interrupted`)."""
    parent = os.environ.pop(PARENT_ENV, None)  # not passed on to this process's own children
    if parent and parent.isdigit() and not die_with_parent(int(parent), signal.SIGTERM):
        os.kill(os.getpid(), signal.SIGTERM)


# Loggers silenced once a stop has begun: when the interrupt cuts a query of a store,
# SQLAlchemy closes that connection and then logs a traceback for the cursor it can no longer
# close. The trial is closed by bench's own shutdown; that traceback is noise in a worker's log.
QUIET_WHEN_STOPPING = ("sqlalchemy.pool",)

_received: list[int] = []  # the signal that started the shutdown, once one came
_preempted: list[int] = []  # PREEMPT, once it came


def stop_requested() -> int | None:
    """The signal received, if one came (under :func:`stop_on_signals`)."""
    return _received[0] if _received else None


def preempted() -> bool:
    """Whether the pre-timeout signal (:data:`PREEMPT`) came."""
    return bool(_preempted)


def _begin_stop(signum: int) -> None:
    _received.append(signum)
    for name in QUIET_WHEN_STOPPING:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def raise_if_stopping() -> None:
    """At a safe point (an epoch's end, before a trial is claimed): raise :class:`Interrupted`
    for a soft stop that is due (:data:`PREEMPT`), or again for an interrupt that Python
    swallowed where it landed (an at-fork callback, a ``__del__``)."""
    if not _received and _preempted:
        _begin_stop(_preempted[0])
    if _received:
        raise Interrupted(_received[0])


def _unraisable(hook):
    """``sys.unraisablehook`` under :func:`stop_on_signals`: an interrupt that landed in a
    ``__del__`` or a weakref callback (Python prints and drops those) is left quiet; it is kept
    in :func:`stop_requested` and raised again at the next safe point (:func:`raise_if_stopping`)."""

    def quiet(unraisable) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):
            hook(unraisable)

    return quiet


def _handler(signum, frame) -> None:
    if not _received:
        _begin_stop(signum)
        raise Interrupted(signum)
    name = signal.Signals(signum).name
    os.write(2, f"bench: {name} while stopping: finishing the shutdown first (kill -9 stops at once)\n".encode())


def _soft_handler(signum, frame) -> None:
    if _received or _preempted:
        return
    _preempted.append(signum)
    name = signal.Signals(signum).name
    os.write(2, f"bench: {name} (pre-timeout): stopping at the end of this epoch; its trial is queued again\n".encode())


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` once in the block, later ones are ignored
    (with a note on stderr); :data:`PREEMPT` asks for a soft stop. The previous handlers come
    back on leaving unless a signal came (the process is then shutting down). Outside the main
    thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    _preempted.clear()
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    previous[PREEMPT] = signal.signal(PREEMPT, _soft_handler)
    previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable(sys.unraisablehook)
    _tie_to_parent()
    try:
        yield
    finally:
        if not _received and not _preempted:
            for s, h in previous.items():
                signal.signal(s, h)
            sys.unraisablehook = previous_hook


def stop_processes(
    procs: Sequence[subprocess.Popen], signum: int = signal.SIGTERM, timeout: float = 120.0, group: bool = False
) -> None:
    """Send each running process ``signum`` once (``group``: to its whole process group, which
    it leads: started with ``start_new_session=True``), wait for them; whatever still runs after
    ``timeout`` seconds is killed (SIGKILL)."""

    def send(p: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(p.pid, sig) if group else p.send_signal(sig)
        except ProcessLookupError:
            pass

    for p in procs:
        if p.poll() is None or group:
            send(p, signum)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            send(p, signal.SIGKILL)
            p.wait()
        if group:  # the leader is gone; its group may not be yet
            while _group_alive(p.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _group_alive(p.pid):
                send(p, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
