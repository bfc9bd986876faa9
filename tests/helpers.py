"""Shared helpers for the harness tests: study files and reading MLflow back."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "studies" / "smoke.yaml"


def smoke_dict() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def write_study(path: Path, changes: dict | None = None, **top) -> Path:
    """The smoke study with dotted-path ``changes`` (e.g. ``{"base.train.epochs": 4}``)."""
    d = copy.deepcopy(smoke_dict())
    d.update(top)
    for dotted, value in (changes or {}).items():
        node = d
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def child_runs(tracking_uri: str, study: str):
    """(trial runs, parent runs) of a study; a relative SQLite URI is taken in the cwd."""
    import mlflow

    from bench.stores import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri, None))
    try:
        df = mlflow.search_runs(experiment_names=[study])
    finally:  # set_tracking_uri exports MLFLOW_TRACKING_URI, which the next `bench` would honour
        mlflow.set_tracking_uri(None)
    return df[df["tags.bench.role"] == "trial"], df[df["tags.bench.role"] == "study"]


def enqueued(study, storage=None):
    """An Optuna study holding every job of ``study`` as ``bench run`` enqueues them."""
    import optuna

    from bench.study import study_jobs, trial_attrs

    st = optuna.create_study(storage=storage, study_name=study.name, load_if_exists=True)
    for job in study_jobs(study):
        st.enqueue_trial(params={}, user_attrs=trial_attrs(job, study))
    return st


def wait_for_health(port: int, seconds: float = 90.0) -> int | None:
    """The HTTP status of an MLflow server's ``/health`` on 127.0.0.1:``port`` once it answers,
    or None if it has not within ``seconds``."""
    import time
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status
        except OSError:
            time.sleep(0.5)
    return None
