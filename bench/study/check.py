"""A study file against what its store already holds.

A study file that disagrees with the configuration stored with any trial of the study, whatever
the trial's state (a killed trial's checkpoint and a finished trial's results were made with
it), is refused before anything is claimed or enqueued, with one line naming the first YAML
path that differs. ``trials`` are Optuna's (frozen) trials, read through ``number``, ``state``,
``params`` and ``user_attrs``.
"""

from __future__ import annotations

import json
from typing import Any

from tkp_pcl.config import MethodConfig

from ..records import Attr, Stage, stage_of
from .errors import StudyError
from .identity import data_json, first_difference, protocol_difference, stored_config
from .jobs import confirmation_jobs, study_jobs
from .resolve import flatten, search_config

HINT = "(rename the study to run another configuration)"


def yaml_path(study, variant: str, key: str) -> str:
    """Where a (dotted) configuration key of a variant is set in the study file."""
    if key.startswith("data."):
        return key
    if key == "train.seed":
        return "seeds" if study.search is None else "search.seed"
    if study.search is not None and key in study.search.space:
        return f"search.space.{key}"
    if key in flatten(study.variants.get(variant, {})):
        return f"variants.{variant}.{key}"
    if key in study.grid:
        return f"grid.{key}"
    return f"base.{key}"


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else json.dumps(v)


def _search_expected(study, t) -> MethodConfig:
    if study.search is None:
        raise StudyError(f"search: missing here, but the study's trial {t.number} is a search trial")
    if set(t.params) != set(study.search.space):
        have = ", ".join(sorted(t.params)) or "nothing"
        raise StudyError(
            f"search.space: the study's trial {t.number} searched {have}, this file {', '.join(sorted(study.search.space))}"
        )
    stored = t.user_attrs.get(Attr.SEARCH_PROTOCOL)
    if stored is not None and (diff := protocol_difference(study, stored)):
        raise StudyError(f"{diff} the study's trial {t.number}")
    return search_config(study, dict(t.params))


def expected_config(study, jobs: dict[str, Any], t) -> MethodConfig | None:
    """This file's configuration for a stored trial; raises if the file no longer defines it.
    ``jobs`` holds the grid jobs and the confirmation jobs of the study's search trials."""
    key, variant = t.user_attrs.get(Attr.JOB_KEY), t.user_attrs.get(Attr.VARIANT, "?")
    if key is None:  # a search trial asked but not started yet: nothing stored to compare
        return None
    stage = stage_of(key)
    if stage == Stage.SEARCH:
        return _search_expected(study, t)
    if stage == Stage.CONFIRM and study.confirm is None:
        raise StudyError(f"confirm: missing here, but the study's trial {t.number} is a confirmation run")
    if key not in jobs:
        if stage == Stage.CONFIRM:
            raise StudyError(
                f"confirm: the study's trial {t.number} ran {key!r}, which this file's confirm: block does not define"
            )
        where = f"variants.{variant}" if variant not in study.variants else "grid"
        raise StudyError(f"{where}: the study's trial {t.number} ran job {key!r}, which this file does not define")
    return jobs[key].config


def _expected_jobs(study, trials: list) -> dict[str, Any]:
    """The jobs a stored trial may hold: the grid jobs, and once a confirmation ran, the
    confirmation jobs of the finished search trials (whose configurations are checked first)."""
    jobs: dict[str, Any] = {j.key: j for j in study_jobs(study)}
    if study.confirm is None or not any(stage_of(t.user_attrs.get(Attr.JOB_KEY)) == Stage.CONFIRM for t in trials):
        return jobs
    searched = [
        t for t in trials if stage_of(t.user_attrs.get(Attr.JOB_KEY)) == Stage.SEARCH and t.state.name == "COMPLETE"
    ]
    for t in searched:
        _search_expected(study, t)
    jobs.update({j.key: j for j in confirmation_jobs(study, searched)})
    return jobs


def _difference(study, here: MethodConfig, t) -> tuple[str, Any, Any] | None:
    stored = stored_config(t)
    diff = first_difference(here, stored) if stored is not None else None
    if stored is not None and diff is None and Attr.DATA in t.user_attrs:
        diff = first_difference(json.loads(data_json(study)), json.loads(t.user_attrs[Attr.DATA]))
    return diff


def check_study_file(study, trials: list, path: str) -> None:
    """Refuse (:class:`StudyError`, one line naming the first differing YAML path) a study file
    whose configuration differs from the one stored with any trial of the study."""
    try:
        jobs = _expected_jobs(study, trials)
        for t in trials:
            here = expected_config(study, jobs, t)
            diff = _difference(study, here, t) if here is not None else None
            if diff is not None:
                key, a, b = diff
                where = yaml_path(study, t.user_attrs.get(Attr.VARIANT, "?"), key)
                raise StudyError(f"{where}: {_show(a)} here, {_show(b)} in the study's trial {t.number}")
    except StudyError as e:
        raise StudyError(f"{path}: {e} {HINT}") from None
