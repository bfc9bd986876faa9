"""The honest-search protocol (issue 12): the tune split a search scores, kept apart from the
images the report scores, the seeds of a search trial, and the confirmation jobs that follow it.

- *Tune split*: the images whose masks a search trial reads (objective and pruning monitor).
  Synthetic data: ``search.tune.count`` scenes of their own stream (``tune_00000``, ...), which
  cannot collide with the train stream's ids. File data (VOC): ``count`` or ``fraction`` of the
  pseudo-label split (the training images with masks), chosen by ``search.seed``, or a named
  ``split``. Every trial of the study trains stage 1 on the same images (for synthetic data, the
  train stream plus the tune stream, as VOC's train_aug holds both parts of its train split); only
  whose *masks* are read differs: the tune images' in search trials, the report images' in
  confirmation runs.
- *Confirmation*: the ``confirm.top_n`` best finished search trials and the ``confirm.baseline``
  variant, each with every ``confirm.seeds`` seed, scored on the report split.

Pure functions; :mod:`bench.runner` and :mod:`bench.trial` wire them in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tkp_pcl.config import MethodConfig, SyntheticDataConfig
from tkp_pcl.data import Split, Splits
from tkp_pcl.data.synthetic import synthetic_split
from tkp_pcl.data.voc import voc_split

from .study import Study, StudyError, config_hash, job_config_for_search, search_variant, variant_config

TUNE_IDS_FILE = "tune_ids.txt"
REPORT_IDS_FILE = "report_ids.txt"


# --- the tune split --------------------------------------------------------------------------


def tune_indices(
    ids: Sequence[str], seed: int, count: int | None = None, fraction: float | None = None
) -> tuple[list[int], list[int]]:
    """Choose the tune images among ``ids``: the ``count`` (or ``max(1, round(fraction * n))``)
    ids with the smallest ``sha256(f"{seed}:{id}")``. Deterministic, independent of the order of
    ``ids`` and of numpy's generators. Returns (tune indices, report indices), both in the order
    of ``ids``; at least one image is left to report on."""
    n = len(ids)
    if (count is None) == (fraction is None):
        raise ValueError("give exactly one of count, fraction")
    k = count if count is not None else max(1, round(fraction * n))
    key = "count" if count is not None else "fraction"
    if k >= n:
        raise StudyError(f"search.tune.{key}: {k} tune images would leave none of the {n} pseudo-label images to report on")
    rank = sorted(range(n), key=lambda i: (hashlib.sha256(f"{seed}:{ids[i]}".encode()).digest(), i))
    tune = set(rank[:k])
    return sorted(tune), [i for i in range(n) if i not in tune]


def check_disjoint(tune_ids: Sequence[str], others: Mapping[str, Sequence[str]], where: str = "search.tune") -> None:
    """Refuse (one line) tune images that are also in one of ``others`` (name -> ids)."""
    tune = set(tune_ids)
    for name, ids in others.items():
        both = [i for i in ids if i in tune]
        if both:
            raise StudyError(
                f"{where}: {len(both)} tune image(s) are also in the {name} split (e.g. {both[0]!r}); "
                "the images a search scores must be disjoint from the reported ones"
            )


def concat_splits(name: str, first: Split, second: Split) -> Split:
    """The images of ``first`` then those of ``second`` (same classes) as one split."""
    if first.class_names != second.class_names:
        raise ValueError(f"{name}: cannot join splits with different classes")
    n = len(first)

    def pick(j: int, fa, fb):
        return fa(j) if j < n else fb(j - n)

    return Split(
        name, first.class_names, [*first.ids, *second.ids],
        lambda j: pick(j, first.load_image, second.load_image), lambda j: pick(j, first.load_mask, second.load_mask),
    )  # fmt: skip


def _synthetic_kwargs(cfg: SyntheticDataConfig) -> dict[str, Any]:
    return dict(seed=cfg.seed, size=cfg.size, max_objects=cfg.max_objects, min_size=cfg.min_size,
                max_size=cfg.max_size, noise=cfg.noise)  # fmt: skip


@dataclass
class ProtocolSplits:
    """``search``: the splits of a search trial (masks read: the tune images only, as its
    pseudo-label and monitor split); ``report``: those of a confirmation run (pseudo labels scored
    on the report images; monitor and segmentation on val, as in grid jobs)."""

    search: Splits
    report: Splits

    @property
    def tune_ids(self) -> list[str]:
        return list(self.search.pseudo.ids)

    @property
    def report_ids(self) -> list[str]:
        return list(self.report.pseudo.ids)

    def write_ids(self, folder: Path) -> list[Path]:
        """``tune_ids.txt`` and ``report_ids.txt`` (one id a line) under ``folder``."""
        out = []
        for fname, ids in ((TUNE_IDS_FILE, self.tune_ids), (REPORT_IDS_FILE, self.report_ids)):
            path = Path(folder) / fname
            path.write_text("".join(f"{i}\n" for i in ids))
            out.append(path)
        return out


def protocol_splits(study: Study, splits: Splits) -> ProtocolSplits | None:
    """The search and report splits of a study with ``search.tune`` (None without one), built
    from the study's usual ``splits``. Raises :class:`StudyError` if tune and report overlap."""
    tune = study.search.tune if study.search is not None else None
    if tune is None:
        return None
    data, train, report_pseudo = study.data, splits.train, splits.pseudo
    if isinstance(data, SyntheticDataConfig):
        tune_split = synthetic_split("tune", tune.count, **_synthetic_kwargs(data))
        train = concat_splits(f"{splits.train.name}+tune", splits.train, tune_split)
    elif tune.split is not None:
        tune_split = voc_split(data.root, tune.split, mask_dir=data.mask_dir, max_images=data.max_images)
    else:
        t_idx, r_idx = tune_indices(splits.pseudo.ids, study.search.seed, tune.count, tune.fraction)
        tune_split = dataclasses.replace(splits.pseudo.subset(t_idx), name=f"{splits.pseudo.name} (tune)")
        report_pseudo = dataclasses.replace(splits.pseudo.subset(r_idx), name=f"{splits.pseudo.name} (report)")
    check_disjoint(tune_split.ids, {"pseudo-label (report)": report_pseudo.ids, "val": splits.val.ids})
    search = dataclasses.replace(splits, train=train, pseudo=tune_split, val=tune_split)
    seg_train = getattr(splits, "seg_train", None)
    if seg_train is not None:  # stage 2 of a search trial is scored on the tune images: never trained on them
        tune_set = set(tune_split.ids)
        search.seg_train = seg_train.subset([i for i, x in enumerate(seg_train.ids) if x not in tune_set])
    return ProtocolSplits(search=search, report=dataclasses.replace(splits, train=train, pseudo=report_pseudo))


# --- seeds of a search trial -----------------------------------------------------------------


def search_configs(study: Study, params: Mapping[str, Any]) -> list[MethodConfig]:
    """A sampled configuration once per ``search.seeds`` seed (``train.seed`` set), in order."""
    base = job_config_for_search(study, dict(params))
    return [with_seed(base, seed) for seed in study.search.seeds]


def seed_metric(metric: str, seed: int, prefix: str = "tune_") -> str:
    """The name a search run logs one seed's value under: ``tune_<metric>_seed<k>`` (``prefix``
    "" for a search without a tune split)."""
    return f"{prefix}{metric}_seed{seed}"


# --- the confirmation stage ------------------------------------------------------------------


@dataclass(frozen=True)
class SearchResult:
    """A finished search trial as the confirmation needs it (an Optuna FrozenTrial fits too)."""

    number: int
    value: float
    params: dict[str, Any]


@dataclass(frozen=True)
class ConfirmJob:
    """One confirmation run: a top configuration (``rank``, of search trial ``confirm_of``) or
    the baseline (both None), with one confirmation seed and its resolved configuration."""

    key: str
    variant: str
    seed: int
    config: MethodConfig
    confirm_of: int | None = None
    rank: int | None = None

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)


def rank_trials(trials: Iterable[Any], direction: str) -> list[Any]:
    """Finished trials best first (``direction``: maximize or minimize); trials without a finite
    value are left out; ties go to the lower trial number."""
    ok = [t for t in trials if t.value is not None and math.isfinite(t.value)]
    sign = -1.0 if direction == "maximize" else 1.0
    return sorted(ok, key=lambda t: (sign * t.value, t.number))


def top_label(study: Study, rank: int) -> str:
    """The variant label of the rank-th configuration: ``<searched variant>-top<rank>``."""
    return f"{search_variant(study)}-top{rank}"


def confirmation_jobs(study: Study, trials: Iterable[Any]) -> list[ConfirmJob]:
    """The jobs of the confirmation stage, seed by seed (each seed's top configurations, then the
    baseline), so that paired results arrive early. ``trials``: the finished search trials
    (``number``, ``value``, ``params``); fewer than ``top_n`` confirms those there are."""
    c = study.confirm
    if c is None:
        return []
    top = rank_trials(trials, study.search.direction)[: c.top_n]
    top_cfgs = [job_config_for_search(study, dict(t.params)) for t in top]
    base_cfg = variant_config(study, c.baseline)
    jobs = []
    for seed in c.seeds:
        for rank, (t, cfg) in enumerate(zip(top, top_cfgs), start=1):
            key = f"confirm|top{rank}|trial={t.number}|seed={seed}"
            jobs.append(ConfirmJob(key, top_label(study, rank), seed, with_seed(cfg, seed), t.number, rank))
        jobs.append(ConfirmJob(f"confirm|{c.baseline}|seed={seed}", c.baseline, seed, with_seed(base_cfg, seed)))
    return jobs


def with_seed(cfg: MethodConfig, seed: int) -> MethodConfig:
    """A copy of ``cfg`` with ``train.seed`` set to ``seed``."""
    out = cfg.model_copy(deep=True)
    out.train.seed = seed
    return out


# --- stages of a study's trials (for the runner) ----------------------------------------------

STAGE_TAG = "bench.stage"  # MLflow tag: search | confirm | grid
CONFIRM_OF_TAG = "bench.confirm_of"  # MLflow tag of a confirmed configuration's runs: its search trial
CONFIRM_PREFIX = "confirm|"
SEARCH_PREFIX = "search|"
_LIVE = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")


def stage_of(job_key: str | None) -> str:
    """``search`` (a sampled trial; no key yet between ``ask`` and its start), ``confirm`` or ``grid``."""
    if job_key is None or job_key.startswith(SEARCH_PREFIX):
        return "search"
    return "confirm" if job_key.startswith(CONFIRM_PREFIX) else "grid"


def _key(t: Any) -> str | None:
    return t.user_attrs.get("job_key")


def confirm_total(study: Study) -> int:
    """How many confirmation runs a study asks for (top_n x seeds + baseline x seeds)."""
    c = study.confirm
    return 0 if c is None else (c.top_n + 1) * len(c.seeds)


def search_spent(study: Study, trials: Iterable[Any]) -> bool:
    """Whether ``search.n_trials`` search trials are complete, pruned or running."""
    used = sum(1 for t in trials if stage_of(_key(t)) == "search" and t.state.name in ("COMPLETE", "PRUNED", "RUNNING"))
    return used >= study.search.n_trials


def confirmation_todo(study: Study, trials: Sequence[Any], retry_failed: bool = False) -> list[ConfirmJob] | None:
    """The confirmation jobs to enqueue now: None while the confirmation is not due (no
    ``confirm:``, search budget not spent, or search trials still running or waiting), else the
    jobs no live (complete, pruned, running, waiting) trial holds, nor a failed one unless
    ``retry_failed`` (as grid jobs, a failed job is retried by the next ``bench run``, not in a
    loop); [] when none is missing.
    Raises :class:`StudyError` if the study confirmed other search trials than those that rank
    top now (``search.n_trials`` raised after the confirmation)."""
    if study.confirm is None or not search_spent(study, trials):
        return None
    searched = [t for t in trials if stage_of(_key(t)) == "search"]
    if any(t.state.name in ("RUNNING", "WAITING") for t in searched):
        return None
    done = [t for t in searched if t.state.name == "COMPLETE"]
    if not done:
        return []
    jobs = confirmation_jobs(study, done)
    wanted = {j.key for j in jobs}
    for t in trials:
        key = _key(t)
        if stage_of(key) == "confirm" and key not in wanted and t.user_attrs.get("confirm_of") is not None:
            raise StudyError(
                f"confirm: the study confirmed search trial {t.user_attrs['confirm_of']} ({key!r}), which is no longer "
                f"in the top {study.confirm.top_n} (search.n_trials changed?); rename the study to confirm another search"
            )
    held = _LIVE if retry_failed else (*_LIVE, "FAIL")
    live = {_key(t) for t in trials if t.state.name in held}
    return [j for j in jobs if j.key not in live]


def confirm_attrs(job: ConfirmJob) -> dict[str, Any]:
    """The Optuna user attributes a confirmation job is enqueued with (its configuration
    stored, as grid jobs')."""
    attrs = {"job_key": job.key, "variant": job.variant, "seed": job.seed, "stage": "confirm",
             "config": job.config.model_dump_json(), "config_hash": job.config_hash}  # fmt: skip
    if job.confirm_of is not None:
        attrs.update(confirm_of=job.confirm_of, confirm_rank=job.rank)
    return attrs


def confirm_tags(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """MLflow tags of a trial from its user attributes: ``bench.stage`` and, for a confirmed
    configuration, ``bench.confirm_of`` (its search trial) and ``bench.confirm_rank``."""
    tags: dict[str, Any] = {STAGE_TAG: stage_of(attrs.get("job_key"))}
    if attrs.get("confirm_of") is not None:
        tags.update({CONFIRM_OF_TAG: attrs["confirm_of"], "bench.confirm_rank": attrs.get("confirm_rank")})
    return tags


def seed_values(per_seed: Mapping[int, Mapping[str, float]], metric: str, prefix: str) -> dict[str, float]:
    """The metrics a search run logs for its seeds: each key's mean over the seeds as
    ``<prefix><key>`` (``prefix`` = ``tune_`` when scored on the tune split), and with 2+ seeds
    each seed's ``<prefix><metric>_seed<k>`` for the objective and the mIoUs."""
    seeds = list(per_seed)
    keys = [k for k in per_seed[seeds[0]] if all(k in per_seed[s] for s in seeds)]
    out = {f"{prefix}{k}": sum(per_seed[s][k] for s in seeds) / len(seeds) for k in keys}
    if len(seeds) > 1:
        for m in dict.fromkeys([metric, "pseudo_miou", "pseudo_miou_crf", "seg_miou"]):
            for s in seeds:
                if m in per_seed[s]:
                    out[seed_metric(m, s, prefix)] = per_seed[s][m]
    return out


PROTOCOL_ATTR = "search_protocol"  # Optuna user attribute of a search trial: its tune split and seeds


def protocol_json(study: Study) -> str:
    """What a search trial's values depend on beyond its configuration: ``search.tune`` and
    ``search.seeds`` (stored with the trial as :data:`PROTOCOL_ATTR`)."""
    s = study.search
    return json.dumps({"tune": s.tune.model_dump(exclude_none=True) if s.tune else None, "seeds": list(s.seeds)})


def protocol_difference(study: Study, stored: str) -> str | None:
    """``search.tune: ... here, ... in`` when this file's tune split or search seeds differ
    from those a trial stored (None when they agree)."""
    here, there = json.loads(protocol_json(study)), json.loads(stored)
    for key in ("tune", "seeds"):
        if here.get(key) != there.get(key):
            return f"search.{key}: {json.dumps(here.get(key))} here, {json.dumps(there.get(key))} in"
    return None


def plan_rows(study: Study) -> list[tuple[str, str]]:
    """What ``bench run --dry-run`` shows of the protocol: the tune split, the search seeds and
    the confirmation stage that follows the search."""
    s, c = study.search, study.confirm
    t = s.tune
    if t is None:
        where = "none: the search scores the report's own images (optimistic)"
    elif t.split is not None:
        where = f"split {t.split!r}"
    elif isinstance(study.data, SyntheticDataConfig):
        where = f"{t.count} scenes of the synthetic 'tune' stream"
    else:
        what = f"{t.count} images" if t.count is not None else f"{t.fraction:g} of the images"
        where = f"{what} of {study.data.pseudo_split!r} (seed {s.seed}); the rest is the report split"
    rows = [("tune split", where), ("search seeds", ", ".join(map(str, s.seeds)) + " (objective: mean)")]
    if c is not None:
        top = f"{search_variant(study)}-top1..top{c.top_n}" if c.top_n > 1 else f"{search_variant(study)}-top1"
        rows += [
            ("then: confirm", f"{confirm_total(study)} runs after the search: {top} and {c.baseline} x seeds "
                              f"{', '.join(map(str, c.seeds))}, scored on the report split"),  # fmt: skip
            ("confirm keys", f"confirm|top<r>|trial=<n>|seed=<s>, confirm|{c.baseline}|seed=<s>"),
        ]
    return rows
