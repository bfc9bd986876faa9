"""One trial's lifecycle on a real SQLite MLflow store and an in-memory Optuna study (no training)."""

from __future__ import annotations

import optuna
import pytest
from helpers import enqueued, write_study

from bench.stores import Tracker, TrackingStoreError, claim_waiting_trial
from bench.study import load_study, stored_config


@pytest.fixture(scope="module")
def lifecycle_ctx(tmp_path_factory):
    """A TrialContext on a real SQLite MLflow store and an in-memory Optuna study (no training)."""
    from bench.run.pipeline import TrialContext

    d = tmp_path_factory.mktemp("life")
    study = load_study(write_study(d / "s.yaml", seeds=[0, 1, 2, 3]))
    st = enqueued(study)
    tracker = Tracker(f"sqlite:///{d}/mlflow.db", study.name)
    return TrialContext(study, st, tracker, tracker.open(), d / ".bench", splits=None)


def _claim(ctx):
    trial = claim_waiting_trial(ctx.optuna_study, ctx.optuna_study._storage)
    from bench.run.trial import claimed_job

    return trial, claimed_job(ctx, trial)


def test_lifecycle_completes_and_the_run_carries_config_hash_and_grid(lifecycle_ctx):
    from bench.run.trial import TrialLifecycle

    trial, spec = _claim(lifecycle_ctx)
    assert spec.config == stored_config(trial) and spec.config_hash == trial.user_attrs["config_hash"]
    with TrialLifecycle(lifecycle_ctx, trial, spec) as life:
        life.value = 0.5
    run = lifecycle_ctx.tracker.client.get_run(life.run_id)
    assert life.state.name == "COMPLETE" and run.info.status == "FINISHED"
    assert run.data.tags["bench.config_hash"] == spec.config_hash and run.data.params["train.lr"] == "0.002"
    assert run.data.tags["bench.precision"] == "float32"  # train.amp off
    assert lifecycle_ctx.optuna_study.trials[trial.number].value == 0.5


def test_lifecycle_loses_the_race_with_a_dead_trial_sweep_without_raising(lifecycle_ctx):
    from bench.run.trial import TrialLifecycle

    trial, spec = _claim(lifecycle_ctx)
    with TrialLifecycle(lifecycle_ctx, trial, spec) as life:
        trial.study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)  # the sweep
        life.value = 0.5
    assert life.state.name == "FAIL"
    run = lifecycle_ctx.tracker.client.get_run(life.run_id)
    assert run.info.status == "FAILED" and "closed by another process" in run.data.tags["bench.error"]


def test_lifecycle_fails_a_trial_that_raises_and_reraises_a_store_failure(lifecycle_ctx):
    from bench.run.trial import TrialLifecycle

    trial, spec = _claim(lifecycle_ctx)
    with TrialLifecycle(lifecycle_ctx, trial, spec) as life:
        raise ValueError("boom")
    run = lifecycle_ctx.tracker.client.get_run(life.run_id)
    assert (
        life.state.name == "FAIL" and run.info.status == "FAILED" and run.data.tags["bench.error"] == "ValueError: boom"
    )
    trial, spec = _claim(lifecycle_ctx)
    with pytest.raises(TrackingStoreError) as e:
        with TrialLifecycle(lifecycle_ctx, trial, spec):
            raise TrackingStoreError("sqlite:///x", "OperationalError: disk I/O error")
    assert e.value.trial == trial.number and lifecycle_ctx.optuna_study.trials[trial.number].state.name == "FAIL"
