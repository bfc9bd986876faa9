"""What a command ends with: its exit code and, for bad input, a failing store or a signal,
its one line on stderr."""

from __future__ import annotations

import sys

from ..signals import PREEMPT, signum_of
from ..stores.errors import StoreError, TrackingStoreError  # light: no Optuna, no MLflow

EXIT_FAILED_TRIALS = 1
EXIT_BAD_INPUT = 2


def bad_input(msg: str) -> int:
    print(f"bench: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def store_failed(e: StoreError) -> int:
    """A failing store: one line, exit 1 (a failing MLflow store: the trial is FAIL in Optuna,
    retried next run; the Optuna journal's errors say what to do themselves), or exit 2 for a
    store that needs a person's decision (a damaged journal, a half-created MLflow store that
    holds runs)."""
    retry = "; run the same command again to retry" if isinstance(e, TrackingStoreError) and e.exit_code == 1 else ""
    print(f"bench: error: {e}{retry}", file=sys.stderr)
    return e.exit_code


def interrupted_line(e: BaseException, command: str) -> str:
    """The one line a command stopped by SIGINT / SIGTERM / the pre-timeout signal ends with."""
    import signal

    name = signal.Signals(signum_of(e)).name
    if command == "ui":
        return f"bench: interrupted ({name}); the MLflow UI is stopped"
    if signum_of(e) == PREEMPT:
        return f"bench: stopped ({name}, pre-timeout); a trial under way was checkpointed and queued again"
    return f"bench: interrupted ({name}); run the same command again to resume"
