"""Dead-trial detection on a real Optuna RDB storage: heartbeats, and trials that finish meanwhile."""

import time

import optuna
import pytest
from helpers import enqueued, write_study
from optuna.trial import TrialState

from bench.stores import claim_waiting_trial, fail_dead_trials, heartbeat, open_storage
from bench.stores.optuna_store import rdb_with_heartbeat
from bench.study import load_study


@pytest.fixture
def study(tmp_path):
    # a grace of 4 beats: a live trial's beat may come late on 2 busy cores, never that late
    storage = rdb_with_heartbeat(f"sqlite:///{tmp_path}/o.db", interval=1, grace=4)
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
        time.sleep(5.5)  # past the grace period for `dead`
        failed = fail_dead_trials(st, storage)
        assert [t.number for t in failed] == [dead.number]
        states = {t.number: t.state for t in st.get_trials()}
        assert states == {
            alive.number: TrialState.RUNNING,
            dead.number: TrialState.FAIL,
            done.number: TrialState.COMPLETE,
        }
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


# The journal file, written by SafeJournalFileBackend: full disk, records cut short, damage, deletion.


def _journal_study(tmp_path):
    url = f"journal:{tmp_path}/j.journal"
    st = optuna.create_study(study_name="s", storage=open_storage(url))
    st.enqueue_trial({}, user_attrs={"job_key": "a"})
    return url, tmp_path / "j.journal", st


def test_a_write_that_does_not_fit_is_rolled_back_and_is_one_error_naming_the_journal(tmp_path):
    """A full disk while a record is written (here: the file size limit, EFBIG, as ENOSPC on a
    full disk): the journal keeps its whole records only, and the study reads and writes after."""
    import resource
    import signal

    from bench.stores import StudyStoreError

    url, path, st = _journal_study(tmp_path)
    size = path.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, hard))  # room for part of the next record only
    try:
        with pytest.raises(StudyStoreError) as e:
            st.enqueue_trial({}, user_attrs={"job_key": "b" * 200})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    msg = str(e.value)
    assert msg.startswith(
        f"Optuna journal {path}: writing failed ([Errno 27] File too large); the journal was rolled back"
    )
    assert "\n" not in msg and e.value.exit_code == 1
    assert path.stat().st_size == size and path.read_bytes().endswith(b"\n")
    again = optuna.load_study(study_name="s", storage=open_storage(url))
    again.enqueue_trial({}, user_attrs={"job_key": "c"})
    assert [
        t.user_attrs["job_key"] for t in optuna.load_study(study_name="s", storage=open_storage(url)).get_trials()
    ] == ["a", "c"]


def test_a_record_cut_short_is_moved_aside_once_with_a_warning_and_the_study_goes_on(tmp_path, capsys):
    url, path, _ = _journal_study(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"op_code":8,"worker_')  # a process killed mid-write, a copy cut short
    st = optuna.load_study(study_name="s", storage=open_storage(url))
    err = capsys.readouterr().err
    aside = list(tmp_path.glob("j.journal.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b'{"op_code":8,"worker_'
    assert (
        err.count("\n") == 1
        and f"Optuna journal {path} ended in a record cut short (21 bytes" in err
        and str(aside[0]) in err
    )
    assert path.read_bytes() == whole
    st.enqueue_trial({}, user_attrs={"job_key": "b"})  # Optuna alone would glue this record to the cut one
    assert len(optuna.load_study(study_name="s", storage=open_storage(url)).get_trials()) == 2
    assert capsys.readouterr().err == ""  # warned once


def test_a_damaged_line_is_one_error_naming_the_journal_and_the_line(tmp_path):
    from bench.stores import StudyStoreError

    url, path, _ = _journal_study(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b'{"op_code":4,"wor{"op_code":8}\n' + b"".join(lines[1:]))
    with pytest.raises(StudyStoreError) as e:
        open_storage(url)
    assert str(e.value) == (
        f"Optuna journal {path}: line 2 is not a journal record (the file was damaged); restore the "
        "journal from a backup, or move it aside to start the study again"
    )
    assert e.value.exit_code == 2


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_journal_deleted_or_replaced_under_a_process_stops_it_and_is_not_re_created(tmp_path, how):
    from bench.stores import StudyStoreError

    url, path, st = _journal_study(tmp_path)
    path.unlink()
    if how == "replaced":
        path.write_bytes(b"")
    for action in (lambda: st.get_trials(), lambda: st.enqueue_trial({})):
        with pytest.raises(StudyStoreError, match="the file was deleted or replaced while this process was using it"):
            action()
    assert (path.stat().st_size == 0) if how == "replaced" else not path.exists()


def test_a_trial_of_this_process_or_never_identified_is_closed_by_the_sweep_that_asks_for_it(tmp_path, monkeypatch):
    from bench.records import Attr
    from bench.stores import optuna_store, worker_identity

    url, path, st = _journal_study(tmp_path)
    st.enqueue_trial({}, user_attrs={"job_key": "b"})
    storage = st._storage
    mine, unnamed = claim_waiting_trial(st, storage), claim_waiting_trial(st, storage)
    for k, v in worker_identity().items():
        mine.set_user_attr(k, v)
    assert fail_dead_trials(st, storage) == []  # alive, and the other within the grace period
    monkeypatch.setattr(optuna_store, "GRACE_SECONDS", -1)
    assert [t.number for t in fail_dead_trials(st, storage)] == [unnamed.number]
    assert [t.number for t in fail_dead_trials(st, storage, own=True)] == [mine.number]
    assert Attr.WORKER_START in st.get_trials()[mine.number].user_attrs
