"""Trial integrity without training: stored configurations, the study-file check, execution
settings, trial claiming, checkpoints that cannot be resumed, the MLflow store's one parent run."""

import os

import optuna
import pytest
import torch

from bench.integrity import check_study_file, job_attrs, stored_config, usable_checkpoint
from bench.storage import claim_waiting_trial, open_storage
from bench.study import StudyError, config_hash, first_difference, load_study, study_jobs
from bench.tracking import EXPERIMENT_KIND, Tracker, TrackingStoreError
from helpers import write_study
from tkp_pcl.config import EXECUTION_KEYS, MethodConfig, with_execution
from tkp_pcl.stage1 import checkpoint


def enqueued(study, storage=None) -> optuna.Study:
    """An Optuna study holding every job of ``study`` as enqueued by `bench run`."""
    st = optuna.create_study(storage=storage, study_name=study.name, load_if_exists=True)
    for job in study_jobs(study):
        st.enqueue_trial(params={}, user_attrs=job_attrs(job, study))
    return st


def test_hash_ignores_execution_settings_but_not_the_method():
    cfg = MethodConfig()
    fast = MethodConfig.model_validate({"train": {"device": "cuda", "amp": True, "compile": True, "num_threads": 3},
                                        "segment": {"amp": True, "channels_last": True, "compile": True},
                                        "pseudo": {"workers": 7}})  # fmt: skip
    assert config_hash(cfg) == config_hash(fast) and first_difference(cfg, fast) is None
    other = MethodConfig.model_validate({"train": {"lr": 0.5}})
    assert config_hash(other) != config_hash(cfg)
    assert first_difference(other, cfg) == ("train.lr", 0.5, 0.001)
    assert all(k.split(".")[0] in ("train", "segment", "pseudo", "data") for k in EXECUTION_KEYS)


def test_with_execution_takes_only_the_execution_settings():
    stored = MethodConfig.model_validate({"train": {"lr": 0.02, "device": "cpu"}})
    here = MethodConfig.model_validate({"train": {"lr": 0.5, "device": "cuda", "num_threads": 2}})
    run = with_execution(stored, here)
    assert (run.train.lr, run.train.device, run.train.num_threads) == (0.02, "cuda", 2)


def test_stored_configuration_round_trips(tmp_path):
    study = load_study(write_study(tmp_path / "s.yaml"))
    st = enqueued(study)
    for t, job in zip(st.trials, study_jobs(study)):
        assert stored_config(t) == job.config and t.user_attrs["config_hash"] == job.config_hash


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"variants.tkp-pcl": {"train.lr": 0.02}}, "s.yaml: variants.tkp-pcl.train.lr: 0.02 here, 0.002 in the study's trial 1"),
        ({"base.train.lr": 0.02}, "s.yaml: base.train.lr: 0.02 here, 0.002 in the study's trial 0"),
        ({"base.pooling.kind": "max"}, "s.yaml: base.pooling.kind: 'max' here, 'topk' in the study's trial 1"),
        ({"variants": {"vit-pcm": {"pooling.kind": "max", "loss.pce_weight": 0.0}, "tkp": {}}},
         "s.yaml: variants.tkp-pcl: the study's trial 1 ran job 'tkp-pcl|seed=0', which this file does not define"),
        ({"seeds": [1]}, "s.yaml: grid: the study's trial 0 ran job 'vit-pcm|seed=0'"),
        ({"data.n_train": 200}, "s.yaml: data.n_train: 200 here, 96 in the study's trial 0"),
    ],
)  # fmt: skip
def test_a_file_that_disagrees_with_the_stored_trials_is_refused_naming_the_key(tmp_path, changes, message):
    st = enqueued(load_study(write_study(tmp_path / "s.yaml")))
    seeds = changes.pop("seeds", None)
    edited = load_study(write_study(tmp_path / "s.yaml", changes, **({"seeds": seeds} if seeds else {})))
    with pytest.raises(StudyError) as e:
        check_study_file(edited, st.trials, "s.yaml")
    assert str(e.value).startswith(message) and "rename the study" in str(e.value)
    assert "\n" not in str(e.value)


def test_execution_settings_and_new_jobs_are_accepted(tmp_path):
    st = enqueued(load_study(write_study(tmp_path / "s.yaml")))
    moved = {"base.train.device": "cuda", "base.train.amp": True, "base.train.num_threads": 8,
             "base.segment.channels_last": True, "base.pseudo.workers": 1}  # fmt: skip
    check_study_file(load_study(write_study(tmp_path / "gpu.yaml", moved)), st.trials, "gpu.yaml")
    check_study_file(load_study(write_study(tmp_path / "more.yaml", seeds=[0, 1])), st.trials, "more.yaml")


def test_a_waiting_trial_is_claimed_once(tmp_path):
    storage = open_storage(f"journal:{tmp_path}/j.journal")
    study = load_study(write_study(tmp_path / "s.yaml"))
    st = enqueued(study, storage)
    other = optuna.load_study(study_name=study.name, storage=open_storage(f"journal:{tmp_path}/j.journal"))
    a, b = claim_waiting_trial(st, storage), claim_waiting_trial(other, other._storage)
    assert {a.number, b.number} == {0, 1}
    assert claim_waiting_trial(st, storage) is None and claim_waiting_trial(other, other._storage) is None
    assert [t.state.name for t in st.get_trials()] == ["RUNNING", "RUNNING"]


def _checkpoint(path, meta):
    state = {"model": {"w": torch.zeros(2)}, "optimizer": {}, "scheduler": {}, "generator": torch.zeros(3, dtype=torch.uint8),
             "torch_rng": torch.zeros(3, dtype=torch.uint8), "history_keys": ["loss"], "history": torch.zeros(2, 1),
             "meta": meta}  # fmt: skip
    checkpoint.save(state, path)


@pytest.mark.parametrize("content", [os.urandom(4096), b""], ids=["random-bytes", "zero-bytes"])
def test_an_unreadable_checkpoint_is_moved_aside_and_named(tmp_path, capsys, content):
    ckpt = tmp_path / "abc.ckpt"
    ckpt.write_bytes(content)
    state, reason = usable_checkpoint(ckpt, "h")
    assert state is None and str(ckpt) in reason and not ckpt.exists()
    aside = list(tmp_path.glob("abc.ckpt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content
    err = capsys.readouterr().err
    assert err.startswith(f"bench: warning: unreadable checkpoint {ckpt}: ") and err.count("\n") == 1
    assert ("an empty file" if not content else "not a checkpoint (") in err and "weights_only" not in err


def test_checkpoint_with_missing_keys_or_another_configuration_is_not_resumed(tmp_path, capsys):
    ckpt = tmp_path / "a.ckpt"
    checkpoint.save({"model": {}}, ckpt)
    state, reason = usable_checkpoint(ckpt, "h")
    assert state is None and "missing optimizer, scheduler" in reason and list(tmp_path.glob("a.ckpt.corrupt-*"))
    _checkpoint(ckpt, {"config_hash": "old"})
    state, reason = usable_checkpoint(ckpt, "new")
    assert state is None and "made with configuration old, not new" in reason and list(tmp_path.glob("a.ckpt.stale-*"))
    _checkpoint(ckpt, {"config_hash": "new"})
    state, reason = usable_checkpoint(ckpt, "new")
    assert reason is None and len(state.history) == 2 and ckpt.exists()
    assert usable_checkpoint(tmp_path / "none.ckpt", "new") == (None, None)


def test_tracker_opens_one_parent_run_and_tags_the_experiment_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first, second = Tracker(uri, "s"), Tracker(uri, "s")
    assert first.open() == second.open()
    exp = first.client.get_experiment(first.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == EXPERIMENT_KIND["mlflow.experimentKind"]
    assert (tmp_path / "mlflow.db.lock").exists()
    assert first.runs_url("http://127.0.0.1:5000/") == f"http://127.0.0.1:5000/#/experiments/{first.experiment_id}/runs"
    first.client.delete_experiment_tag(first.experiment_id, "mlflow.experimentKind")  # an older experiment
    assert Tracker(uri, "s").experiment_id == first.experiment_id
    assert first.client.get_experiment(first.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


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
from bench.tracking import quiet_mlflow_logs
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


@pytest.mark.slow
def test_bench_ui_prints_the_runs_url_of_the_study(tmp_path):
    import socket
    import subprocess
    import sys

    study = write_study(tmp_path / "s.yaml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "ui", str(study), "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    exp = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "smoke").client.get_experiment_by_name("smoke")
    assert line.strip().endswith(f": http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs"), line
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.fixture(scope="module")
def lifecycle_ctx(tmp_path_factory):
    """A TrialContext on a real SQLite MLflow store and an in-memory Optuna study (no training)."""
    from bench.trial import TrialContext

    d = tmp_path_factory.mktemp("life")
    study = load_study(write_study(d / "s.yaml", seeds=[0, 1, 2, 3]))
    st = enqueued(study)
    tracker = Tracker(f"sqlite:///{d}/mlflow.db", study.name)
    return TrialContext(study, st, tracker, tracker.open(), d / ".bench")


def _claim(ctx):
    trial = claim_waiting_trial(ctx.optuna_study, ctx.optuna_study._storage)
    from bench.trial import trial_spec

    return trial, trial_spec(ctx, trial)


def test_lifecycle_completes_and_the_run_carries_config_hash_and_grid(lifecycle_ctx):
    from bench.trial import TrialLifecycle

    trial, spec = _claim(lifecycle_ctx)
    assert spec.cfg == stored_config(trial) and spec.config_hash == trial.user_attrs["config_hash"]
    with TrialLifecycle(lifecycle_ctx, trial, spec) as life:
        life.value = 0.5
    run = lifecycle_ctx.tracker.client.get_run(life.run_id)
    assert life.state.name == "COMPLETE" and run.info.status == "FINISHED"
    assert run.data.tags["bench.config_hash"] == spec.config_hash and run.data.params["train.lr"] == "0.002"
    assert lifecycle_ctx.optuna_study.trials[trial.number].value == 0.5


def test_lifecycle_loses_the_race_with_a_dead_trial_sweep_without_raising(lifecycle_ctx):
    from bench.trial import TrialLifecycle

    trial, spec = _claim(lifecycle_ctx)
    with TrialLifecycle(lifecycle_ctx, trial, spec) as life:
        trial.study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)  # the sweep
        life.value = 0.5
    assert life.state.name == "FAIL"
    run = lifecycle_ctx.tracker.client.get_run(life.run_id)
    assert run.info.status == "FAILED" and "closed by another process" in run.data.tags["bench.error"]


def test_lifecycle_fails_a_trial_that_raises_and_reraises_a_store_failure(lifecycle_ctx):
    from bench.trial import TrialLifecycle

    trial, spec = _claim(lifecycle_ctx)
    with TrialLifecycle(lifecycle_ctx, trial, spec) as life:
        raise ValueError("boom")
    run = lifecycle_ctx.tracker.client.get_run(life.run_id)
    assert life.state.name == "FAIL" and run.info.status == "FAILED" and run.data.tags["bench.error"] == "ValueError: boom"
    trial, spec = _claim(lifecycle_ctx)
    with pytest.raises(TrackingStoreError) as e:
        with TrialLifecycle(lifecycle_ctx, trial, spec):
            raise TrackingStoreError("sqlite:///x", "OperationalError: disk I/O error")
    assert e.value.trial == trial.number and lifecycle_ctx.optuna_study.trials[trial.number].state.name == "FAIL"


def test_search_trials_store_their_sampled_configuration_and_are_checked(tmp_path):
    from bench.runner import make_sampler
    from bench.trial import TrialContext, trial_spec

    search = {"variant": "tkp-pcl", "sampler": "random", "n_trials": 3, "seed": 1,
              "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}  # fmt: skip
    study = load_study(write_study(tmp_path / "s.yaml", search=search))
    st = optuna.create_study(study_name=study.name, sampler=make_sampler(study))
    trial = st.ask()
    spec = trial_spec(TrialContext(study, st, None, "", tmp_path), trial)
    assert stored_config(trial).train.lr == trial.params["train.lr"] == spec.cfg.train.lr
    check_study_file(study, st.trials, "s.yaml")
    edited = load_study(write_study(tmp_path / "e.yaml", {"base.train.epochs": 5}, search=search))
    with pytest.raises(StudyError, match=r"^e.yaml: base.train.epochs: 5 here, 2 in the study's trial 0"):
        check_study_file(edited, st.trials, "e.yaml")
    other = {**search, "space": {"pooling.k_ratio": {"type": "float", "low": 0.05, "high": 0.5}}}
    with pytest.raises(StudyError, match=r"^o.yaml: search.space: the study's trial 0 searched train.lr"):
        check_study_file(load_study(write_study(tmp_path / "o.yaml", search=other)), st.trials, "o.yaml")


def test_trials_of_an_older_version_are_checked_by_their_hash(tmp_path):
    from bench.integrity import legacy_config_hash

    study = load_study(write_study(tmp_path / "s.yaml"))
    st = optuna.create_study(study_name=study.name)
    for job in study_jobs(study):  # as enqueued before configurations were stored
        st.enqueue_trial(params={}, user_attrs={"job_key": job.key, "variant": job.variant, "seed": job.seed,
                                                "config_hash": legacy_config_hash(job.config)})  # fmt: skip
    check_study_file(study, st.trials, "s.yaml")
    with pytest.raises(StudyError, match=r"^e.yaml: variants.vit-pcm: configuration differs from the study's trial 0"):
        check_study_file(load_study(write_study(tmp_path / "e.yaml", {"base.train.lr": 0.5})), st.trials, "e.yaml")
