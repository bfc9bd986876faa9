"""What ``bench run --dry-run`` shows: a study's trials, or its search and confirmation plan, as
rows of text (the CLI prints them)."""

from __future__ import annotations

from tkp_pcl.config import SyntheticDataConfig

from .jobs import confirm_total, study_jobs
from .resolve import search_variant

JOB_COLUMNS = ("#", "job", "variant", "seed", "pooling", "pce_weight", "epochs")
SEARCH_COLUMNS = ("search", "value")


def plan(study) -> tuple[str, tuple[str, ...], list[tuple[str, ...]]]:
    """(title, columns, rows) of the study's dry run."""
    jobs = study_jobs(study)
    n = len(jobs) or study.search.n_trials
    then = f" + {confirm_total(study)} confirmation runs" if study.confirm else ""
    title = f"{study.name}: {n} trials{then} (dry run)"
    if not jobs:
        return title, SEARCH_COLUMNS, [(k, str(v)) for k, v in search_rows(study)]
    rows = []
    for i, j in enumerate(jobs):
        c = j.config
        pool = c.pooling.kind + (f" k_ratio={c.pooling.k_ratio}" if c.pooling.kind == "topk" else "")
        rows.append((str(i), j.key, j.variant, str(j.seed), pool, str(c.loss.pce_weight), str(c.train.epochs)))
    return title, JOB_COLUMNS, rows


def search_rows(study) -> list[tuple[str, object]]:
    """The search's settings, then its protocol: the tune split, the search seeds and the
    confirmation stage that follows the search."""
    s = study.search
    rows: list[tuple[str, object]] = [
        ("variant", s.variant or next(iter(study.variants))),
        ("sampler", s.sampler),
        ("pruner", s.pruner),
        ("objective", f"{s.direction} {s.metric}"),
        ("n_trials", s.n_trials),
        *((f"space.{p}", spec.model_dump()) for p, spec in s.space.items()),
    ]
    return rows + protocol_rows(study)


def _tune_where(study) -> str:
    s = study.search
    t = s.tune
    if t is None:
        return "none: the search scores the report's own images (optimistic)"
    if t.split is not None:
        return f"split {t.split!r}"
    if isinstance(study.data, SyntheticDataConfig):
        return f"{t.count} scenes of the synthetic 'tune' stream"
    what = f"{t.count} images" if t.count is not None else f"{t.fraction:g} of the images"
    return f"{what} of {study.data.pseudo_split!r} (seed {s.seed}); the rest is the report split"


def protocol_rows(study) -> list[tuple[str, str]]:
    """The tune split, the search seeds and the confirmation stage."""
    s, c = study.search, study.confirm
    rows = [("tune split", _tune_where(study)), ("search seeds", ", ".join(map(str, s.seeds)) + " (objective: mean)")]
    if c is not None:
        top = f"{search_variant(study)}-top1..top{c.top_n}" if c.top_n > 1 else f"{search_variant(study)}-top1"
        rows += [
            (
                "then: confirm",
                f"{confirm_total(study)} runs after the search: {top} and {c.baseline} x seeds "
                f"{', '.join(map(str, c.seeds))}, scored on the report split",
            ),
            ("confirm keys", f"confirm|top<r>|trial=<n>|seed=<s>, confirm|{c.baseline}|seed=<s>"),
        ]
    return rows
