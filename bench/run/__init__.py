"""Running a study: the startup sequence, the queue of trials, the worker loop, one trial's
lifecycle and the method's pipeline (stage 1, pseudo labels, stage 2), and the torchrun entry
point (:mod:`bench.run.ddp`)."""

from . import queue
from .pipeline import TrialContext
from .queue import prepare
from .splits import TuneSplits, tune_splits
from .startup import StudyHandle, load_data, start
from .trial import run_trial
from .worker import finish_parent, run_in_process, run_workers, wait_for_others, work

__all__ = [
    "StudyHandle", "TrialContext", "TuneSplits", "finish_parent", "load_data", "prepare", "queue", "run_in_process",
    "run_trial", "run_workers", "start", "tune_splits", "wait_for_others", "work",
]
