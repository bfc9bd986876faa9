import subprocess
import sys

import pytest
import torch

from tkp_pcl.config import LossConfig, MethodConfig, ModelConfig, PoolingConfig, SyntheticDataConfig, TrainConfig
from tkp_pcl.data import load_splits
from tkp_pcl.metrics import miou
from tkp_pcl.model import PatchClassifier
from tkp_pcl.pseudo import make_pseudo_labels
from tkp_pcl.stage1 import NonFiniteLossError, checkpoint, train_stage1

SMALL = ModelConfig(img_size=48, patch_size=8, depth=2, embed_dim=64, num_heads=2, proj_dim=16)


def cfg(epochs=2, **loss):
    return MethodConfig(
        model=SMALL,
        pooling=PoolingConfig(kind="topk", k_ratio=0.1),
        loss=LossConfig(pce_warmup_epochs=0, **loss),
        train=TrainConfig(epochs=epochs, batch_size=32, lr=2e-3, monitor_images=16, seed=0),
    )


@pytest.fixture(scope="module")
def splits():
    return load_splits(SyntheticDataConfig(n_train=192, n_val=32, size=48, min_size=10, max_size=32))


def test_short_training_beats_an_untrained_model(splits):
    c = cfg(epochs=4, pce_weight=0.1)
    c.pseudo.crf.enabled = False
    torch.manual_seed(0)
    chance = miou(make_pseudo_labels(PatchClassifier(SMALL, 7), splits.pseudo, c.pseudo, progress=False).conf)[0]
    seen = []
    res = train_stage1(c, splits, on_epoch_end=lambda e, m: seen.append((e, m)), progress=False)
    trained = miou(make_pseudo_labels(res.model, splits.pseudo, c.pseudo, progress=False).conf)[0]
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    assert {"loss", "loss_cls", "loss_eq", "loss_pce", "monitor_pseudo_miou"} <= set(seen[0][1])
    assert seen[-1][1]["loss_pce"] > 0 and seen[-1][1]["loss"] < seen[0][1]["loss"]
    assert trained > chance + 0.08, (chance, trained)


def test_same_seed_same_result(splits):
    a = train_stage1(cfg(epochs=1), splits, progress=False).history
    b = train_stage1(cfg(epochs=1), splits, progress=False).history
    assert a[0]["loss"] == b[0]["loss"] and a[0]["monitor_pseudo_miou"] == b[0]["monitor_pseudo_miou"]


def test_nan_loss_raises_a_specific_error(splits):
    model = PatchClassifier(SMALL, 7)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="epoch 0 step 0"):
        train_stage1(cfg(epochs=1), splits, progress=False, model=model)


def test_checkpoint_resume_continues_where_it_stopped(splits, tmp_path):
    ck = tmp_path / "stage1.ckpt"
    full = train_stage1(cfg(epochs=2), splits, progress=False).history

    def die_after_first(epoch, metrics):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_stage1(cfg(epochs=2), splits, progress=False, checkpoint_path=ck, on_epoch_end=die_after_first)
    assert ck.is_file() and not (tmp_path / "stage1.ckpt.tmp").exists()
    assert len(checkpoint.load(ck).history) == 1
    epochs_run = []
    resumed = train_stage1(
        cfg(epochs=2), splits, progress=False, checkpoint_path=ck, on_epoch_end=lambda e, m: epochs_run.append(e)
    )
    assert epochs_run == [1]
    assert resumed.history[1]["loss"] == pytest.approx(full[1]["loss"], rel=1e-6)


def test_method_package_imports_no_harness_or_tracker():
    code = (
        "import sys, tkp_pcl.stage1, tkp_pcl.stage2, tkp_pcl.pseudo, tkp_pcl.data, tkp_pcl.model; "
        "bad = [m for m in ('mlflow', 'optuna', 'bench') if m in sys.modules]; print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_torch_compile_trains_the_same_model(splits):
    eager = train_stage1(cfg(epochs=1), splits, progress=False).history[0]
    c = cfg(epochs=1)
    c.train.compile = True
    compiled = train_stage1(c, splits, progress=False).history[0]
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-3)
    assert compiled["monitor_pseudo_miou"] == pytest.approx(eager["monitor_pseudo_miou"], abs=0.02)
