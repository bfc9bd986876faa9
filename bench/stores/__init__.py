"""The stores a study lives in: Optuna's (trials, their states and stored configurations) and
MLflow's (one experiment per study, a parent run, one run per trial), with the locks and the
bookkeeping the harness adds on top of them.

Names are imported from their module on first use, so a command that needs only Optuna (``bench
ls``) never imports MLflow.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_HOME = {
    "file_lock": "file_lock",
    **dict.fromkeys(
        ("DEFAULT_TRACKING_URI", "Tracker", "quiet_mlflow_logs", "resolve_tracking_uri", "store_exists"), "mlflow_store"
    ),
    **dict.fromkeys(("StoreError", "StudyStoreError", "TrackingStoreError"), "errors"),
    **dict.fromkeys(
        (
            "DEFAULT_STORAGE",
            "claim_waiting_trial",
            "fail_dead_trials",
            "heartbeat",
            "open_storage",
            "resolve_storage_url",
            "storage_exists",
            "study_lock",
            "worker_identity",
        ),
        "optuna_store",
    ),
}
__getattr__, __all__ = lazy_exports(__name__, _HOME)
