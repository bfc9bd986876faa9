"""A study file against the configurations its stored trials were made with."""

from __future__ import annotations

import optuna
import pytest
from helpers import enqueued, write_study

from bench.study import StudyError, check_study_file, load_study, stored_config


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"variants.tkp-pcl": {"train.lr": 0.02}},
            "s.yaml: variants.tkp-pcl.train.lr: 0.02 here, 0.002 in the study's trial 1",
        ),
        ({"base.train.lr": 0.02}, "s.yaml: base.train.lr: 0.02 here, 0.002 in the study's trial 0"),
        ({"base.pooling.kind": "max"}, "s.yaml: base.pooling.kind: 'max' here, 'topk' in the study's trial 1"),
        (
            {"variants": {"vit-pcm": {"pooling.kind": "max", "loss.pce_weight": 0.0}, "tkp": {}}},
            "s.yaml: variants.tkp-pcl: the study's trial 1 ran job 'tkp-pcl|seed=0', which this file does not define",
        ),
        ({"seeds": [1]}, "s.yaml: grid: the study's trial 0 ran job 'vit-pcm|seed=0'"),
        ({"data.n_train": 200}, "s.yaml: data.n_train: 200 here, 96 in the study's trial 0"),
    ],
)
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
    moved = {
        "base.train.device": "cuda",
        "base.train.amp": True,
        "base.train.num_threads": 8,
        "base.segment.channels_last": True,
        "base.pseudo.workers": 1,
    }
    check_study_file(load_study(write_study(tmp_path / "gpu.yaml", moved)), st.trials, "gpu.yaml")
    check_study_file(load_study(write_study(tmp_path / "more.yaml", seeds=[0, 1])), st.trials, "more.yaml")


def test_search_trials_store_their_sampled_configuration_and_are_checked(tmp_path):
    from bench.run.pipeline import TrialContext
    from bench.run.startup import make_sampler
    from bench.run.trial import claimed_job

    search = {
        "variant": "tkp-pcl",
        "sampler": "random",
        "n_trials": 3,
        "seed": 1,
        "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    }
    study = load_study(write_study(tmp_path / "s.yaml", search=search))
    st = optuna.create_study(study_name=study.name, sampler=make_sampler(study))
    trial = st.ask()
    spec = claimed_job(TrialContext(study, st, None, "", tmp_path, splits=None), trial)
    assert stored_config(trial).train.lr == trial.params["train.lr"] == spec.config.train.lr
    check_study_file(study, st.trials, "s.yaml")
    edited = load_study(write_study(tmp_path / "e.yaml", {"base.train.epochs": 5}, search=search))
    with pytest.raises(StudyError, match=r"^e.yaml: base.train.epochs: 5 here, 2 in the study's trial 0"):
        check_study_file(edited, st.trials, "e.yaml")
    other = {**search, "space": {"pooling.k_ratio": {"type": "float", "low": 0.05, "high": 0.5}}}
    with pytest.raises(StudyError, match=r"^o.yaml: search.space: the study's trial 0 searched train.lr"):
        check_study_file(load_study(write_study(tmp_path / "o.yaml", search=other)), st.trials, "o.yaml")
