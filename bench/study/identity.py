"""A trial's configuration is its one source of truth.

When a trial is enqueued (or asked, for a search) its fully resolved configuration, the hash of
its scientific values and the study's data section are written with it as Optuna user
attributes (:func:`trial_attrs`); the worker that runs it rebuilds the configuration from there
with its own execution settings (:func:`run_config`: the fields marked as execution settings in
:mod:`tkp_pcl.config`), and its checkpoint carries the hash too.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from tkp_pcl.config import EXECUTION_KEYS, MethodConfig, with_execution

from ..records import Attr
from .resolve import flatten


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


def data_json(study) -> str:
    """The study's data section as stored with its trials (:attr:`Attr.DATA`)."""
    return json.dumps({"data": study.data.model_dump(mode="json")})


def protocol_json(study) -> str:
    """What a search trial's values depend on beyond its configuration: ``search.tune`` and
    ``search.seeds`` (stored with the trial as :attr:`Attr.SEARCH_PROTOCOL`)."""
    s = study.search
    return json.dumps({"tune": s.tune.model_dump(exclude_none=True) if s.tune else None, "seeds": list(s.seeds)})


def protocol_difference(study, stored: str) -> str | None:
    """``search.tune: ... here, ... in`` when this file's tune split or search seeds differ
    from those a trial stored (None when they agree)."""
    here, there = json.loads(protocol_json(study)), json.loads(stored)
    for key in ("tune", "seeds"):
        if here.get(key) != there.get(key):
            return f"search.{key}: {json.dumps(here.get(key))} here, {json.dumps(there.get(key))} in"
    return None


#: the user attributes :func:`trial_attrs` may write: what a queued copy of a trial carries over
JOB_ATTRS = (
    Attr.JOB_KEY,
    Attr.VARIANT,
    Attr.SEED,
    Attr.CONFIG,
    Attr.CONFIG_HASH,
    Attr.DATA,
    Attr.GRID,
    Attr.STAGE,
    Attr.CONFIRM_OF,
    Attr.CONFIRM_RANK,
    Attr.SEARCH_PROTOCOL,
)


def trial_attrs(job, study) -> dict[str, Any]:
    """The Optuna user attributes a job is stored with: its key, variant and seed, its resolved
    configuration and hash, the study's data section, and what its stage needs (a grid job's
    point; a confirmation's stage and confirmed trial; a search trial's tune split and seeds)."""
    attrs = {
        Attr.JOB_KEY: job.key,
        Attr.VARIANT: job.variant,
        Attr.SEED: job.seed,
        Attr.CONFIG: job.config.model_dump_json(),
        Attr.CONFIG_HASH: job.config_hash,
        Attr.DATA: data_json(study),
    }
    if job.stage == "grid":
        attrs[Attr.GRID] = json.dumps(job.grid)
    elif job.stage == "confirm":
        attrs[Attr.STAGE] = job.stage
        if job.confirm_of is not None:
            attrs.update({Attr.CONFIRM_OF: job.confirm_of, Attr.CONFIRM_RANK: job.rank})
    else:
        attrs[Attr.SEARCH_PROTOCOL] = protocol_json(study)
    return attrs


def stored_config(trial) -> MethodConfig | None:
    """The configuration stored with a trial (None for a search trial not started yet)."""
    raw = trial.user_attrs.get(Attr.CONFIG)
    return MethodConfig.model_validate_json(raw) if raw else None


def run_config(stored: MethodConfig, here: MethodConfig) -> MethodConfig:
    """What a worker runs: the stored configuration with this machine's execution settings."""
    return with_execution(stored, here)
