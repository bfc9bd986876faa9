"""The stage-1 checkpoint: one typed error for a file that cannot be resumed from, and a resume
from a checkpoint the caller already read."""

import pytest
import torch

from tkp_pcl.config import LossConfig, MethodConfig, ModelConfig, SyntheticDataConfig, TrainConfig
from tkp_pcl.data import load_splits
from tkp_pcl.stage1 import CheckpointError, checkpoint, train_stage1

SMALL = ModelConfig(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2, proj_dim=8)


@pytest.mark.parametrize(
    "content,reason", [(b"", "an empty file"), (b"not a checkpoint at all" * 9, "not a checkpoint (")]
)
def test_unreadable_files_are_one_typed_error(tmp_path, content, reason):
    path = tmp_path / "c.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert info.value.reason.startswith(reason) and info.value.path == path and str(path) in str(info.value)


def test_missing_keys_are_named(tmp_path):
    checkpoint.save({"model": {}, "history": torch.zeros(1, 1)}, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match="missing optimizer, scheduler, generator, torch_rng, history_keys$"):
        checkpoint.load(tmp_path / "c.ckpt")


def test_resume_from_a_loaded_checkpoint_reads_no_file(tmp_path):
    cfg = MethodConfig(
        model=SMALL,
        loss=LossConfig(pce_warmup_epochs=0),
        train=TrainConfig(epochs=2, batch_size=16, monitor_images=4, warmup_epochs=0),
    )
    splits = load_splits(SyntheticDataConfig(n_train=32, n_val=4, size=32, min_size=8, max_size=20))
    full = train_stage1(cfg, splits, progress=False).history
    ck = tmp_path / "s.ckpt"

    def stop(epoch, metrics):
        raise KeyboardInterrupt

    meta = checkpoint.make_meta("abc", "job|seed=0", cfg)
    with pytest.raises(KeyboardInterrupt):
        train_stage1(cfg, splits, progress=False, checkpoint_path=ck, checkpoint_meta=meta, on_epoch_end=stop)
    state = checkpoint.load(ck)
    assert state.config_hash == "abc" and state.meta["job_key"] == "job|seed=0" and len(state.history) == 1
    ck.unlink()
    resumed = train_stage1(cfg, splits, progress=False, resume=state)
    assert len(resumed.history) == 2 and resumed.history[1]["loss"] == full[1]["loss"]


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs (needs root; skipped otherwise)."""
    import os
    import subprocess

    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_is_a_typed_error_naming_the_path_and_leaves_the_old_checkpoint(full_disk):
    """Before: RuntimeError 'basic_ios::clear: iostream error', no path, a half-written .tmp left."""
    from tkp_pcl.stage1.checkpoint import CheckpointWriteError

    path = full_disk / "run" / "stage1.ckpt"
    checkpoint.save({"w": torch.zeros(1000)}, path)
    with pytest.raises(CheckpointWriteError) as info:
        checkpoint.save({"w": torch.zeros(1_000_000)}, path)  # 4 MB on a 1 MiB disk
    assert str(info.value) == f"checkpoint {path}: cannot write (No space left on device)"
    assert isinstance(info.value, OSError) and info.value.errno == 28
    assert sorted(p.name for p in path.parent.iterdir()) == ["stage1.ckpt"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(1000))


def test_a_folder_that_cannot_hold_it_is_a_typed_error(tmp_path):
    from tkp_pcl.stage1.checkpoint import CheckpointWriteError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(
        CheckpointWriteError, match=r"checkpoint .*afile/c.ckpt: cannot write \((Not a directory|File exists)\)"
    ):
        checkpoint.save({"w": torch.zeros(1)}, tmp_path / "afile" / "c.ckpt")
    (tmp_path / "c.ckpt.tmp").mkdir()  # where the temporary file goes
    with pytest.raises(CheckpointWriteError, match=r"c.ckpt: cannot write \(Is a directory\)"):
        checkpoint.save({"w": torch.zeros(1)}, tmp_path / "c.ckpt")
