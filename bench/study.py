"""Study files: schema, validation with YAML-path errors, and the list of jobs they define.

A job is one (variant x grid point x seed); its configuration is ``base`` deep-merged with the
variant's overrides and the grid point (dotted paths such as ``pooling.k_ratio``), validated as
a :class:`tkp_pcl.config.MethodConfig`.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tkp_pcl.config import EXECUTION_KEYS, DataConfig, MethodConfig

from .urls import check_mlflow_uri, check_optuna_storage
from .yaml_file import YamlFileError, read_yaml


DATA_KINDS = ("synthetic", "voc", "coco")


def _unique_seeds(v: list[int] | None) -> list[int] | None:
    """The field validator of every ``seeds`` list (the study's, ``search.seeds``, ``confirm.seeds``)."""
    if v is not None and len(set(v)) != len(v):
        raise ValueError("seeds must be unique")
    return v


class StudyError(ValueError):
    """A study file is unreadable or invalid; the message is one line naming the YAML path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _RangeParam(_Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _order(self) -> "_RangeParam":
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


# --- Search protocol (issue 12): the tune split and the confirmation stage ----------------------


class TuneConfig(_Strict):
    """Images whose masks a search may score (objective and pruning monitor); the report never
    scores them. Exactly one key: ``fraction`` or ``count`` of the pseudo-label split chosen by
    ``search.seed`` (file data sets), ``count`` images of a separate synthetic stream, or a
    named ``split`` of the data set (VOC)."""

    fraction: float | None = Field(None, gt=0, lt=1)
    count: int | None = Field(None, ge=1)
    split: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> "TuneConfig":
        given = [k for k in ("fraction", "count", "split") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of fraction, count, split (got {', '.join(given) or 'none'})")
        return self


class ConfirmConfig(_Strict):
    """After the search: the ``top_n`` best configurations and the ``baseline`` variant, each
    trained with every one of ``seeds`` and scored on the report split like grid jobs."""

    top_n: int = Field(1, ge=1)
    seeds: list[int] = Field(min_length=2)
    _seeds_unique = field_validator("seeds")(_unique_seeds)
    baseline: str


def _check_protocol(study: "Study") -> None:
    """Cross-field rules of ``search.tune``, ``search.seeds`` and ``confirm``."""
    s, c = study.search, study.confirm
    if c is not None:
        if s is None:
            raise StudyError("confirm: needs a search: block (it confirms the search's best configurations)")
        if s.tune is None:
            raise StudyError("confirm: needs search.tune (the images the search scores, kept out of the report)")
        if c.baseline not in study.variants:
            raise StudyError(f"confirm.baseline: {c.baseline!r} is not a variant; variants: {', '.join(study.variants)}")
        clash = [f"{search_variant(study)}-top{r}" for r in range(1, c.top_n + 1)]
        clash = [label for label in clash if label in study.variants]
        if clash:
            raise StudyError(f"variants.{clash[0]}: the name is taken by a confirmed configuration of confirm.top_n; rename it")
    t = s.tune if s is not None else None
    if t is None:
        return
    kind = study.data.kind
    if kind == "synthetic" and t.count is None:
        key = "fraction" if t.fraction is not None else "split"
        raise StudyError(f"search.tune.{key}: synthetic data draws its tune images from their own stream; give count")
    if t.split is not None and kind != "voc":
        raise StudyError(f"search.tune.split: a named split needs file data (voc), not {kind}")


# --- end of the search protocol block ----------------------------------------------------------


class SearchConfig(_Strict):
    """An Optuna search over dotted paths of the method configuration of one variant."""

    variant: str | None = None
    sampler: Literal["tpe", "random", "cmaes"] = "tpe"
    n_trials: int = Field(20, ge=1)
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_warmup_epochs: int = Field(1, ge=0)
    pruner_startup_trials: int = Field(3, ge=0)
    metric: str = "pseudo_miou"
    direction: Literal["maximize", "minimize"] = "maximize"
    seed: int = 0
    space: dict[str, SearchParam] = Field(min_length=1)
    # honest search (issue 12), see the "Search protocol" block above. ``tune``: the images the
    # search scores (None: the report's own images, optimistic); ``seeds``: training seeds of
    # every sampled configuration, objective = their mean (default: ``[seed]``)
    tune: TuneConfig | None = None
    seeds: list[int] | None = Field(None, min_length=1)
    _seeds_unique = field_validator("seeds")(_unique_seeds)

    @model_validator(mode="after")
    def _default_seeds(self) -> "SearchConfig":
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


class Study(_Strict):
    name: str
    description: str = ""
    data: DataConfig
    base: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    _seeds_unique = field_validator("seeds")(_unique_seeds)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    search: SearchConfig | None = None
    confirm: ConfirmConfig | None = None
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

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
                raise ValueError(f"variant name {name!r} must be letters, digits, '_', '-' or '.'")
        return v


@dataclass(frozen=True)
class Job:
    """One trial to run: a variant, a grid point and a seed, with its resolved configuration."""

    key: str
    variant: str
    seed: int
    grid_point: tuple[tuple[str, Any], ...]
    config: MethodConfig

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)


def scientific_values(cfg: MethodConfig | dict[str, Any]) -> dict[str, Any]:
    """A configuration (model or its JSON dump) as dotted keys, in field order, without the
    execution settings (:data:`tkp_pcl.config.EXECUTION_KEYS`): what a trial computes."""
    raw = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    return {k: v for k, v in flatten(raw).items() if k not in EXECUTION_KEYS}


def config_hash(cfg: MethodConfig | dict[str, Any]) -> str:
    """The identity of a configuration: a hash of its scientific values (execution settings such
    as ``train.device`` left out, so a study can move from one machine to another)."""
    blob = json.dumps(scientific_values(cfg), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def first_difference(here: MethodConfig | dict, stored: MethodConfig | dict) -> tuple[str, Any, Any] | None:
    """The first scientific key (in field order) whose value differs: (key, here, stored)."""
    a, b = scientific_values(here), scientific_values(stored)
    for k in [*a, *(k for k in b if k not in a)]:
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            return k, a.get(k, "<absent>"), b.get(k, "<absent>")
    return None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``d["a"]["b"] = value`` for ``dotted = "a.b"``, creating levels as needed."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise StudyError(f"{dotted}: {p!r} is a value, not a section")
        d = nxt
    d[leaf] = value


def merge(base: dict[str, Any], overrides: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Deep-merge ``overrides`` (nested and/or dotted keys) into a copy of ``base``; a conflict
    (a dotted key through a value) is a :class:`StudyError` under the YAML path ``where``."""
    out = copy.deepcopy(base)
    for k, v in flatten(overrides).items():
        try:
            set_dotted(out, k, copy.deepcopy(v))
        except StudyError as e:
            raise StudyError(f"{where}.{e}" if where else str(e)) from None
    return out


def _allowed_at(loc: tuple) -> list[str]:
    """Field names allowed at a location of MethodConfig (for 'unknown key' messages)."""
    model: Any = MethodConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return sorted(getattr(model, "model_fields", {}))


def format_error(err: dict[str, Any], prefix: str) -> str:
    """One pydantic error -> ``prefix.loc: message`` (one line)."""
    loc = tuple(p for p in err["loc"] if not str(p).startswith(("function-after", "tagged-union")))
    if len(loc) > 1 and loc[0] == "data" and loc[1] in DATA_KINDS:  # the union's tag, not a key
        loc = (loc[0], *loc[2:])
    path = ".".join(str(p) for p in (prefix, *loc) if p != "")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_at(loc) if prefix != "" else []
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"{path}: unknown key{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    return f"{path}: {msg}"


def validate_method(raw: dict[str, Any], where: str) -> MethodConfig:
    try:
        return MethodConfig.model_validate(raw)
    except ValidationError as e:
        raise StudyError(format_error(e.errors()[0], where)) from None


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
        key = "data.seg_train_split" + ("" if data.seg_train_split else f" (= data.train_split {name!r})")
        raise StudyError(
            f"{key}: {len(common)} images also in data.val_split {data.val_split!r} (e.g. {common[0]}); "
            "stage 2 must not train on the images it is scored on: set data.seg_train_split to another split"
        )


def _stage2_enabled(study: Study) -> bool:
    if study.search is not None:
        return variant_config(study, search_variant(study)).segment.enabled
    return any(job.config.segment.enabled for job in study_jobs(study))


def variant_config(study: Study, variant: str) -> MethodConfig:
    validate_method(study.base, "base")
    where = f"variants.{variant}"
    return validate_method(merge(study.base, study.variants[variant], where), where)


def study_jobs(study: Study) -> list[Job]:
    """Every (variant x grid point x seed) of a study without a search, in a stable order."""
    if study.search is not None:
        return []
    axes = list(study.grid.items())
    for k, values in axes:
        if not values:
            raise StudyError(f"grid.{k}: needs at least one value")
    jobs = []
    for variant in study.variants:
        variant_config(study, variant)
        base = merge(study.base, study.variants[variant])
        for point in itertools.product(*(v for _, v in axes)):
            gp = tuple(zip((k for k, _ in axes), point))
            raw = merge(base, dict(gp), "grid")
            cfg = validate_method(raw, "grid" if gp else f"variants.{variant}")
            for seed in study.seeds:
                c = cfg.model_copy(deep=True)
                c.train.seed = seed
                key = "|".join([variant, *(f"{k}={v}" for k, v in gp), f"seed={seed}"])
                jobs.append(Job(key, variant, seed, gp, c))
    return jobs


def _check_search(study: Study) -> None:
    s = study.search
    if s is None:
        return
    variant = s.variant or next(iter(study.variants))
    if variant not in study.variants:
        raise StudyError(f"search.variant: {variant!r} is not a variant; variants: {', '.join(study.variants)}")
    variant_config(study, variant)
    base = merge(study.base, study.variants[variant])
    for path, spec in s.space.items():
        probe = spec.choices[0] if isinstance(spec, CategoricalParam) else spec.low
        validate_method(merge(base, {path: probe}, "search.space"), "search.space")
        if path not in flatten(MethodConfig().model_dump()):
            raise StudyError(f"search.space.{path}: not a configuration value")


def search_variant(study: Study) -> str:
    assert study.search is not None
    return study.search.variant or next(iter(study.variants))


def job_config_for_search(study: Study, params: dict[str, Any]) -> MethodConfig:
    """The configuration of a search trial: the searched variant with the sampled values."""
    variant = search_variant(study)
    cfg = validate_method(merge(merge(study.base, study.variants[variant]), params, "search.space"), "search.space")
    cfg.train.seed = study.search.seeds[0]  # its first training seed (search.seeds defaults to [search.seed])
    return cfg
