"""The errors of the stores, in one place and with light imports (``bench.cli`` catches them
without importing Optuna or MLflow): ``str()`` is one line naming the store and what to do;
``exit_code`` is the command's exit status (1: a fault, run again once it is fixed; 2: a store
that needs a person's decision, as bad input does)."""

from __future__ import annotations

EXIT_FAULT = 1
EXIT_BAD_INPUT = 2


class StoreError(RuntimeError):
    """A store failed or cannot be used as it is."""

    exit_code = EXIT_FAULT


class TrackingStoreError(StoreError):
    """The MLflow store failed (unreachable, unwritable, corrupt); ``str()`` is one line, naming
    the store and, once :class:`bench.run.trial.TrialLifecycle` has set it, the trial."""

    def __init__(self, uri: str, detail: str, trial: int | None = None, exit_code: int = EXIT_FAULT):
        super().__init__(uri, detail)
        self.uri, self.detail, self.trial, self.exit_code = uri, detail, trial, exit_code
        self.first: BaseException | None = None
        """What failed first: the error being handled (e.g. a trial's, being recorded) when the store failed."""

    def __str__(self) -> str:
        during = f" during trial {self.trial}" if self.trial is not None else ""
        store = f"MLflow store {self.uri} failed{during}: {self.detail}"
        if self.first is None or isinstance(self.first, TrackingStoreError):
            return store
        if not isinstance(self.first, Exception):  # an interrupt being recorded
            return f"interrupted; then, recording it, {store}"
        first = (str(self.first).strip().splitlines() or [""])[0][:300]
        return f"{type(self.first).__name__}: {first}; then, recording it, {store}"


class StudyStoreError(StoreError):
    """The Optuna storage failed (a journal write that did not fit, a journal deleted or replaced
    while in use) or holds a damaged record; ``str()`` says which file and what to do."""

    def __init__(self, path: str, detail: str, exit_code: int = EXIT_FAULT):
        super().__init__(path, detail)
        self.path, self.detail, self.exit_code = path, detail, exit_code

    def __str__(self) -> str:
        return f"Optuna journal {self.path}: {self.detail}"


def os_error_text(e: OSError) -> str:
    """``OSError`` in a few words: ``[Errno 28] No space left on device``."""
    return f"[Errno {e.errno}] {e.strerror}" if e.errno is not None and e.strerror else f"{type(e).__name__}: {e}"
