"""The jobs of a study: one type for every trial a study runs.

- grid jobs: every variant x grid point x seed of a study without a search (:func:`study_jobs`);
- search jobs: one per sampled configuration (:func:`search_job`), trained once per ``search.seeds``;
- confirmation jobs: after the search, the ``confirm.top_n`` best configurations and the
  baseline, once per confirmation seed (:func:`confirmation_jobs`).

A job's key is its identity in the study's records (the Optuna attribute ``job_key``), so each
is run exactly once; its configuration is fully resolved.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tkp_pcl.config import MethodConfig

from ..records import CONFIRM_KEY_PREFIX, SEARCH_KEY_PREFIX, Stage
from .errors import StudyError
from .identity import config_hash
from .resolve import merge, search_config, search_variant, validate_method, variant_config, with_seed


@dataclass(frozen=True)
class Job:
    """One trial to run: its key, variant, training seed and resolved configuration; ``stage``
    says what it is for; a grid job has its ``grid`` point (dotted path -> value); a confirmed
    configuration its search trial (``confirm_of``) and rank (both None for the baseline)."""

    key: str
    variant: str
    seed: int
    config: MethodConfig
    stage: str = Stage.GRID
    grid: dict[str, Any] = field(default_factory=dict)
    confirm_of: int | None = None
    rank: int | None = None

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)


def study_jobs(study) -> list[Job]:
    """Every (variant x grid point x seed) of a study without a search, in a stable order;
    computed once per study object."""
    if study._jobs is None:
        study._jobs = _grid_jobs(study)
    return study._jobs


def _grid_jobs(study) -> list[Job]:
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
            grid = dict(zip((k for k, _ in axes), point))
            cfg = validate_method(merge(base, grid, "grid"), "grid" if grid else f"variants.{variant}")
            for seed in study.seeds:
                key = "|".join([variant, *(f"{k}={v}" for k, v in grid.items()), f"seed={seed}"])
                jobs.append(Job(key, variant, seed, with_seed(cfg, seed), grid=grid))
    return jobs


def search_job(study, number: int, params: dict[str, Any]) -> Job:
    """The job of search trial ``number`` with its sampled ``params`` (dotted path -> value)."""
    cfg = search_config(study, params)
    key = f"{SEARCH_KEY_PREFIX}trial={number}"
    return Job(key, search_variant(study), cfg.train.seed, cfg, stage=Stage.SEARCH)


def rank_trials(trials: Iterable[Any], direction: str) -> list[Any]:
    """Finished trials best first (``direction``: maximize or minimize); trials without a finite
    value are left out; ties go to the lower trial number."""
    ok = [t for t in trials if t.value is not None and math.isfinite(t.value)]
    sign = -1.0 if direction == "maximize" else 1.0
    return sorted(ok, key=lambda t: (sign * t.value, t.number))


def top_label(study, rank: int) -> str:
    """The variant label of the rank-th configuration: ``<searched variant>-top<rank>``."""
    return f"{search_variant(study)}-top{rank}"


def confirmation_jobs(study, trials: Iterable[Any]) -> list[Job]:
    """The jobs of the confirmation stage, seed by seed (each seed's top configurations, then the
    baseline), so that paired results arrive early. ``trials``: the finished search trials
    (``number``, ``value``, ``params``); fewer than ``top_n`` confirms those there are."""
    c = study.confirm
    if c is None:
        return []
    top = rank_trials(trials, study.search.direction)[: c.top_n]
    top_cfgs = [search_config(study, dict(t.params)) for t in top]
    base_cfg = variant_config(study, c.baseline)
    jobs = []
    for seed in c.seeds:
        for rank, (t, cfg) in enumerate(zip(top, top_cfgs), start=1):
            key = f"{CONFIRM_KEY_PREFIX}top{rank}|trial={t.number}|seed={seed}"
            label = top_label(study, rank)
            jobs.append(Job(key, label, seed, with_seed(cfg, seed), Stage.CONFIRM, confirm_of=t.number, rank=rank))
        key = f"{CONFIRM_KEY_PREFIX}{c.baseline}|seed={seed}"
        jobs.append(Job(key, c.baseline, seed, with_seed(base_cfg, seed), Stage.CONFIRM))
    return jobs


def confirm_total(study) -> int:
    """How many confirmation runs a study asks for (top_n x seeds + baseline x seeds)."""
    c = study.confirm
    return 0 if c is None else (c.top_n + 1) * len(c.seeds)
