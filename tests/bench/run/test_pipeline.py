"""The checkpoint policy of a trial: unreadable or stale checkpoints are moved aside, never resumed."""

from __future__ import annotations

import os

import pytest
import torch

from bench.run.pipeline import usable_checkpoint
from tkp_pcl.stage1 import checkpoint


def _checkpoint(path, meta):
    state = {
        "model": {"w": torch.zeros(2)},
        "optimizer": {},
        "scheduler": {},
        "generator": torch.zeros(3, dtype=torch.uint8),
        "torch_rng": torch.zeros(3, dtype=torch.uint8),
        "history_keys": ["loss"],
        "history": torch.zeros(2, 1),
        "meta": meta,
    }
    checkpoint.save(state, path)


@pytest.mark.parametrize("content", [os.urandom(4096), b""], ids=["random-bytes", "zero-bytes"])
def test_an_unreadable_checkpoint_is_moved_aside_and_named(tmp_path, capsys, content):
    ckpt = tmp_path / "abc.ckpt"
    ckpt.write_bytes(content)
    state, reason = usable_checkpoint(ckpt, "h")
    assert state is None and str(ckpt) in reason and not ckpt.exists()
    aside = list(tmp_path.glob("abc.ckpt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content
    err = capsys.readouterr().err
    assert err.startswith(f"bench: warning: unreadable checkpoint {ckpt}: ") and err.count("\n") == 1
    assert ("an empty file" if not content else "not a checkpoint (") in err and "weights_only" not in err


def test_checkpoint_with_missing_keys_or_another_configuration_is_not_resumed(tmp_path, capsys):
    ckpt = tmp_path / "a.ckpt"
    checkpoint.save({"model": {}}, ckpt)
    state, reason = usable_checkpoint(ckpt, "h")
    assert state is None and "missing optimizer, scheduler" in reason and list(tmp_path.glob("a.ckpt.corrupt-*"))
    _checkpoint(ckpt, {"config_hash": "old"})
    state, reason = usable_checkpoint(ckpt, "new")
    assert state is None and "made with configuration old, not new" in reason and list(tmp_path.glob("a.ckpt.stale-*"))
    _checkpoint(ckpt, {"config_hash": "new"})
    state, reason = usable_checkpoint(ckpt, "new")
    assert reason is None and len(state.history) == 2 and ckpt.exists()
    assert usable_checkpoint(tmp_path / "none.ckpt", "new") == (None, None)
