"""Study files: the schema, and reading and validating a file with YAML-path errors.

A study names its data, a ``base`` method configuration, the ``variants`` to compare, the
``seeds``, an optional ``grid`` of ablation axes, an optional Optuna ``search`` (with its
``tune`` split and training ``seeds``) and its ``confirm`` stage, and where results go. Its
jobs are :mod:`bench.study.jobs`; how a variant resolves is :mod:`bench.study.resolve`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from tkp_pcl.config import DataConfig, MethodConfig, Seed

from .errors import StudyError
from .jobs import study_jobs
from .resolve import flatten, format_error, merge, quote, search_variant, validate_method, variant_config
from .urls import check_mlflow_uri, check_optuna_storage
from .yaml_file import YamlFileError, read_yaml


def _unique_seeds(v: list[int] | None) -> list[int] | None:
    """The field validator of every ``seeds`` list (the study's, ``search.seeds``, ``confirm.seeds``)."""
    if v is not None and len(set(v)) != len(v):
        raise ValueError("seeds must be unique")
    return v


class _Strict(BaseModel):
    """Unknown keys are errors, and so are ``inf`` and ``nan`` (stored as JSON, they would not read back)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _RangeParam(_Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _order(self) -> _RangeParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        return self


class FloatParam(_RangeParam):
    type: Literal["float"]


class IntParam(_RangeParam):
    type: Literal["int"]
    low: int
    high: int


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


SearchParam = FloatParam | IntParam | CategoricalParam


class TuneConfig(_Strict):
    """Images whose masks a search may score (objective and pruning monitor); the report never
    scores them. Exactly one key: ``fraction`` or ``count`` of the pseudo-label split chosen by
    ``search.seed`` (file data sets), ``count`` images of a separate synthetic stream, or a
    named ``split`` of the data set (VOC)."""

    fraction: float | None = Field(None, gt=0, lt=1)
    count: int | None = Field(None, ge=1)
    split: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> TuneConfig:
        given = [k for k in ("fraction", "count", "split") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of fraction, count, split (got {', '.join(given) or 'none'})")
        return self


class ConfirmConfig(_Strict):
    """After the search: the ``top_n`` best configurations and the ``baseline`` variant, each
    trained with every one of ``seeds`` and scored on the report split like grid jobs."""

    top_n: int = Field(1, ge=1)
    seeds: list[Seed] = Field(min_length=2)
    _seeds_unique = field_validator("seeds")(_unique_seeds)
    baseline: str


def _check_protocol(study: Study) -> None:
    """Cross-field rules of ``search.tune``, ``search.seeds`` and ``confirm``."""
    s, c = study.search, study.confirm
    if c is not None:
        if s is None:
            raise StudyError("confirm: needs a search: block (it confirms the search's best configurations)")
        if s.tune is None:
            raise StudyError("confirm: needs search.tune (the images the search scores, kept out of the report)")
        if c.baseline not in study.variants:
            raise StudyError(
                f"confirm.baseline: {quote(c.baseline)} is not a variant; variants: {', '.join(study.variants)}"
            )
        clash = [f"{search_variant(study)}-top{r}" for r in range(1, c.top_n + 1)]
        clash = [label for label in clash if label in study.variants]
        if clash:
            raise StudyError(
                f"variants.{clash[0]}: the name is taken by a confirmed configuration of confirm.top_n; rename it"
            )
    t = s.tune if s is not None else None
    if t is None:
        return
    kind = study.data.kind
    if kind == "synthetic" and t.count is None:
        key = "fraction" if t.fraction is not None else "split"
        raise StudyError(f"search.tune.{key}: synthetic data draws its tune images from their own stream; give count")
    if t.split is not None and kind != "voc":
        raise StudyError(f"search.tune.split: a named split needs file data (voc), not {kind}")


class SearchConfig(_Strict):
    """An Optuna search over dotted paths of the method configuration of one variant."""

    variant: str | None = None
    sampler: Literal["tpe", "random", "cmaes"] = "tpe"
    n_trials: int = Field(20, ge=1)
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_warmup_epochs: int = Field(1, ge=0)
    """Median pruner only: epochs of a trial before it may be pruned."""
    pruner_startup_trials: int = Field(3, ge=0)
    """Median pruner only: trials that finish before any is pruned."""
    metric: str = "pseudo_miou"
    direction: Literal["maximize", "minimize"] = "maximize"
    seed: Seed = 0
    """Three uses, each explicit: the sampler's seed; which images form the tune split when
    ``tune`` takes a ``count`` or ``fraction`` of a file data set; and the default of ``seeds``."""
    space: dict[str, SearchParam] = Field(min_length=1)
    tune: TuneConfig | None = None
    """The images the search scores; None: the report's own images (an optimistic search)."""
    seeds: list[Seed] | None = Field(None, min_length=1)
    """Training seeds of every sampled configuration; the objective is their mean (default ``[seed]``)."""
    _seeds_unique = field_validator("seeds")(_unique_seeds)

    @model_validator(mode="after")
    def _default_seeds(self) -> SearchConfig:
        if self.seeds is None:
            self.seeds = [self.seed]
        return self


class TrackingConfig(_Strict):
    """Where results go. Empty means the embedded defaults in the working directory."""

    mlflow_uri: str | None = None
    optuna_storage: str | None = None

    @field_validator("mlflow_uri")
    @classmethod
    def _mlflow_uri(cls, v: str | None) -> str | None:
        if v is not None:
            check_mlflow_uri(v)
        return v

    @field_validator("optuna_storage")
    @classmethod
    def _optuna_storage(cls, v: str | None) -> str | None:
        if v is not None:
            check_optuna_storage(v)
        return v


SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


class ClusterConfig(_Strict):
    """Where ``bench submit`` runs the study's workers (Slurm settings; its flags win). Execution
    settings: outside every configuration's identity, so changing them never re-runs a trial."""

    partition: str | None = None
    time: str | None = None  # a worker's time limit: MINUTES, HH:MM:SS or D-HH:MM:SS
    mem: str | None = None  # per worker, as sbatch --mem (16G)
    cpus_per_worker: int | None = Field(None, ge=1)
    gpus_per_worker: int | None = Field(None, ge=0)  # > 1: that many data-parallel ranks, one Slurm task each
    signal_delay: int | None = Field(None, ge=10)  # seconds before the time limit of the pre-timeout signal
    slurm: dict[str, str | int] = Field(default_factory=dict)  # more sbatch options: {qos: high, account: lab}

    @field_validator("time")
    @classmethod
    def _time(cls, v: str | None) -> str | None:
        if v is not None and not SLURM_TIME.match(v):
            raise ValueError("a Slurm time limit: MINUTES, HH:MM:SS or D-HH:MM:SS")
        return v


class Study(_Strict):
    """A study file. ``description`` becomes the MLflow experiment's description."""

    name: str
    description: str = ""
    data: DataConfig
    base: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    _seeds_unique = field_validator("seeds")(_unique_seeds)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    search: SearchConfig | None = None
    confirm: ConfirmConfig | None = None
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    _jobs: list | None = PrivateAttr(None)  # its grid jobs, computed once (bench.study.jobs.study_jobs)

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v):
            raise ValueError("must be letters, digits, '_', '-' or '.' (a file and experiment name)")
        return v

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ValueError(f"variant name {quote(name)} must be letters, digits, '_', '-' or '.'")
        return v


def load_study(path: str | Path) -> Study:
    """Read and validate a study file (UTF-8, safe YAML, no duplicate keys). Raises
    :class:`StudyError` with one line ``FILE: YAML.PATH: what is wrong``. Needs pydantic and
    PyYAML only: nothing heavy is imported, so a bad file fails fast."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: study file not found")
    try:
        raw = read_yaml(path)
    except YamlFileError as e:
        raise StudyError(str(e)) from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: a study file must be a mapping of keys (name, data, base, variants, ...)")
    try:
        study = Study.model_validate(raw)
    except ValidationError as e:
        raise StudyError(f"{path}: {format_error(e.errors()[0], '')}") from None
    try:
        study_jobs(study)  # every variant, grid point and search space resolves
        _check_search(study)
        _check_protocol(study)
        check_stage2_overlap(study)
    except StudyError as e:
        raise StudyError(f"{path}: {e}") from None
    return study


def check_stage2_overlap(study: Study) -> None:
    """Refuse a study whose stage-2 training images (``data.seg_train_split``) include images
    its segmentation is scored on (``data.val_split``), by id. Skipped while the data set is
    missing: loading it for the run is then the error."""
    from tkp_pcl.data import DataError, seg_train_split_name, split_ids

    data = study.data
    if data.kind == "synthetic" or not _stage2_enabled(study):
        return
    name = seg_train_split_name(data)
    try:
        train, val = split_ids(data, name), split_ids(data, data.val_split)
    except DataError:
        return
    common = sorted(set(train) & set(val))
    if common:
        key = "data.seg_train_split" + ("" if data.seg_train_split else f" (= data.train_split {quote(name)})")
        raise StudyError(
            f"{key}: {len(common)} images also in data.val_split {quote(data.val_split)} (e.g. {common[0]}); "
            "stage 2 must not train on the images it is scored on: set data.seg_train_split to another split"
        )


def _stage2_enabled(study: Study) -> bool:
    if study.search is not None:
        return variant_config(study, search_variant(study)).segment.enabled
    return any(job.config.segment.enabled for job in study_jobs(study))


def _check_search(study: Study) -> None:
    s = study.search
    if s is None:
        return
    if s.pruner != "median":
        for key in ("pruner_warmup_epochs", "pruner_startup_trials"):
            if key in s.model_fields_set:
                raise StudyError(f"search.{key}: read by the median pruner only, not by pruner {s.pruner!r}; remove it")
    variant = s.variant or next(iter(study.variants))
    if variant not in study.variants:
        raise StudyError(f"search.variant: {quote(variant)} is not a variant; variants: {', '.join(study.variants)}")
    variant_config(study, variant)
    base = merge(study.base, study.variants[variant])
    for path, spec in s.space.items():
        probes = spec.choices if isinstance(spec, CategoricalParam) else [spec.low, spec.high]
        for probe in probes:  # every value the sampler may return is a valid configuration at its ends
            validate_method(merge(base, {path: probe}, "search.space"), "search.space")
        if path not in flatten(MethodConfig().model_dump()):
            raise StudyError(f"search.space.{path}: not a configuration value")


def check_data_root(path: str, study: Study) -> None:
    """A data set under a ``root`` folder that does not exist: an error naming ``data.root``."""
    root = getattr(study.data, "root", None)
    if root is None or Path(root).expanduser().is_dir():
        return
    import importlib

    try:  # the loader's download hint (imports the data modules: only on this error path)
        hint = "; " + importlib.import_module(f"tkp_pcl.data.{study.data.kind}").DOWNLOAD_HINT
    except (ImportError, AttributeError):
        hint = ""
    raise StudyError(f"{path}: data.root: {study.data.kind.upper()} root {root} does not exist{hint}")
