"""`bench run` end to end on real Optuna storage and a real MLflow store (slow: whole studies)."""

import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
from helpers import child_runs, write_study

from bench.cli import main

pytestmark = pytest.mark.slow
URI = "sqlite:///mlflow.db"


def bench(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_smoke_run_logs_everything_and_rerun_adds_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")  # on under Slurm, here when asked
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # a smoke trial is shorter than 10 s
    study = write_study(tmp_path / "smoke.yaml")
    assert main(["run", str(study)]) == 0
    children, parents = child_runs(URI, "smoke")
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
    assert len(children) == 2 and set(children["status"]) == {"FINISHED"}
    assert set(children["tags.mlflow.parentRunId"]) == {parents.iloc[0]["run_id"]}
    assert set(children["tags.bench.variant"]) == {"vit-pcm", "tkp-pcl"}
    for col in (
        "pseudo_miou",
        "pseudo_miou_crf",
        "iou_background",
        "iou_crf_disc-red",
        "loss",
        "monitor_pseudo_miou",
        "seg_miou",
        "seg_iou_background",
        "seg_loss",
    ):
        assert children[f"metrics.{col}"].notna().all(), col
    assert ((children["metrics.pseudo_miou"] > 0) & (children["metrics.pseudo_miou"] <= 1)).all()
    row = children[children["tags.bench.variant"] == "vit-pcm"].iloc[0]
    assert row["params.pooling.kind"] == "max" and row["params.loss.pce_weight"] == "0.0"
    assert row["params.data.n_train"] == "96" and row["tags.bench.seed"] == "0"
    assert row["tags.mlflow.source.git.commit"] and row["tags.version.torch"]

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    rid = row["run_id"]
    assert [m.step for m in client.get_metric_history(rid, "monitor_pseudo_miou")] == [0, 1]
    inputs = {
        (d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"], len(d.dataset.digest))
        for d in client.get_run(rid).inputs.dataset_inputs
    }
    # the synthetic train scenes train stage 1 and stage 2 and are scored as pseudo labels; val scores
    assert {(n, c) for n, c, _ in inputs} == {("synthetic-train", "training, scoring"), ("synthetic-val", "scoring")}
    assert {k for *_, k in inputs} == {16}
    node = socket.gethostname()  # system metrics, named after the node they were measured on
    for m in ("cpu_utilization_percentage", "system_memory_usage_megabytes"):
        assert client.get_metric_history(rid, f"system/{node}/{m}"), m
    arts = {a.path for a in client.list_artifacts(rid)}
    assert {
        "config.yaml",
        "confusion_matrix.csv",
        "overlay.png",
        "examples.npz",
        "per_class_iou.json",
        "seg_overlay.png",
        "confusion_matrix_seg.csv",
    } <= arts
    assert not (tmp_path / ".bench" / "smoke" / "pseudo").exists() or not any(
        (tmp_path / ".bench/smoke/pseudo").iterdir()
    )

    st = optuna.load_study(
        study_name="smoke",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(".bench/optuna.journal")),
    )
    assert [t.state.name for t in st.trials] == ["COMPLETE", "COMPLETE"]
    assert len(st.trials[0].intermediate_values) == 2

    assert main(["run", str(study)]) == 0  # again: nothing to do
    children, _ = child_runs(URI, "smoke")
    assert len(children) == 2
    assert len(st.get_trials()) == 2


def test_dry_run_writes_nothing(tmp_path):
    study = write_study(tmp_path / "smoke.yaml")
    r = bench("run", str(study), "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "vit-pcm|seed=0" in r.stdout and "tkp-pcl|seed=0" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke.yaml"]


def test_nan_trial_fails_alone_and_is_retried_on_rerun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a learning rate of 1e30 blows the weights up at the first step: a NaN loss, deterministically
    study = write_study(tmp_path / "s.yaml", {"variants.broken": {"train.lr": 1e30}})
    assert main(["run", str(study)]) == 1
    children, parents = child_runs(URI, "smoke")
    by_variant = dict(zip(children["tags.bench.variant"], children["status"]))
    assert by_variant == {"vit-pcm": "FINISHED", "tkp-pcl": "FINISHED", "broken": "FAILED"}
    err = children[children["tags.bench.variant"] == "broken"].iloc[0]["tags.bench.error"]
    assert err.startswith("NonFiniteLossError: non-finite loss at epoch 0"), err
    assert parents.iloc[0]["status"] == "RUNNING"  # the study is not complete
    assert main(["run", str(study)]) == 1  # retried (and fails again), finished ones untouched
    children, _ = child_runs(URI, "smoke")
    assert sorted(children["status"]) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]


def test_kill_9_mid_study_then_rerun_completes_nothing_lost_or_doubled(tmp_path, monkeypatch):
    study = write_study(tmp_path / "s.yaml", {"base.train.epochs": 6})
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "run", str(study)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = tmp_path / ".bench" / "optuna.journal"
    deadline = time.time() + 120
    epoch = 0
    while time.time() < deadline and epoch < 2:
        time.sleep(0.5)
        if journal.exists():
            try:
                st = optuna.load_study(
                    study_name="smoke",
                    storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
                )
            except KeyError:
                continue
            running = st.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            epoch = max((t.user_attrs.get("epoch", 0) for t in running), default=0)
    assert epoch >= 2, "the study never got going"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / ".bench" / "smoke" / "checkpoints").is_dir()

    r = bench("run", str(study), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "1 found dead" in r.stderr.replace("\n", " ")
    monkeypatch.chdir(tmp_path)
    children, parents = child_runs(URI, "smoke")
    finished = children[children["status"] == "FINISHED"]
    assert sorted(finished["tags.bench.variant"]) == ["tkp-pcl", "vit-pcm"]  # each once
    assert sorted(children["status"]) == ["FAILED", "FINISHED", "FINISHED"]
    resumed = finished["tags.bench.resumed_from_epoch"].dropna()
    assert len(resumed) == 1 and int(resumed.iloc[0]) >= 2  # the dead trial's epochs were kept
    assert parents.iloc[0]["status"] == "FINISHED"


def test_two_workers_run_every_trial_exactly_once(tmp_path, monkeypatch):
    study = write_study(tmp_path / "s.yaml", seeds=[0, 1, 2])
    r = bench("run", str(study), "--workers", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr + (tmp_path / ".bench/smoke/worker-0.log").read_text()
    monkeypatch.chdir(tmp_path)
    children, _ = child_runs(URI, "smoke")
    assert len(children) == 6 and set(children["status"]) == {"FINISHED"}
    assert sorted(children["tags.bench.job_key"]) == sorted(
        f"{v}|seed={s}" for v in ("vit-pcm", "tkp-pcl") for s in range(3)
    )
    st = optuna.load_study(
        study_name="smoke",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(".bench/optuna.journal")),
    )
    assert len({t.user_attrs["worker_pid"] for t in st.trials}) == 2  # both workers ran trials
    logs = [(tmp_path / f".bench/smoke/worker-{i}.log").read_text() for i in range(2)]
    assert all("Traceback" not in log for log in logs), logs
    r = bench("ls", cwd=tmp_path)
    assert r.returncode == 0 and "smoke" in r.stdout and "tkp-pcl" in r.stdout


def test_search_study_samples_prunes_and_logs_pruned_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    search = {
        "variant": "tkp-pcl",
        "sampler": "random",
        "n_trials": 5,
        "pruner": "median",
        "pruner_warmup_epochs": 0,
        "pruner_startup_trials": 1,
        "seed": 3,
        "space": {
            "train.lr": {"type": "float", "low": 1e-5, "high": 3e-3, "log": True},
            "pooling.k_ratio": {"type": "float", "low": 0.05, "high": 0.5},
        },
    }
    study = write_study(tmp_path / "s.yaml", {"base.train.epochs": 3}, search=search)
    assert main(["run", str(study)]) == 0
    st = optuna.load_study(
        study_name="smoke",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(".bench/optuna.journal")),
    )
    states = [t.state.name for t in st.trials]
    assert len(states) == 5 and set(states) <= {"COMPLETE", "PRUNED"} and "PRUNED" in states, states
    children, _ = child_runs(URI, "smoke")
    for t in st.trials:
        run = children[children["tags.bench.trial"] == str(t.number)].iloc[0]
        assert float(run["params.train.lr"]) == pytest.approx(t.params["train.lr"])
        if t.state.name == "PRUNED":
            assert run["status"] == "KILLED" and run["tags.bench.state"] == "PRUNED"
        else:
            assert run["status"] == "FINISHED" and run["metrics.pseudo_miou"] == pytest.approx(t.value)
