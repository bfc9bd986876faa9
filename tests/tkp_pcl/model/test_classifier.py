import os

import pytest
import torch

from tkp_pcl.config import ModelConfig
from tkp_pcl.model import PatchClassifier


def test_outputs_patch_tokens_only():
    cfg = ModelConfig(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2, proj_dim=8)
    m = PatchClassifier(cfg, num_classes=5).eval()
    out = m(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    assert out.grid == (4, 4)
    assert out.probs.shape == (2, 16, 5)  # no class token among the 16 patches
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(2, 16))
    assert out.embeddings.shape == (2, 16, 8)
    torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(2, 16))
    assert m.classifier.bias is None


def test_hv_bilstm_and_a_timm_model_with_registers():
    cfg = ModelConfig(
        backbone="vit_small_patch14_reg4_dinov2",
        img_size=28,
        patch_size=7,
        depth=1,
        embed_dim=32,
        num_heads=2,
        hv_bilstm=True,
        lstm_hidden=8,
    )
    m = PatchClassifier(cfg, num_classes=3).eval()
    assert m.num_prefix == 5  # class token + 4 registers dropped
    out = m(torch.rand(1, 3, 28, 28))
    assert out.probs.shape == (1, 16, 3)


def test_image_size_mismatch_is_a_clear_error():
    """Any whole number of patches runs (position embeddings resampled); anything else is an error."""
    cfg = ModelConfig(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    assert PatchClassifier(cfg, 3)(torch.rand(1, 3, 48, 48)).grid == (6, 6)
    with pytest.raises(ValueError, match="36x36 px are not a whole number of 8x8 px patches"):
        PatchClassifier(cfg, 3)(torch.rand(1, 3, 36, 36))


def test_pretrained_weights_offline_are_a_one_line_error(tmp_path, monkeypatch):
    """pretrained=True asks timm for the weights (the real path); the suite runs offline
    (HF_HUB_OFFLINE=1, tests/conftest.py), here with an empty cache, where that must fail clearly."""
    import huggingface_hub.constants

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    cfg = ModelConfig(
        backbone="vit_tiny_patch16_224",
        pretrained=True,
        img_size=224,
        patch_size=None,
        depth=None,
        embed_dim=None,
        num_heads=None,
    )
    with pytest.raises(RuntimeError) as info:
        PatchClassifier(cfg, 21)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("pretrained weights for 'vit_tiny_patch16_224' could not be loaded (")
    assert msg.endswith(
        "put them in the Hugging Face cache (HF_HOME), or a file in model.pretrained_file, "
        "or set model.pretrained: false"
    )
