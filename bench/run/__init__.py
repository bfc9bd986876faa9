"""Running a study: the startup sequence, the queue of trials, the worker loop, one trial's
lifecycle and the method's pipeline (stage 1, pseudo labels, stage 2), the torchrun entry point
(:mod:`bench.run.ddp`) and the Slurm launcher (:mod:`bench.run.slurm`).

Names are imported from their module on first use (as in :mod:`bench.stores`), so a command that
needs only a light module of this package (``bench ls`` reads Slurm's queue) never imports torch.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_HOME = {
    "TrialContext": "pipeline",
    "prepare": "queue",
    **dict.fromkeys(("TuneSplits", "tune_splits"), "splits"),
    **dict.fromkeys(("StudyHandle", "load_data", "start"), "startup"),
    "run_trial": "trial",
    **dict.fromkeys(("finish_parent", "run_in_process", "run_workers", "wait_for_others", "work"), "worker"),
}
__getattr__, __all__ = lazy_exports(__name__, _HOME)
