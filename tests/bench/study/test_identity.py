"""A configuration's identity: its hash leaves out the execution settings; what a worker runs."""

from __future__ import annotations

from helpers import enqueued, write_study

from bench.study import config_hash, first_difference, load_study, stored_config, study_jobs
from tkp_pcl.config import EXECUTION_KEYS, MethodConfig, with_execution


def test_hash_ignores_execution_settings_but_not_the_method():
    cfg = MethodConfig()
    fast = MethodConfig.model_validate(
        {
            "train": {"device": "cuda", "amp": True, "compile": True, "num_threads": 3},
            "segment": {"amp": True, "channels_last": True, "compile": True},
            "pseudo": {"workers": 7},
        }
    )
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
