"""``model.pretrained_file``: backbone weights from a .pth/.pt/.safetensors timm state dict."""

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from tkp_pcl.config import ModelConfig
from tkp_pcl.model import PatchClassifier, WeightsError, check_pretrained_file, create_backbone

SMALL = ModelConfig(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2, proj_dim=8)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_saved_backbone_loads_back_identically(tmp_path, suffix):
    torch.manual_seed(0)
    src = create_backbone(SMALL).eval()
    path = tmp_path / f"vit{suffix}"
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(sd, path) if suffix == ".safetensors" else torch.save(sd, path)
    torch.manual_seed(1)  # another initialisation, replaced by the file
    m = PatchClassifier(SMALL.model_copy(update={"pretrained_file": str(path)}), 4).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(m.backbone.forward_features(x), src.forward_features(x))
    fresh = PatchClassifier(SMALL, 4).eval()
    assert not torch.equal(fresh.backbone.forward_features(x), src.forward_features(x))


def test_timm_checkpoint_with_head_wrapper_and_another_grid(tmp_path):
    """As timm loads its own weights: {"model": ...} unwrapped, the classifier head dropped, the
    position embeddings of a 48 px (6x6) model resampled to the 32 px (4x4) grid."""
    import timm
    from timm.layers import resample_abs_pos_embed

    src = timm.create_model(
        "vit_tiny_patch16_224", num_classes=10, img_size=48, patch_size=8, depth=1, embed_dim=32, num_heads=2
    )
    torch.save({"model": src.state_dict()}, tmp_path / "ck.pth")
    m = create_backbone(SMALL.model_copy(update={"pretrained_file": str(tmp_path / "ck.pth")}))
    want = resample_abs_pos_embed(src.pos_embed, new_size=(4, 4), old_size=(6, 6), num_prefix_tokens=1)
    torch.testing.assert_close(m.pos_embed, want)
    assert torch.equal(m.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_pretrained_true_with_a_file_takes_the_file(tmp_path):
    """``pretrained: true`` + ``pretrained_file``: the file wins, no Hugging Face lookup."""
    src = create_backbone(SMALL)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    cfg = SMALL.model_copy(update={"pretrained": True, "pretrained_file": str(tmp_path / "w.pth")})
    assert torch.equal(create_backbone(cfg).pos_embed, src.pos_embed)


def test_mismatching_files_are_one_line_errors_naming_path_and_key(tmp_path):
    sd = create_backbone(SMALL).state_dict()
    wide = create_backbone(SMALL.model_copy(update={"embed_dim": 64})).state_dict()
    cases = {
        "shape.pth": (
            {**sd, "blocks.0.mlp.fc1.weight": torch.zeros(3, 3)},
            r"shape.pth: key 'blocks.0.mlp.fc1.weight' has shape \(3, 3\) in the file, \(128, 32\)",
        ),
        "wide.pth": (wide, r"wide.pth: key 'cls_token' has shape \(1, 1, 64\) in the file, \(1, 1, 32\)"),
        "missing.pth": (
            {k: v for k, v in sd.items() if k != "norm.bias"},
            r"missing.pth: key 'norm.bias' .* missing from the file",
        ),
        "extra.pth": (
            {**sd, "blocks.7.ls1.gamma": torch.zeros(32)},
            r"extra.pth: key 'blocks.7.ls1.gamma' of the file is not in",
        ),
        "notdict.pth": ([torch.zeros(1)], r"notdict.pth: not a state dict"),
    }
    for name, (obj, msg) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(WeightsError, match=msg) as e:
            check_pretrained_file(SMALL.model_copy(update={"pretrained_file": str(tmp_path / name)}))
        assert "\n" not in str(e.value)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    for name in ("junk.safetensors", "junk.pth", "absent.pth"):
        with pytest.raises(WeightsError, match=f"{name}: (not a readable state dict|model.pretrained_file not found)"):
            check_pretrained_file(SMALL.model_copy(update={"pretrained_file": str(tmp_path / name)}))
    with pytest.raises(ValidationError, match="pretrained_file must end in .pth, .pt, .safetensors"):
        ModelConfig.model_validate({**SMALL.model_dump(), "pretrained_file": "w.bin"})


@pytest.mark.parametrize("text", [b"epochs: 2\n", b"hello world\n", b"}\n", b"(\n", b"\x80\x02}q\x00.", b""])
def test_a_file_that_is_not_a_pickle_is_a_weights_error(tmp_path, text):
    """A text file named .pth made torch.load raise KeyError (an unknown opcode: 101 for 'e')."""
    (tmp_path / "notes.pth").write_bytes(text)
    with pytest.raises(WeightsError, match="notes.pth: not (a readable state dict|a state dict)") as e:
        check_pretrained_file(SMALL.model_copy(update={"pretrained_file": str(tmp_path / "notes.pth")}))
    assert "\n" not in str(e.value)


def test_a_directory_is_not_called_missing(tmp_path):
    (tmp_path / "weights.pth").mkdir()
    with pytest.raises(WeightsError, match="weights.pth: model.pretrained_file is a directory, not a weights file"):
        check_pretrained_file(SMALL.model_copy(update={"pretrained_file": str(tmp_path / "weights.pth")}))
