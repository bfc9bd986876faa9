"""A trial's configuration is its one source of truth.

When a trial is enqueued (or asked, for a search) its fully resolved configuration and the hash
of its scientific values are written with it as Optuna user attributes (:data:`CONFIG_ATTR`,
:data:`HASH_ATTR`); the worker that runs it rebuilds the configuration from there (with its own
execution settings, :data:`tkp_pcl.config.EXECUTION_KEYS`), and the checkpoint carries both too.
A study file that disagrees with what a study already holds is refused before anything is
claimed or enqueued (:func:`check_study_file`); a checkpoint that cannot be read or was made with
another configuration is moved aside, never resumed (:func:`usable_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from tkp_pcl.config import MethodConfig, with_execution
from tkp_pcl.stage1 import Checkpoint, checkpoint

from .search_protocol import CONFIRM_PREFIX, PROTOCOL_ATTR, confirmation_jobs, protocol_difference, stage_of
from .study import Job, Study, StudyError, config_hash, first_difference, flatten, job_config_for_search, study_jobs

CONFIG_ATTR = "config"  # JSON of MethodConfig.model_dump(mode="json")
HASH_ATTR = "config_hash"  # study.config_hash of it (execution settings left out)
DATA_ATTR = "data"  # JSON of {"data": the study's data section}


def data_json(study: Study) -> str:
    """The study's data section as stored with its trials (:data:`DATA_ATTR`)."""
    return json.dumps({"data": study.data.model_dump(mode="json")})


def job_attrs(job: Job, study: Study) -> dict[str, Any]:
    """The user attributes a grid job is enqueued with."""
    return {"job_key": job.key, "variant": job.variant, "seed": job.seed, HASH_ATTR: job.config_hash,
            CONFIG_ATTR: job.config.model_dump_json(), DATA_ATTR: data_json(study),
            "grid": json.dumps(dict(job.grid_point))}  # fmt: skip


def stored_config(trial: optuna.trial.FrozenTrial | optuna.Trial) -> MethodConfig | None:
    """The configuration stored with a trial (None for a trial enqueued by an older version)."""
    raw = trial.user_attrs.get(CONFIG_ATTR)
    return MethodConfig.model_validate_json(raw) if raw else None


def run_config(stored: MethodConfig, here: MethodConfig) -> MethodConfig:
    """What a worker runs: the stored configuration with this machine's execution settings."""
    return with_execution(stored, here)


def legacy_config_hash(cfg: MethodConfig) -> str:
    """The hash trials were enqueued with before configurations were stored (execution settings
    included), so that studies begun then are still accepted."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def yaml_path(study: Study, variant: str, key: str) -> str:
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


def _expected(study: Study, jobs: dict[str, Job], t: optuna.trial.FrozenTrial) -> MethodConfig | None:
    """This file's configuration for a stored trial; raises if the file no longer defines it.
    ``jobs`` holds the grid jobs and the confirmation jobs of the study's search trials."""
    key, variant = t.user_attrs.get("job_key"), t.user_attrs.get("variant", "?")
    if key is None:  # a search trial asked but not started yet: nothing stored to compare
        return None
    if key.startswith(CONFIRM_PREFIX):
        if study.confirm is None:
            raise StudyError(f"confirm: missing here, but the study's trial {t.number} is a confirmation run")
        if key not in jobs:
            raise StudyError(f"confirm: the study's trial {t.number} ran {key!r}, which this file's confirm: block does not define")
        return jobs[key].config
    if key.startswith("search|"):
        if study.search is None:
            raise StudyError(f"search: missing here, but the study's trial {t.number} is a search trial")
        if set(t.params) != set(study.search.space):
            have = ", ".join(sorted(t.params)) or "nothing"
            raise StudyError(f"search.space: the study's trial {t.number} searched {have}, this file "
                             f"{', '.join(sorted(study.search.space))}")  # fmt: skip
        if PROTOCOL_ATTR in t.user_attrs and (diff := protocol_difference(study, t.user_attrs[PROTOCOL_ATTR])):
            raise StudyError(f"{diff} the study's trial {t.number}")
        return job_config_for_search(study, dict(t.params))
    if key not in jobs:
        where = f"variants.{variant}" if variant not in study.variants else "grid"
        raise StudyError(f"{where}: the study's trial {t.number} ran job {key!r}, which this file does not define")
    return jobs[key].config


def _expected_search(study: Study, searched: list[optuna.trial.FrozenTrial]) -> None:
    for t in searched:
        _expected(study, {}, t)


def check_study_file(study: Study, trials: list[optuna.trial.FrozenTrial], path: str) -> None:
    """Refuse (:class:`StudyError`, one line naming the first differing YAML path) a study file
    whose configuration differs from the one stored with any trial of the study, whatever its
    state: a killed trial's checkpoint, a finished trial's results were made with it."""
    jobs: dict[str, Any] = {j.key: j for j in study_jobs(study)}
    hint = "(rename the study to run another configuration)"
    if study.confirm is not None and any(str(t.user_attrs.get("job_key")).startswith(CONFIRM_PREFIX) for t in trials):
        searched = [t for t in trials if stage_of(t.user_attrs.get("job_key")) == "search" and t.state.name == "COMPLETE"]
        try:
            _expected_search(study, searched)
        except StudyError as e:
            raise StudyError(f"{path}: {e} {hint}") from None
        jobs.update({j.key: j for j in confirmation_jobs(study, searched)})
    for t in trials:
        try:
            here = _expected(study, jobs, t)
        except StudyError as e:
            raise StudyError(f"{path}: {e} {hint}") from None
        if here is None:
            continue
        stored = stored_config(t)
        variant = t.user_attrs.get("variant", "?")
        if stored is not None:
            diff = first_difference(here, stored)
            if diff is None and DATA_ATTR in t.user_attrs:
                diff = first_difference(json.loads(data_json(study)), json.loads(t.user_attrs[DATA_ATTR]))
            if diff is not None:
                key, a, b = diff
                raise StudyError(f"{path}: {yaml_path(study, variant, key)}: {_show(a)} here, {_show(b)} "
                                 f"in the study's trial {t.number} {hint}")  # fmt: skip
        elif t.user_attrs.get(HASH_ATTR) not in (None, config_hash(here), legacy_config_hash(here)):
            raise StudyError(f"{path}: variants.{variant}: configuration differs from the study's trial "
                             f"{t.number} (hash {config_hash(here)} here, {t.user_attrs[HASH_ATTR]} there) {hint}")  # fmt: skip


def _move_aside(path: Path, why: str) -> Path:
    dest = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(dest)
    return dest


def usable_checkpoint(path: Path, expected_hash: str) -> tuple[Checkpoint | None, str | None]:
    """(the checkpoint's state, None) when ``path`` holds a readable checkpoint made with the
    configuration ``expected_hash``; otherwise the file is moved aside (``.corrupt-<time>`` or
    ``.stale-<time>``), a warning naming it goes to stderr, and ``(None, reason)`` is returned,
    so the trial starts from scratch. ``(None, None)``: no checkpoint."""
    if not path.is_file():
        return None, None
    path = path.resolve()
    try:
        state = checkpoint.load(path)
    except checkpoint.CheckpointError as e:  # unreadable, empty or incomplete: start over
        dest = _move_aside(path, "corrupt")
        reason = f"unreadable checkpoint {path}: {e.reason}; moved to {dest.name}"
    else:
        got = state.config_hash
        if got == expected_hash:
            return state, None
        dest = _move_aside(path, "stale")
        reason = f"checkpoint {path} made with configuration {got or 'unknown'}, not {expected_hash}; moved to {dest.name}"
    print(f"bench: warning: {reason}; the trial starts from scratch", file=sys.stderr)
    return None, reason
