"""From a study's sections to method configurations: dotted-path merging and validation.

A variant's configuration is ``base`` deep-merged with the variant's overrides (nested keys or
dotted paths such as ``pooling.k_ratio``), validated as a :class:`tkp_pcl.config.MethodConfig`;
a grid point or a search trial's sampled values are merged on top the same way. Every error is a
:class:`StudyError` naming the YAML path.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from tkp_pcl.config import MethodConfig

from .errors import StudyError

DATA_KINDS = ("synthetic", "voc", "coco")
MAX_QUOTED = 80  # characters of a bad value an error message quotes


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
            raise StudyError(f"{dotted}: {quote(p)} is a value, not a section")
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


def quote(value: Any) -> str:
    """``repr(value)``, cut to :data:`MAX_QUOTED` characters (an error never prints a whole input)."""
    text = repr(value)
    return text if len(text) <= MAX_QUOTED else f"{text[:MAX_QUOTED]}... ({len(text)} characters)"


def cut(text: str) -> str:
    """``text`` (a key of the file, in a YAML path) cut to :data:`MAX_QUOTED` characters."""
    return text if len(text) <= MAX_QUOTED else f"{text[:MAX_QUOTED]}... ({len(text)} characters)"


def format_error(err: dict[str, Any], prefix: str) -> str:
    """One pydantic error -> ``prefix.loc: message`` (one line)."""
    loc = tuple(p for p in err["loc"] if not str(p).startswith(("function-after", "tagged-union")))
    if len(loc) > 1 and loc[0] == "data" and loc[1] in DATA_KINDS:  # the union's tag, not a key
        loc = (loc[0], *loc[2:])
    path = ".".join(cut(str(p)) for p in (prefix, *loc) if p != "")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_at(loc) if prefix != "" else []
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"{path}: unknown key{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict):
        msg += f" (got {quote(err['input'])})"
    return f"{path}: {msg}"


def validate_method(raw: dict[str, Any], where: str) -> MethodConfig:
    """``raw`` as a :class:`MethodConfig`; an error names the YAML path ``where``."""
    try:
        return MethodConfig.model_validate(raw)
    except ValidationError as e:
        raise StudyError(format_error(e.errors()[0], where)) from None


def variant_config(study, variant: str) -> MethodConfig:
    """The resolved configuration of ``variant`` (``base`` + its overrides), seed as in ``base``."""
    validate_method(study.base, "base")
    where = f"variants.{variant}"
    return validate_method(merge(study.base, study.variants[variant], where), where)


def search_variant(study) -> str:
    """The variant a search samples around: ``search.variant``, else the first variant."""
    assert study.search is not None
    return study.search.variant or next(iter(study.variants))


def search_config(study, params: dict[str, Any]) -> MethodConfig:
    """The configuration of a search trial: the searched variant with the sampled values, trained
    with the first of ``search.seeds``."""
    variant = search_variant(study)
    raw = merge(merge(study.base, study.variants[variant]), params, "search.space")
    cfg = validate_method(raw, "search.space")
    cfg.train.seed = study.search.seeds[0]
    return cfg


def with_seed(cfg: MethodConfig, seed: int) -> MethodConfig:
    """A copy of ``cfg`` with ``train.seed`` set to ``seed``."""
    out = cfg.model_copy(deep=True)
    out.train.seed = seed
    return out


def with_execution_values(study, values: dict[str, Any]):
    """A copy of ``study`` whose configurations all take ``values`` (dotted execution settings,
    e.g. ``{"train.num_threads": 2}`` from ``--threads``): set in ``base`` and in every variant
    that sets them itself. Execution settings are outside a configuration's identity."""
    variants = {
        name: merge(overrides, {k: v for k, v in values.items() if k in flatten(overrides)})
        for name, overrides in study.variants.items()
    }
    out = study.model_copy(update={"base": merge(study.base, values), "variants": variants})
    out._jobs = None
    return out
