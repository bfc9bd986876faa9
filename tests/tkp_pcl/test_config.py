"""Execution settings are marked where they are declared; the identity of a configuration is
every other field."""

from typing import Literal

from pydantic import BaseModel, Field

from bench.study import config_hash
from tkp_pcl.config import EXECUTION, EXECUTION_KEYS, MethodConfig, execution_paths, with_execution

#: The list that was written out by hand before the marks.
LISTED = (
    "train.device",
    "train.amp",
    "train.compile",
    "train.num_threads",
    "segment.amp",
    "segment.channels_last",
    "segment.compile",
    "pseudo.workers",
    "data.loader_workers",
)


def test_derived_execution_keys_are_the_listed_ones():
    assert sorted(EXECUTION_KEYS) == sorted(LISTED) and len(set(EXECUTION_KEYS)) == len(EXECUTION_KEYS)


def test_a_marked_field_is_an_execution_setting_and_an_unmarked_one_is_not():
    class Inner(BaseModel):
        speed: int = Field(1, json_schema_extra=EXECUTION)
        rate: float = 0.1

    class Outer(BaseModel):
        inner: Inner = Field(default_factory=Inner)
        kind: Literal["a", "b"] = "a"
        workers: int = Field(2, json_schema_extra=EXECUTION)

    assert execution_paths(Outer) == ["inner.speed", "workers"]


def test_only_unmarked_fields_change_the_identity():
    base = MethodConfig()
    assert "train.lr" not in EXECUTION_KEYS
    assert config_hash(base.model_copy(update={"train": base.train.model_copy(update={"lr": 0.5})})) != config_hash(
        base
    )
    fast = MethodConfig.model_validate(
        {"train": {"device": "cpu", "amp": True, "num_threads": 3}, "pseudo": {"workers": 5}}
    )
    assert config_hash(fast) == config_hash(base)
    moved = with_execution(base, fast)
    assert moved.train.num_threads == 3 and moved.pseudo.workers == 5 and moved.train.lr == base.train.lr


def _float_fields(model: type[BaseModel], prefix: str = ""):
    """(dotted path, model, name) of every float field under ``model``."""
    for name, f in model.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            yield from _float_fields(f.annotation, f"{prefix}{name}.")
        elif "float" in str(f.annotation):
            yield f"{prefix}{name}", model, name


def test_non_finite_numbers_are_refused_everywhere():
    """A configuration is stored as JSON, which writes inf and nan as null: neither may get in."""
    import pytest
    from pydantic import ValidationError

    from tkp_pcl.config import CocoDataConfig, SyntheticDataConfig, VOCDataConfig

    fields = [*_float_fields(MethodConfig), *_float_fields(SyntheticDataConfig, "data.")]
    assert len(fields) > 30 and "train.lr" in [p for p, _, _ in fields]
    for _path, model, name in fields:
        for bad in (float("inf"), float("-inf"), float("nan")):
            value = [1.0, bad] if "list" in str(model.model_fields[name].annotation) else bad
            with pytest.raises(ValidationError, match="finite number"):
                model.model_validate({name: value})
    for model in (MethodConfig, SyntheticDataConfig, VOCDataConfig, CocoDataConfig):
        assert model.model_config["allow_inf_nan"] is False


def test_seeds_and_epochs_are_bounded():
    import pytest
    from pydantic import ValidationError

    from tkp_pcl.config import SEED_MAX, SyntheticDataConfig

    assert MethodConfig.model_validate({"train": {"seed": SEED_MAX}}).train.seed == 2**32 - 1
    for bad in (
        {"train": {"seed": 2**32}},
        {"train": {"seed": -1}},
        {"train": {"epochs": 10**12}},
        {"segment": {"epochs": 10_001}},
    ):
        with pytest.raises(ValidationError):
            MethodConfig.model_validate(bad)
    with pytest.raises(ValidationError):
        SyntheticDataConfig(seed=10**20)
