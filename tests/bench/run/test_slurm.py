"""The Slurm launcher's pure parts: settings, store checks, the queue counts, where-tags (no Slurm needed)."""

from __future__ import annotations

from collections import Counter

import pytest
from helpers import write_study

from bench.run.command import worker_command
from bench.run.slurm import (
    SubmitError,
    array_counts,
    check_stores,
    executor,
    slurm_request,
    time_minutes,
)
from bench.study import load_study

PG = "postgresql://u@db/bench"


@pytest.mark.parametrize(
    ("value", "minutes"),
    [
        ("30", 30),
        ("10:30", 11),
        ("01:00:00", 60),
        ("00:00:30", 1),
        ("1-0", 1440),
        ("1-02:30", 1590),
        ("2-00:00:01", 2881),
    ],
)
def test_time_limits_in_minutes(value, minutes):
    assert time_minutes(value) == minutes


def test_bad_time_limit():
    with pytest.raises(SubmitError, match="MINUTES, HH:MM:SS"):
        time_minutes("1:2:3:4")


def test_flags_win_over_the_cluster_section_and_settings_stay_outside_the_identity(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cluster = {"partition": "gpu", "time": "02:00:00", "mem": "16G", "cpus_per_worker": 4, "slurm": {"qos": "low"}}
    study = load_study(write_study(tmp_path / "s.yaml", cluster=cluster))
    plain = load_study(write_study(tmp_path / "p.yaml"))
    req = slurm_request(study, 3, {"partition": "debug", "time": None}, ["qos=high", "account=lab"])
    assert (req.workers, req.partition, req.time_min, req.mem, req.cpus, req.gpus) == (3, "debug", 120, "16G", 4, 0)
    assert req.extra == {"qos": "high", "account": "lab"}
    from bench.study import study_jobs

    assert [j.config_hash for j in study_jobs(study)] == [j.config_hash for j in study_jobs(plain)]
    ex = executor(req, study.name)
    assert ex.parameters["partition"] == "debug" and ex.parameters["cpus_per_task"] == 4
    assert ex.parameters["additional_parameters"] == {"qos": "high", "account": "lab"}
    cmd = worker_command("s.yaml", PG, "http://mlflow:5000", 4)
    assert cmd[1:4] == ["-m", "bench.cli", "worker"] and cmd[-3:] == ["--threads", "4", "--quiet"]


@pytest.mark.parametrize(
    ("workers", "items", "message"), [(0, [], "--workers must be >= 1"), (2, ["qos"], "KEY=VALUE")]
)
def test_bad_requests(tmp_path, workers, items, message):
    study = load_study(write_study(tmp_path / "s.yaml"))
    with pytest.raises(SubmitError, match=message):
        slurm_request(study, workers, {}, items)


@pytest.mark.parametrize(
    ("storage", "uri", "ok"),
    [
        (PG, "http://mlflow:5000", True),
        (PG, "postgresql://u@db/mlflow", True),
        ("journal:.bench/optuna.journal", "http://mlflow:5000", False),
        ("sqlite:///o.db", "http://m:5000", False),
        (PG, "sqlite:///mlflow.db", False),
        (PG, "mlruns", False),
        (PG, "file:///tmp/mlruns", False),
    ],
)
def test_shared_stores(storage, uri, ok):
    check_stores(storage, uri, local_ok=True)
    if ok:
        check_stores(storage, uri, local_ok=False)
    else:
        with pytest.raises(SubmitError, match="--local-ok"):
            check_stores(storage, uri, local_ok=False)


def test_array_counts_from_the_queue():
    arrays = [{"job_id": "12", "tasks": 4}, {"job_id": "13", "tasks": 2}]
    queue = {"12": Counter({"PENDING": 1, "RUNNING": 2}), "99": Counter({"RUNNING": 1})}
    rows = array_counts(arrays, queue)
    assert [(r["pending"], r["running"], r["ended"]) for r in rows] == [(1, 2, 1), (0, 0, 2)]
    assert array_counts(arrays, None)[0]["pending"] == "?"


def test_where_tags_read_slurms_environment():
    from bench.run.trial import where_tags

    env = {"SLURM_JOB_ID": "20", "SLURM_ARRAY_JOB_ID": "18", "SLURM_ARRAY_TASK_ID": "2", "SLURMD_NODENAME": "n1"}
    tags = where_tags(env)
    assert {k: tags[k] for k in tags if "slurm" in k} == {
        "bench.slurm_job_id": "18",
        "bench.slurm_array_task_id": "2",
        "bench.slurm_node": "n1",
    }
    assert not [k for k in where_tags({}) if "slurm" in k]
    assert where_tags({"SLURM_JOB_ID": "7"})["bench.slurm_job_id"] == "7"
