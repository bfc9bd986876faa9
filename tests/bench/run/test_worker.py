"""The worker loop and the queue on real stores (an Optuna journal file, a SQLite MLflow store),
with the trial's work replaced by a function that finishes it at once (no training)."""

from __future__ import annotations

import os
import socket
import sys
import time

import optuna
import pytest
from helpers import write_study
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

import bench.run.worker as worker
from bench.records import Attr, stage_of
from bench.run import queue
from bench.run.startup import StudyHandle, make_pruner, make_sampler
from bench.stores import Tracker, open_storage
from bench.study import load_study

SEARCH = {
    "variant": "tkp-pcl",
    "sampler": "random",
    "n_trials": 3,
    "seed": 1,
    "tune": {"count": 4},
    "space": {"pooling.k_ratio": {"type": "float", "low": 0.05, "high": 0.5}},
}
CONFIRM = {"top_n": 1, "seeds": [10, 11], "baseline": "vit-pcm"}


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    """One SQLite MLflow store for the module (creating one takes seconds); a study per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def handle(tmp_path, mlflow_db, **top) -> StudyHandle:
    study = load_study(write_study(tmp_path / "s.yaml", name=tmp_path.name, **{"seeds": [0, 1], **top}))
    url = f"journal:{tmp_path}/optuna.journal"
    storage = open_storage(url)
    st = optuna.create_study(
        study_name=study.name, storage=storage, sampler=make_sampler(study), pruner=make_pruner(study)
    )
    tracker = Tracker(mlflow_db, study.name)
    return StudyHandle(study, "s.yaml", url, storage, st, tracker, tmp_path / ".bench", splits=None)


@pytest.fixture
def instant_trials(monkeypatch):
    """``run_trial`` replaced: each claimed trial is told COMPLETE with its number as value."""
    ran = []

    def run_trial(ctx, trial):
        ran.append(trial.user_attrs.get(Attr.JOB_KEY, f"search|trial={trial.number}"))
        return ctx.optuna_study.tell(trial, float(trial.number)).state

    monkeypatch.setattr(worker, "run_trial", run_trial)
    return ran


def test_work_runs_each_enqueued_job_once_and_returns_the_states(tmp_path, mlflow_db, instant_trials):
    h = handle(tmp_path, mlflow_db)
    assert queue.prepare(h) == {"dead": 0, "queued": 4}
    assert queue.prepare(h)["queued"] == 0  # a second bench run enqueues nothing
    produced = worker.work(h)
    assert produced == {"COMPLETE": 4} and sorted(instant_trials) == sorted(j.key for j in h.study._jobs)
    assert queue.done(h) == queue.total(h) == 4 and worker.work(h) == {}


def _claimed_by_a_dead_worker(h, run_id: str | None = None) -> optuna.Trial:
    """The next queued job, claimed by a worker process that is gone (a pid that cannot exist)."""
    trial = queue.next_trial(h)
    attrs = {Attr.WORKER_HOST: socket.gethostname(), Attr.WORKER_PID: str(2**22 + os.getpid()), Attr.WORKER_START: "1"}
    for k, v in {**attrs, **({Attr.MLFLOW_RUN_ID: run_id} if run_id else {})}.items():
        trial.set_user_attr(k, v)
    return trial


def test_work_closes_a_dead_workers_trial_and_its_run_and_runs_the_job_again(tmp_path, mlflow_db, instant_trials):
    h = handle(tmp_path, mlflow_db)
    queue.prepare(h)
    trial = _claimed_by_a_dead_worker(h, h.tracker.start_trial(h.tracker.open(), "dead", {}, {}))
    run_id = trial.user_attrs[Attr.MLFLOW_RUN_ID]
    assert worker.work(h) == {"COMPLETE": 4}  # the survivor queued the job again and ran it
    assert h.optuna_study.trials[trial.number].state == TrialState.FAIL
    run = h.tracker.client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["bench.error"] == "worker died"
    assert sorted(instant_trials) == sorted(j.key for j in h.study._jobs)  # each job once
    assert queue.prepare(h)["queued"] == 0


def test_a_job_that_kills_its_workers_is_queued_again_only_so_often(tmp_path, mlflow_db, instant_trials, capsys):
    h = handle(tmp_path, mlflow_db, seeds=[0], variants={"tkp-pcl": {}})  # one job
    queue.prepare(h)
    key = None
    for deaths in range(1, queue.DEAD_RETRIES + 2):
        trial = _claimed_by_a_dead_worker(h)
        assert key in (None, trial.user_attrs[Attr.JOB_KEY])  # the same job each time
        key = trial.user_attrs[Attr.JOB_KEY]
        assert trial.user_attrs.get(Attr.WORKER_DEATHS, 0) == deaths - 1
        assert queue.close_dead_trials(h) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-2:] == [
        "bench: trial 1: its worker died; queued again (retry 2 of 2)",
        "bench: trial 2: its worker died; left failed (3 workers died on its job; the next `bench run` retries it)",
    ]
    assert worker.work(h) == {}  # left failed: nothing to run
    assert [t.state.name for t in h.optuna_study.trials if t.user_attrs[Attr.JOB_KEY] == key] == ["FAIL"] * 3
    assert queue.prepare(h)["queued"] == 1  # the next bench run retries it, counting afresh


def _search_trial(h, number: int, state: TrialState, value: float | None = None) -> None:
    t = optuna.trial.create_trial(
        state=state,
        value=value,
        params={"pooling.k_ratio": 0.1 + 0.1 * number},
        distributions={"pooling.k_ratio": FloatDistribution(0.05, 0.5)},
        user_attrs={Attr.JOB_KEY: f"search|trial={number}", Attr.VARIANT: "tkp-pcl"},
    )
    h.optuna_study.add_trial(t)


def test_the_confirmation_is_enqueued_once_after_the_search(tmp_path, mlflow_db):
    h = handle(tmp_path, mlflow_db, search=SEARCH, confirm=CONFIRM)
    _search_trial(h, 0, TrialState.COMPLETE, 0.4)
    _search_trial(h, 1, TrialState.COMPLETE, 0.7)
    _search_trial(h, 2, TrialState.RUNNING)
    assert queue.enqueue_confirmation(h) == 0 and queue.confirmation_pending(h)  # a search trial still runs
    h.storage.set_trial_state_values(h.optuna_study.trials[2]._trial_id, TrialState.COMPLETE, [0.5])
    assert not queue.confirmation_pending(h)
    assert queue.enqueue_confirmation(h) == 4 and queue.enqueue_confirmation(h) == 0
    waiting = h.trials(states=(TrialState.WAITING,))
    keys = [t.user_attrs[Attr.JOB_KEY] for t in waiting]
    assert keys == [
        "confirm|top1|trial=1|seed=10",
        "confirm|vit-pcm|seed=10",
        "confirm|top1|trial=1|seed=11",
        "confirm|vit-pcm|seed=11",
    ]
    assert {stage_of(k) for k in keys} == {"confirm"} and queue.total(h) == 3 + 4
    assert all(t.user_attrs[Attr.CONFIG] and t.user_attrs[Attr.DATA] for t in waiting)


def test_work_waits_for_other_workers_search_trials_before_confirming(tmp_path, mlflow_db, instant_trials, monkeypatch):
    h = handle(tmp_path, mlflow_db, search=SEARCH, confirm=CONFIRM)
    _search_trial(h, 0, TrialState.COMPLETE, 0.4)
    _search_trial(h, 1, TrialState.COMPLETE, 0.7)
    _search_trial(h, 2, TrialState.RUNNING)  # another worker's
    polls = []

    real_sleep = time.sleep

    def other_worker_finishes(seconds):
        # time.sleep is the process's own: a wait elsewhere (a lock's retry, a thread an earlier
        # test left in this process) is not the loop's poll
        if sys._getframe(1).f_globals.get("__name__") != worker.__name__:
            return real_sleep(seconds)
        polls.append(seconds)
        h.storage.set_trial_state_values(h.optuna_study.trials[2]._trial_id, TrialState.COMPLETE, [0.5])

    monkeypatch.setattr(worker.time, "sleep", other_worker_finishes)
    assert worker.work(h) == {"COMPLETE": 4} and len(polls) == 1
    assert sorted(instant_trials)[0].startswith("confirm|top1|trial=1|")


def test_a_storage_that_lost_finished_trials_is_refused_before_anything_is_enqueued(tmp_path, mlflow_db):
    """A journal cut at a line end (or restored from an older copy) no longer has a finished
    trial's COMPLETE record: its job is not run again beside its FINISHED MLflow run."""
    from bench.records import Tag
    from bench.study import StudyError

    h = handle(tmp_path, mlflow_db)
    key = h.study._jobs[0].key
    run = h.tracker.start_trial(h.tracker.open(), key, {Tag.JOB_KEY: key}, {})
    h.tracker.end(run, "FINISHED")  # its trial's COMPLETE record is what the journal lost
    with pytest.raises(StudyError) as e:
        queue.prepare(h)
    assert str(e.value).startswith(
        f"the Optuna storage {h.storage_url} lost the results of 1 finished trial(s) of study "
        f"{h.study.name!r} ({key}: FINISHED in MLflow"
    )
    assert str(e.value).endswith(
        "restore the storage (journal) from a backup, or rename the study to run it again from scratch"
    )
    assert h.trials() == []  # nothing enqueued


def test_waiting_for_others_never_waits_for_a_trial_of_this_very_process(tmp_path, mlflow_db, instant_trials):
    """A trial recorded as this process's (its end not written: a store that failed) is closed,
    not waited for (it hung ``bench run`` forever)."""
    from bench.stores import claim_waiting_trial, worker_identity

    h = handle(tmp_path, mlflow_db)
    queue.prepare(h)
    trial = claim_waiting_trial(h.optuna_study, h.storage)
    for k, v in worker_identity().items():
        trial.set_user_attr(k, v)
    worker.wait_for_others(h, poll=0.01)
    assert h.trials()[trial.number].state == TrialState.FAIL
