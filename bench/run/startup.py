"""The one startup sequence of every process that runs trials: ``bench run``, ``bench worker``
and rank 0 of a torchrun (DDP) group.

:func:`start`: load the study's data and build its tune split (bad data is refused before
anything is written or claimed), load each ``model.pretrained_file``, open the Optuna study and
the MLflow experiment, check the study file against every stored trial, create (or find) the
study's parent run and log the tune/report image ids on it. The study file itself is read and
validated before, with light imports only (:func:`bench.study.load_study`).
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from tkp_pcl.data import Splits, load_splits
from tkp_pcl.model import check_pretrained_file

from ..stores import Tracker, open_storage
from ..study import Study, StudyError, check_study_file, search_variant, study_jobs, variant_config
from .splits import TuneSplits, tune_splits
from .trial import objective_metric


@dataclass
class StudyHandle:
    """An opened study: its file, its Optuna study and storage, its MLflow side, and the data
    this process loaded and checked (its trials reuse them)."""

    study: Study
    path: str  # the study file, as errors name it
    storage_url: str
    storage: optuna.storages.BaseStorage
    optuna_study: optuna.Study
    tracker: Tracker
    workdir: Path
    splits: Splits
    tune: TuneSplits | None = None

    def trials(self, states=None) -> list[optuna.trial.FrozenTrial]:
        return self.optuna_study.get_trials(deepcopy=False, states=states)


def make_sampler(study: Study) -> optuna.samplers.BaseSampler:
    """The study's sampler (``search.seed`` seeds it); grid studies never ask one."""
    s = study.search
    if s is None:
        return optuna.samplers.RandomSampler(seed=0)
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(
            seed=s.seed, constant_liar=True, n_startup_trials=min(10, max(2, s.n_trials // 3))
        )
    if s.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=s.seed)
    return optuna.samplers.RandomSampler(seed=s.seed)


def make_pruner(study: Study) -> optuna.pruners.BasePruner:
    s = study.search
    if s is None or s.pruner == "none":
        return optuna.pruners.NopPruner()
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_warmup_epochs)


def load_data(study: Study, path: str) -> tuple[Splits, TuneSplits | None]:
    """The study's splits and its tune / report splits (None without ``search.tune``). A missing
    data set, or tune images among the reported ones, is a :class:`StudyError` naming ``path``."""
    try:
        splits = load_splits(study.data)
        return splits, tune_splits(study, splits)
    except StudyError as e:
        raise StudyError(f"{path}: {e}") from None


def check_weights(study: Study) -> None:
    """Build each distinct backbone that has a ``model.pretrained_file`` once and load the file;
    raises :class:`tkp_pcl.model.WeightsError` (one line: the path and the first bad key)."""
    configs = [j.config for j in study_jobs(study)] or [variant_config(study, search_variant(study))]
    for model_cfg in {c.model.model_dump_json(): c.model for c in configs}.values():
        check_pretrained_file(model_cfg)


def open_study(study: Study, path: str, storage_url: str, tracking_uri: str, data, create: bool) -> StudyHandle:
    """The study's handle; without ``create``, a study missing from the storage is a KeyError."""
    storage = open_storage(storage_url)
    kw = dict(study_name=study.name, storage=storage, sampler=make_sampler(study), pruner=make_pruner(study))
    if create:
        direction = study.search.direction if study.search else "maximize"
        ostudy = optuna.create_study(direction=direction, load_if_exists=True, **kw)
        if ostudy.metric_names != [objective_metric(study)]:  # optuna-dashboard names the objective
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ostudy.set_metric_names([objective_metric(study)])
    else:
        ostudy = optuna.load_study(**kw)
    tracker = Tracker(tracking_uri, study.name, study.description)
    return StudyHandle(study, path, storage_url, storage, ostudy, tracker, Path(".bench") / study.name, *data)


def start(study: Study, path: str, storage_url: str, tracking_uri: str, create: bool) -> StudyHandle:
    """The startup sequence (module docstring); returns the opened study, its parent run open."""
    data = load_data(study, path)
    check_weights(study)
    h = open_study(study, path, storage_url, tracking_uri, data, create)
    check_study_file(study, h.trials(), path)  # a file that disagrees with the stored trials: nothing written
    parent = h.tracker.open()
    if h.tune is not None:
        with tempfile.TemporaryDirectory() as tmp:
            for ids_file in h.tune.write_ids(Path(tmp)):
                h.tracker.log_artifact(parent, ids_file)
    return h
