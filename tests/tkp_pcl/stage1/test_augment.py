"""ViT-PCM's views: each teacher patch lands where the student sees it; exact loss values."""

import math

import pytest
import torch
import torch.nn.functional as F

from tkp_pcl.stage1.augment import (
    apply_flips,
    color_jitter,
    crop_patches,
    crop_resize,
    draw_crops,
    invert_flips,
    mosaic,
    unmosaic,
    view2,
)
from tkp_pcl.stage1.equivariance import mosaic_equivariance_loss, move_maps, teacher_targets
from tkp_pcl.stage1.maps import to_grid

P, H = 4, 4  # patch size (px) and patch-grid side: 16 px images, 2x2-patch mosaic cells


def patch_constant_images(b: int, c: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, c, H, H) distinct patch values and the (B, c, H*P, H*P) image made of them."""
    values = torch.arange(b * c * H * H, dtype=torch.float32).reshape(b, c, H, H)
    return values, values.repeat_interleave(P, -2).repeat_interleave(P, -1)


def patchify(images: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(images, P)


ALL_FLIPS = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=torch.bool)


def test_hand_placement_of_flips_and_transpose():
    g = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(apply_flips(g, torch.tensor([[True, False, False]])), g.flip(-1))
    assert torch.equal(apply_flips(g, torch.tensor([[False, True, False]])), g.flip(-2))
    # left-right flip, then transpose: patch (i, j) -> (w-1-j, i)... read back by hand
    out = apply_flips(g, torch.tensor([[True, False, True]]))[0, 0]
    for i in range(4):
        for j in range(4):
            assert out[3 - j, i] == g[0, 0, i, j]
    for f in ALL_FLIPS:
        assert torch.equal(invert_flips(apply_flips(g, f[None]), f[None]), g)


def test_mosaic_places_cells_row_major_and_unmosaic_inverts():
    cells = torch.arange(6 * 2 * 2 * 2.0).reshape(6, 2, 2, 2)
    m = mosaic(cells)
    assert m.shape == (2, 2, 4, 4)
    assert torch.equal(m[0, :, :2, 2:], cells[1]) and torch.equal(m[0, :, 2:, :2], cells[2])
    assert torch.equal(m[1, :, :2, :2], cells[4]) and torch.equal(m[1, :, :2, 2:], cells[5])
    assert m[1, :, 2:].abs().sum() == 0  # the partial mosaic is padded with zeros
    assert torch.equal(unmosaic(m, 6), cells)


@pytest.mark.parametrize("crop", [False, True])
def test_teacher_patch_lands_where_the_student_sees_it(crop):
    """Transform the image (view 1 and view 2, mosaic) and re-patchify it, vs moving the patch
    maps of view 1 with the same draws: identical, for every flip/transpose combination."""
    b = 8
    values, images = patch_constant_images(b)
    flips1 = ALL_FLIPS
    flips2 = ALL_FLIPS.flip(0)
    side = H // 2 if crop else 0  # a crop of half the grid: no resampling inside a patch
    crops = torch.tensor([[i % 3, (i * 2) % 3, side] for i in range(b)])
    crops[:, :2] = crops[:, :2].clamp_max(H - side) if crop else 0
    view1 = apply_flips(images, flips1)
    student_sees = unmosaic(patchify(mosaic(view2(images, crops, flips2, unit=P, size=H * P // 2))), b)
    teacher_maps = patchify(view1)  # what the teacher predicts on, patch by patch
    moved = move_maps(teacher_maps, flips1, crops, flips2)
    assert moved.shape == (b, 3, H // 2, H // 2)
    torch.testing.assert_close(moved, student_sees, rtol=0, atol=1e-4)
    # and by hand for image 7 (no view-2 flips): its mosaic cell sees the 2x2 means of its crop
    assert not flips2[7].any()
    top, left, s = crops[7].tolist()
    region = values[7, :, top : top + (s or H), left : left + (s or H)]
    torch.testing.assert_close(student_sees[7], F.adaptive_avg_pool2d(region, H // 2), rtol=0, atol=1e-4)


def test_crop_size_and_draws_follow_vitpcm():
    assert crop_patches(24) == 8 and crop_patches(8) == 3 and crop_patches(6) == 2
    g = torch.Generator().manual_seed(0)
    crops = draw_crops(1000, 24, 8, 0.3, g)
    cropped = crops[:, 2] > 0
    assert 0.25 < cropped.float().mean() < 0.35
    assert crops[cropped, :2].max() <= 16 and (crops[~cropped] == 0).all()
    constant = torch.full((2, 3, 32, 32), 0.25)
    resized = crop_resize(constant, torch.tensor([[1, 2, 3], [0, 0, 0]]), 8, 16)
    torch.testing.assert_close(resized, constant[..., :16, :16])


def test_loss_is_zero_when_the_student_sees_the_moved_teacher_and_log_c_when_uniform():
    b, c = 5, 3
    labels = torch.ones(b, c)
    # one-hot teacher maps, constant on 2x2 blocks, every class reaching 1: normalising keeps them
    blocks = torch.tensor([[0, 1], [2, 0]])
    onehot = F.one_hot(blocks, c).permute(2, 0, 1).float()  # (C, 2, 2)
    maps = onehot.repeat_interleave(2, -1).repeat_interleave(2, -2)[None].repeat(b, 1, 1, 1)  # (B, C, 4, 4)
    teacher = maps.flatten(2).transpose(1, 2)  # (B, N, C)
    none = torch.zeros(b, 3, dtype=torch.bool)
    no_crop = torch.zeros(b, 3, dtype=torch.long)
    target = teacher_targets(teacher, labels, (4, 4), none, no_crop, none)
    torch.testing.assert_close(target, onehot[None].expand(b, -1, -1, -1))
    student = mosaic(target).flatten(2).transpose(1, 2)  # (2, N, C): the moved teacher itself
    assert mosaic_equivariance_loss(teacher, student, labels, (4, 4), none, no_crop, none).item() == 0.0
    uniform = torch.full_like(student, 1 / c)
    loss = mosaic_equivariance_loss(teacher, uniform, labels, (4, 4), none, no_crop, none)
    assert loss.item() == pytest.approx(math.log(c), rel=1e-6)


def test_targets_mask_absent_classes_and_follow_the_transform():
    g = torch.Generator().manual_seed(0)
    teacher = torch.rand(2, 16, 4, generator=g).softmax(-1)
    labels = torch.tensor([[1.0, 0, 1, 0], [1, 1, 1, 1]])
    flips1 = torch.tensor([[True, False, True], [False, True, False]])
    flips2 = torch.tensor([[False, True, True], [True, True, False]])
    crops = torch.tensor([[1, 2, 2], [0, 0, 0]])
    t = teacher_targets(teacher, labels, (4, 4), flips1, crops, flips2)
    assert (t[0, [1, 3]] == 0).all()
    torch.testing.assert_close(t.sum(1), torch.ones(2, 2, 2))
    # normalised after the move: each present class max-normalised over the moved (cropped) map
    moved = move_maps(to_grid(teacher, (4, 4)), flips1, crops, flips2) * labels[:, :, None, None]
    moved = moved / moved.amax((2, 3), keepdim=True).clamp_min(1e-6)
    torch.testing.assert_close(t, moved / moved.sum(1, keepdim=True))


def test_colour_jitter_is_reproducible_and_changes_colours():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a = color_jitter(x, torch.Generator().manual_seed(0))
    b = color_jitter(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, x) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(color_jitter(x, torch.Generator(), p=0.0), x)


def test_vitpcm_form_refuses_an_odd_patch_grid():
    from tkp_pcl.config import LossConfig, MethodConfig, ModelConfig

    with pytest.raises(ValueError, match="must be even"):
        MethodConfig(model=ModelConfig(img_size=40, patch_size=8), loss=LossConfig(eq_form="vitpcm"))
    with pytest.raises(ValueError, match="even side"):
        mosaic_equivariance_loss(
            torch.rand(1, 9, 2),
            torch.rand(1, 9, 2),
            torch.ones(1, 2),
            (3, 3),
            *[torch.zeros(1, 3, dtype=torch.bool)] * 1,
            torch.zeros(1, 3, dtype=torch.long),
            torch.zeros(1, 3, dtype=torch.bool),
        )
