"""The MLflow side of a study: one parent run, one-line store errors, quiet MLflow logs."""

from __future__ import annotations

import os

import pytest

from bench.records import ROLE_TRIAL, Tag
from bench.stores import Tracker, TrackingStoreError
from bench.stores.mlflow_store import EXPERIMENT_KIND


def test_tracker_opens_one_parent_run_and_tags_the_experiment_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first, second = Tracker(uri, "s"), Tracker(uri, "s")
    assert first.open() == second.open()
    exp = first.client.get_experiment(first.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == EXPERIMENT_KIND["mlflow.experimentKind"]
    assert (tmp_path / "mlflow.db.lock").exists()
    assert first.runs_url("http://127.0.0.1:5000/") == f"http://127.0.0.1:5000/#/experiments/{first.experiment_id}/runs"
    assert Tracker(uri, "s").experiment_id == first.experiment_id
    described = Tracker(uri, "d", "max pooling against top-K pooling")
    assert (
        described.client.get_experiment(described.experiment_id).tags["mlflow.note.content"]
        == "max pooling against top-K pooling"
    )


def test_a_failing_store_is_one_tracking_store_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(os.urandom(2048))
    with pytest.raises(TrackingStoreError) as e:
        Tracker(f"sqlite:///{bad}", "s").open()
    e.value.trial = 3
    assert str(e.value).startswith(f"MLflow store sqlite:///{bad} failed during trial 3: ") and "\n" not in str(e.value)
    assert str(e.value).endswith("DatabaseError: file is not a database")  # the database's own words, not a wrapper's


QUIET_SCRIPT = """
import logging, sqlite3
from bench.stores import quiet_mlflow_logs
quiet_mlflow_logs()
try:
    raise sqlite3.OperationalError("attempt to write a readonly database")
except sqlite3.OperationalError:
    logging.getLogger("mlflow.store.db.utils").exception("SQLAlchemy database error.\\n[SQL: INSERT INTO metrics]")
    logging.getLogger("mlflow.tracking.client").warning("first line\\nsecond line", exc_info=True)
"""


def test_mlflow_logs_no_traceback_and_not_the_store_error_the_harness_reports():
    """MLflow's SQL store logs a database error with its traceback before raising it (seen in CI
    when the store became read-only mid-trial); the harness reports the raised error as one line."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", QUIET_SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("WARNING mlflow.tracking.client: first line"), r.stderr


def test_a_store_failing_while_a_trial_error_is_recorded_names_the_trial_error_first(tmp_path):
    """Disk full while a checkpoint was written: the trial failed, then the store failed while
    TrialLifecycle recorded it. The store's root cause used to be found by following the implicit
    __context__ into the trial's error ('MLflow store ... failed: RuntimeError: basic_ios::clear')."""
    import sqlite3

    from bench.stores.mlflow_store import _store_call

    class Store:
        uri = "sqlite:///x.db"

        @_store_call
        def set_tags(self):
            try:
                raise sqlite3.OperationalError("database or disk is full")
            except sqlite3.OperationalError as e:
                raise RuntimeError("SQL store wrapper") from e

    trial_error = OSError(28, "No space left on device")
    try:
        raise trial_error
    except OSError:
        with pytest.raises(TrackingStoreError) as e:
            Store().set_tags()
    assert e.value.detail == "OperationalError: database or disk is full"  # the store's own cause
    assert e.value.first is trial_error
    assert str(e.value) == (
        "OSError: [Errno 28] No space left on device; then, recording it, "
        "MLflow store sqlite:///x.db failed: OperationalError: database or disk is full"
    )
    with pytest.raises(TrackingStoreError) as e:  # outside any handler: the store's error alone
        Store().set_tags()
    assert str(e.value) == "MLflow store sqlite:///x.db failed: OperationalError: database or disk is full"


def _half_created(db, runs: bool):
    """A store as a migration cut short by a full disk leaves it: an older schema version and
    the migration's ``_alembic_tmp_*`` table (with runs: one logged before)."""
    import sqlite3

    t = Tracker(f"sqlite:///{db}", "s")
    if runs:
        t.open()
    t.client._tracking_client.store.engine.dispose()
    con = sqlite3.connect(db)
    con.execute("UPDATE alembic_version SET version_num = '0584bdc529eb'")
    con.execute("CREATE TABLE _alembic_tmp_endpoints (x INTEGER)")
    con.commit()
    con.close()


def test_a_half_created_store_without_runs_is_moved_aside_with_a_warning_and_created_again(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    _half_created(db, runs=False)
    capsys.readouterr()
    t = Tracker(f"sqlite:///{db}", "s")
    assert t.open()
    aside = list(tmp_path.glob("mlflow.db.half-created-*"))
    err = capsys.readouterr().err
    assert len(aside) == 1 and err.count("\n") == 1
    assert err.startswith(
        f"bench: warning: MLflow store {db} was left half-migrated (table _alembic_tmp_endpoints) and holds no runs; moved it to {aside[0]}"
    )
    assert Tracker(f"sqlite:///{db}", "s").open() == t.open() and capsys.readouterr().err == ""


def test_a_half_created_store_that_holds_runs_is_refused_in_one_line(tmp_path):
    db = tmp_path / "mlflow.db"
    _half_created(db, runs=True)
    with pytest.raises(TrackingStoreError) as e:
        Tracker(f"sqlite:///{db}", "s").open()
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    assert str(e.value).startswith(
        f"MLflow store sqlite:///{db} failed: the store was left half-migrated (table "
        "_alembic_tmp_endpoints) and holds 1 run(s), so it is left as it is"
    )
    assert not list(tmp_path.glob("mlflow.db.half-created-*"))


CREATE_SCRIPT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))  # a disk that fills mid-migration
from bench.stores import Tracker, TrackingStoreError
try:
    Tracker(sys.argv[1], "s").open()
except TrackingStoreError as e:
    print(e)
"""


def test_a_store_whose_creation_fails_leaves_no_half_migrated_file_and_is_created_next_time(tmp_path):
    import subprocess
    import sys

    from helpers import ROOT

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = subprocess.run(
        [sys.executable, "-c", CREATE_SCRIPT, uri],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert out.stdout.startswith(f"MLflow store {uri} failed: ") and out.stdout.count("\n") == 1, (
        out.stdout + out.stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db.lock"]  # nothing half-made
    assert Tracker(uri, "s").open()


def _log_same_datasets(uri: str, barrier, rounds: int, out) -> None:
    t = Tracker(uri, "race")
    parent = t.open()
    errors = []
    for i in range(rounds):
        run = t.start_trial(parent, f"r{i}", {}, {})
        barrier.wait()  # both processes log the same new dataset at once
        try:
            t.log_datasets(run, [(f"split-{i}", f"{i:016x}", "training")])
        except Exception as e:  # noqa: BLE001 - reported to the test
            errors.append(str(e)[:200])
    out.put(errors)


def test_two_processes_logging_one_new_dataset_at_once_both_get_it(tmp_path):
    """Without a retry, about 4 in 10 of these rounds break MLflow's unique dataset row."""
    import multiprocessing as mp

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    Tracker(uri, "race").open()
    ctx = mp.get_context("fork")  # the children need nothing of this process but the function
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_log_same_datasets, args=(uri, barrier, 10, out)) for _ in range(2)]
    for p in procs:
        p.start()
    errors = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    assert errors == [[], []]
    from mlflow import MlflowClient

    runs = MlflowClient(uri).search_runs([Tracker(uri, "race").experiment_id], f"tags.`{Tag.ROLE}` = '{ROLE_TRIAL}'")
    assert len(runs) == 20 and all(len(r.inputs.dataset_inputs) == 1 for r in runs)
