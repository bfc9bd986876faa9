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
        backbone="vit_small_patch14_reg4_dinov2", img_size=28, patch_size=7, depth=1,
        embed_dim=32, num_heads=2, hv_bilstm=True, lstm_hidden=8,
    )  # fmt: skip
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


def test_pretrained_path_is_real():
    """pretrained=True asks timm for the weights; offline and uncached it must fail clearly."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    cfg = ModelConfig(backbone="vit_tiny_patch16_224", pretrained=True, img_size=224,
                      patch_size=None, depth=None, embed_dim=None, num_heads=None)  # fmt: skip
    try:
        m = PatchClassifier(cfg, 21)
    except Exception as e:  # no weights on this machine
        pytest.skip(f"no pretrained weights here: {type(e).__name__}")
    assert m.grid == (14, 14)
