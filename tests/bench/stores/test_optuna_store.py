"""Dead-trial detection on a real Optuna RDB storage: heartbeats, and trials that finish meanwhile."""

import time

import optuna
import pytest
from optuna.trial import TrialState

from bench.stores import claim_waiting_trial, fail_dead_trials, heartbeat, open_storage
from bench.stores.optuna_store import rdb_with_heartbeat
from bench.study import load_study
from helpers import enqueued, write_study


@pytest.fixture
def study(tmp_path):
    storage = rdb_with_heartbeat(f"sqlite:///{tmp_path}/o.db", interval=1, grace=2)
    st = optuna.create_study(study_name="s", storage=storage)
    for _ in range(3):
        st.enqueue_trial({})
    return st, storage


def test_a_trial_whose_heartbeat_stopped_is_failed_the_live_and_finished_ones_are_not(study):
    st, storage = study
    alive, dead, done = (claim_waiting_trial(st, storage) for _ in range(3))
    with heartbeat(storage, st, dead):  # beats once, then its worker "dies"
        pass
    with heartbeat(storage, st, done):
        pass
    st.tell(done, 1.0)  # finished by its worker before anyone looked
    with heartbeat(storage, st, alive):
        time.sleep(3.5)  # past the grace period for `dead`
        failed = fail_dead_trials(st, storage)
        assert [t.number for t in failed] == [dead.number]
        states = {t.number: t.state for t in st.get_trials()}
        assert states == {alive.number: TrialState.RUNNING, dead.number: TrialState.FAIL, done.number: TrialState.COMPLETE}
    assert fail_dead_trials(st, storage) == []  # reported once


def test_a_waiting_trial_is_claimed_once(tmp_path):
    storage = open_storage(f"journal:{tmp_path}/j.journal")
    study = load_study(write_study(tmp_path / "s.yaml"))
    st = enqueued(study, storage)
    other = optuna.load_study(study_name=study.name, storage=open_storage(f"journal:{tmp_path}/j.journal"))
    a, b = claim_waiting_trial(st, storage), claim_waiting_trial(other, other._storage)
    assert {a.number, b.number} == {0, 1}
    assert claim_waiting_trial(st, storage) is None and claim_waiting_trial(other, other._storage) is None
    assert [t.state.name for t in st.get_trials()] == ["RUNNING", "RUNNING"]
