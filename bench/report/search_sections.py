"""The two sections of a search study's report: *Search* (the best trials, scored on
the tune split, and so labelled) and *Confirmation* (each confirmed configuration's tune-split
value beside its report-split mean over the confirmation seeds: the optimism gap).

Runs are told apart by their stage tag (search | confirm), and for a confirmed configuration by
the number of the search trial it confirms (:mod:`bench.records`). Everything here returns
plain pandas tables, captions and sentences (:class:`Section`), for any renderer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..records import Attr, Stage, Tag, seed_metric, stage_of
from ..study import rank_trials
from .runs import METRIC_LABELS, finished

STAGE_TAG = f"tags.{Tag.STAGE}"
CONFIRM_OF_TAG = f"tags.{Tag.CONFIRM_OF}"
TRIAL_TAG = f"tags.{Tag.TRIAL}"


@dataclass
class TableBlock:
    """A table to show (``display``: formatted cells) and to save (``data``: raw numbers)."""

    data: pd.DataFrame
    display: pd.DataFrame
    caption: str
    name: str


@dataclass
class Section:
    """A report section: a title and its blocks in order (a ``str`` is a paragraph)."""

    title: str
    blocks: list[str | TableBlock] = field(default_factory=list)


@dataclass
class SearchInfo:
    """What the two sections need to know of the study: the objective, the search seeds, the
    number of tune images (where known), the baseline and the confirmation seeds."""

    metric: str = "pseudo_miou"
    direction: str = "maximize"
    seeds: list[int] = field(default_factory=lambda: [0])
    n_tune: int | None = None
    baseline: str | None = None
    confirm_seeds: list[int] = field(default_factory=list)
    tuned: bool = True  # scored on a tune split (search.tune); False: on the pseudo-label split itself

    @property
    def split(self) -> str:
        return "tune split" if self.tuned else "pseudo-label split"

    @classmethod
    def from_study(cls, study) -> SearchInfo:
        s, c = study.search, study.confirm
        return cls(
            s.metric,
            s.direction,
            list(s.seeds),
            s.tune.count if s.tune is not None else None,
            c.baseline if c else None,
            list(c.seeds) if c else [],
            s.tune is not None,
        )

    @classmethod
    def from_runs(cls, runs: pd.DataFrame, ostudy, baseline: str | None) -> SearchInfo:
        """Without the study file: what the runs and the Optuna study tell."""
        search, confirm = stage_runs(runs, Stage.SEARCH), stage_runs(runs, Stage.CONFIRM)
        seeds = sorted(
            {
                int(x)
                for v in search.get(f"tags.{Tag.SEARCH_SEEDS}", pd.Series(dtype=object)).dropna()
                for x in str(v).split(",")
            }
        )
        return cls(
            direction=ostudy.direction.name.lower() if ostudy is not None else "maximize",
            seeds=seeds or [0],
            baseline=baseline,
            confirm_seeds=sorted({int(x) for x in confirm["seed"].dropna()}),
            tuned=any(str(c).startswith("metrics.tune_") for c in runs.columns),
        )


def is_staged(df: pd.DataFrame) -> bool:
    """Whether the runs are those of a search study that tags its stages (search, confirm)."""
    return STAGE_TAG in df and df[STAGE_TAG].isin([Stage.SEARCH, Stage.CONFIRM]).any()


def stage_runs(df: pd.DataFrame, stage: str) -> pd.DataFrame:
    """The runs of one stage (``search`` or ``confirm``); none when the tag is absent."""
    if STAGE_TAG not in df:
        return df.iloc[0:0]
    return df[df[STAGE_TAG] == stage]


def is_search(trial) -> bool:
    """Whether an Optuna trial is a search trial (a sampled one, or keyed ``search|...``)."""
    return stage_of(trial.user_attrs.get(Attr.JOB_KEY)) == Stage.SEARCH


def search_trials(ostudy) -> list:
    """The finished (COMPLETE) search trials of an Optuna study: never the confirmation's."""
    import optuna

    done = ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [t for t in done if is_search(t)]


def search_only_study(ostudy):
    """An in-memory copy of an Optuna study with its finished search trials only, for the
    history and importance plots (which would otherwise mix in report-split values)."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    out = optuna.create_study(study_name=ostudy.study_name, direction=ostudy.direction)
    out.add_trials([t for t in ostudy.get_trials(deepcopy=False, states=states) if is_search(t)])
    return out


def _fmt(metric: str, v: float, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if metric in METRIC_LABELS:  # mIoU: shown in points
        return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"
    return f"{v:+.4g}" if signed else f"{v:.4g}"


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def best_trials(df: pd.DataFrame, ostudy, info: SearchInfo, top: int = 10) -> TableBlock | None:
    """The ``top`` best search trials: objective (mean over the search seeds), each seed's value
    (``tune_<metric>_seed<k>`` of the trial's run, where logged), the sampled parameters, and
    which were confirmed (``<variant>-top1``, ...)."""
    metric, seeds = info.metric, info.seeds
    ranked = rank_trials(search_trials(ostudy), info.direction)[:top]
    if not ranked:
        return None
    runs = stage_runs(df, Stage.SEARCH)
    by_trial = {int(r[TRIAL_TAG]): r for _, r in runs.iterrows()} if TRIAL_TAG in runs else {}
    confirmed = _confirmed_ranks(df)
    per_seed = seeds if len(seeds) > 1 else []
    rows = []
    for t in ranked:
        run = by_trial.get(t.number)
        row: dict[str, Any] = {"trial": t.number, "value": t.value}
        for s in per_seed:
            col = f"metrics.{seed_metric(metric, s, 'tune_' if info.tuned else '')}"
            row[f"seed {s}"] = run[col] if run is not None and col in run else float("nan")
        row.update(t.params)
        row["confirmed"] = confirmed.get(t.number, "")
        rows.append(row)
    data = pd.DataFrame(rows).set_index("trial")
    display = data.copy()
    for col in ["value", *(f"seed {s}" for s in per_seed)]:
        display[col] = [_fmt(metric, v) for v in data[col]]
    for k in ranked[0].params:
        if k in display and pd.api.types.is_float_dtype(data[k]):
            display[k] = [f"{v:.4g}" for v in data[k]]
    display = display.rename(columns={"value": f"{_label(metric)} ({info.split})"})
    mean = " (mean over seeds " + ", ".join(map(str, seeds)) + ")" if per_seed else ""
    caption = f"Best search trials, {info.direction} {_label(metric)} on the {info.split}{mean}"
    caption += (
        "; not comparable to report-split values"
        if info.tuned
        else "; optimistic: scored on the images it was chosen on"
    )
    return TableBlock(data, display, caption, "best_trials")


def _confirmed_ranks(df: pd.DataFrame) -> dict[int, str]:
    """Search trial number -> the label of its confirmation runs' variant (e.g. tkp-pcl-top1)."""
    runs = stage_runs(df, Stage.CONFIRM)
    if CONFIRM_OF_TAG not in runs:
        return {}
    runs = runs[runs[CONFIRM_OF_TAG].notna() & (runs[CONFIRM_OF_TAG] != "")]
    return {int(k): str(v) for k, v in zip(runs[CONFIRM_OF_TAG], runs["variant"])}


def search_section(df: pd.DataFrame, ostudy, info: SearchInfo) -> Section:
    """The Search section: what was searched, on which images, and the best trials."""
    trials = [t for t in ostudy.get_trials(deepcopy=False) if is_search(t)]
    counts = pd.Series([t.state.name.lower() for t in trials]).value_counts()
    done = ", ".join(f"{n} {s}" for s, n in counts.items())
    seeds = info.seeds
    seeds_txt = (
        f"each configuration trained with seeds {', '.join(map(str, seeds))}, objective their mean"
        if len(seeds) > 1
        else f"one seed ({seeds[0]}) per configuration"
    )
    if info.tuned:
        images = f" ({info.n_tune} images)" if info.n_tune else ""
        where = (
            f"The objective and the pruning monitor read the masks of the tune split{images} only, which no other "
            "number in this report scores: values here are tune-split values, optimistic for the configuration "
            "they selected (see the optimism gap under Confirmation)."
        )
    else:
        where = (
            "No search.tune: the objective was scored on the pseudo-label split itself, so the best value is "
            "optimistic by construction; add search.tune and confirm: to compare with a baseline honestly."
        )
    sec = Section("Search", [f"{len(trials)} search trials ({done}); {seeds_txt}. {where}"])
    table = best_trials(df, ostudy, info)
    if table is not None:
        sec.blocks.append(table)
    return sec


def optimism_gap(df: pd.DataFrame, ostudy, metric: str, direction: str) -> pd.DataFrame:
    """One row per confirmed configuration (the variant label of its confirmation runs): its
    search trial, its tune-split value (the trial's objective), its report-split mean and sample
    std over the finished confirmation seeds, the seed count, and ``gap`` = tune - report mean
    (report mean - tune when minimising): positive = the search value was optimistic."""
    runs = finished(stage_runs(df, Stage.CONFIRM))
    col = f"metrics.{metric}"
    cols = ["trial", "tune", "report_mean", "report_std", "seeds", "gap"]
    if CONFIRM_OF_TAG not in runs or col not in runs:
        return pd.DataFrame(columns=cols)
    runs = runs[runs[CONFIRM_OF_TAG].notna() & (runs[CONFIRM_OF_TAG] != "")]
    values = {t.number: t.value for t in search_trials(ostudy)}
    rows = {}
    for variant, g in runs.groupby("variant", sort=False):
        trial = int(g[CONFIRM_OF_TAG].iloc[0])
        v = g[col].dropna()
        tune = values.get(trial, float("nan"))
        mean = float(v.mean()) if len(v) else float("nan")
        gap = tune - mean if direction == "maximize" else mean - tune
        std = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
        rows[variant] = {
            "trial": trial,
            "tune": tune,
            "report_mean": mean,
            "report_std": std,
            "seeds": int(g["seed"].nunique()),
            "gap": gap,
        }
    out = pd.DataFrame.from_dict(rows, orient="index", columns=cols)
    out.index.name = "configuration"
    return out.sort_values("trial", kind="stable") if len(out) else out


def confirmation_section(df: pd.DataFrame, ostudy, info: SearchInfo) -> Section:
    """The Confirmation section's protocol sentence and optimism-gap table with one sentence per
    configuration (the main table of the confirmation runs is the report's usual one)."""
    metric, direction, baseline, seeds = info.metric, info.direction, info.baseline, info.confirm_seeds
    sec = Section("Confirmation")
    sec.blocks.append(
        f"The best search configurations and the baseline {baseline}, each trained with seeds "
        f"{', '.join(map(str, seeds))} and scored on the report split (never seen by the search), like grid jobs. "
        "The main table and the paired differences are built from these runs only."
    )
    gap = optimism_gap(df, ostudy, metric, direction)
    if gap.empty:
        sec.blocks.append("No confirmation run has finished yet.")
        return sec
    label = _label(metric)
    display = pd.DataFrame(index=gap.index)
    display["search trial"] = gap["trial"].astype(str)
    display[f"{label}, tune split (search)"] = [_fmt(metric, v) for v in gap["tune"]]
    display[f"{label}, report split (confirmed)"] = [
        f"{_fmt(metric, m)} ± {_fmt(metric, s)}" for m, s in zip(gap["report_mean"], gap["report_std"])
    ]
    display["seeds"] = gap["seeds"].astype(str)
    display["optimism gap"] = [_fmt(metric, v, signed=True) for v in gap["gap"]]
    unit = " (points)" if metric in METRIC_LABELS else ""
    caption = f"Optimism gap{unit}: the tune-split value that selected each configuration beside its confirmed report-split mean ± std; positive = optimistic"
    sec.blocks.append(TableBlock(gap, display, caption, "optimism_gap"))
    for name, r in gap.iterrows():
        sec.blocks.append(
            f"{name} (search trial {int(r['trial'])}): {label} {_fmt(metric, r['tune'])} on the tune split, "
            f"{_fmt(metric, r['report_mean'])} ± {_fmt(metric, r['report_std'])} on the report split over {int(r['seeds'])} seeds: "
            f"an optimism gap of {_fmt(metric, r['gap'], signed=True)}{' points' if unit else ''}."
        )
    return sec


def search_study(name: str, storage_url: str):
    """The Optuna study ``name`` in ``storage_url`` if it holds search trials (for the history
    and importance plots); None for a grid study, a missing storage or a missing study."""
    import optuna

    from ..stores import open_storage, storage_exists

    if not storage_exists(storage_url):
        return None
    try:
        ostudy = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    except KeyError:
        return None
    return ostudy if any(is_search(t) and Attr.JOB_KEY in t.user_attrs for t in ostudy.trials) else None
