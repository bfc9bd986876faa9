"""ViT-PCM's mosaic equivariance loss against a numpy loop written from its description:
undo view 1's flips, crop (in patches) and halve (a 2x2 mean; a crop of half the grid is kept
as is), apply view 2's flips, mask, max-normalise, renormalise; cross-entropy with the student's
cell of the 2x2 mosaic (cell k of mosaic m at row k // 2, column k % 2), averaged over cells and
patches; padding cells of the last mosaic left out."""

import math

import numpy as np
import pytest
import torch

# the code under test, imported in one place (module paths move: edit only these lines)
from tkp_pcl.stage1.equivariance import mosaic_equivariance_loss, move_maps, teacher_targets

H = 6  # patch grid side (cells 3 x 3); B = 5 images (2 mosaics, 3 padding cells); C = 3
B, C = 5, 3
FLIPS1 = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
FLIPS2 = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
CROPS = torch.tensor([[0, 0, 0], [1, 2, 3], [0, 0, 0], [3, 0, 3], [2, 3, 3]])  # (top, left, side)
LABELS = torch.tensor([[1.0, 1, 0], [1, 0, 1], [1, 1, 1], [1, 0, 0], [1, 1, 1]])


def reference_target(t, flips1, crop, flips2, labels, eps=1e-6):
    """One image: (N, C) teacher probabilities -> (3, 3, C) target, in numpy."""
    m = t.reshape(H, H, C)  # row-major patches
    lr, ud, tr = flips1
    if tr:  # undo view 1: the transpose was applied last, so it is undone first
        m = m.transpose(1, 0, 2)
    if ud:
        m = m[::-1]
    if lr:
        m = m[:, ::-1]
    top, left, side = crop
    if side:  # a crop of half the grid is already view 2's size
        m = m[top : top + side, left : left + side]
    else:  # halving: the mean of each 2x2 block
        m = m.reshape(H // 2, 2, H // 2, 2, C).mean((1, 3))
    lr, ud, tr = flips2
    if lr:
        m = m[:, ::-1]
    if ud:
        m = m[::-1]
    if tr:
        m = m.transpose(1, 0, 2)
    m = m * labels
    m = m / np.maximum(m.reshape(-1, C).max(0), eps)
    return m / np.maximum(m.sum(-1, keepdims=True), eps)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.rand(B, H * H, C, generator=g).softmax(-1)
    student = (3 * torch.rand(2, H * H, C, generator=g)).softmax(-1)
    return teacher, student


def test_mosaic_loss_equals_a_numpy_loop():
    teacher, student = inputs()
    total = []
    for i in range(B):
        target = reference_target(
            teacher[i].double().numpy(),
            FLIPS1[i].tolist(),
            CROPS[i].tolist(),
            FLIPS2[i].tolist(),
            LABELS[i].double().numpy(),
        )
        m, k = divmod(i, 4)
        r, c = divmod(k, 2)
        cell = student[m].double().numpy().reshape(H, H, C)[3 * r : 3 * r + 3, 3 * c : 3 * c + 3]
        total.append(-(target * np.log(cell)).sum(-1))  # (3, 3): one value per patch
    expected = float(np.mean(total))
    loss = mosaic_equivariance_loss(teacher, student, LABELS, (H, H), FLIPS1, CROPS, FLIPS2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the targets themselves, cell by cell
    t = teacher_targets(teacher, LABELS, (H, H), FLIPS1, CROPS, FLIPS2)
    assert t.shape == (B, C, 3, 3)
    for i in range(B):
        ref = reference_target(
            teacher[i].double().numpy(),
            FLIPS1[i].tolist(),
            CROPS[i].tolist(),
            FLIPS2[i].tolist(),
            LABELS[i].double().numpy(),
        )
        np.testing.assert_allclose(t[i].permute(1, 2, 0).numpy(), ref, rtol=1e-5, atol=1e-6)


def test_move_maps_by_hand_on_a_numbered_grid():
    # values 0..35 on the 6x6 grid, one channel; image 1: view 1 mirrored left-right, crop at
    # (top 1, left 2, side 3), view 2 unflipped: the crop of the unmirrored grid, rows 1-3, cols 2-4
    grid = torch.arange(36.0).reshape(1, 1, 6, 6)
    maps = grid.flip(-1).repeat(B, 1, 1, 1)  # view 1 of each image, as if all were mirrored
    flips1 = torch.zeros(B, 3, dtype=torch.bool)
    flips1[:, 0] = True
    out = move_maps(maps, flips1, CROPS, torch.zeros(B, 3, dtype=torch.bool))
    assert out.shape == (B, 1, 3, 3)
    assert out[1, 0].tolist() == [[8, 9, 10], [14, 15, 16], [20, 21, 22]]
    # image 0, no crop: 2x2 means, e.g. the top-left block (0 + 1 + 6 + 7) / 4 = 3.5
    assert out[0, 0].tolist() == [[3.5, 5.5, 7.5], [15.5, 17.5, 19.5], [27.5, 29.5, 31.5]]


def test_mosaic_loss_by_hand_on_uniform_maps():
    # a uniform teacher: after masking to the present classes and normalising, the target is
    # uniform over them; a student uniform over C: loss = log C for every cell, whatever the draws
    teacher = torch.full((B, H * H, C), 1 / C)
    student = torch.full((2, H * H, C), 1 / C)
    loss = mosaic_equivariance_loss(teacher, student, LABELS, (H, H), FLIPS1, CROPS, FLIPS2)
    assert loss.item() == pytest.approx(math.log(C), rel=1e-6)
    # a student that is 0.5 / 0.25 / 0.25 everywhere: per image -(mean over present classes of log
    # q); images 0 and 1 have 2 classes, 2 and 4 have 3, image 3 only background
    q = torch.tensor([0.5, 0.25, 0.25])
    per_image = [
        -(math.log(0.5) + math.log(0.25)) / 2,
        -(math.log(0.5) + math.log(0.25)) / 2,
        -(math.log(0.5) + 2 * math.log(0.25)) / 3,
        -math.log(0.5),
        -(math.log(0.5) + 2 * math.log(0.25)) / 3,
    ]
    loss = mosaic_equivariance_loss(teacher, q.expand(2, H * H, C).clone(), LABELS, (H, H), FLIPS1, CROPS, FLIPS2)
    assert loss.item() == pytest.approx(sum(per_image) / B, rel=1e-6)


def test_gradient_reaches_the_student_only():
    teacher, student = inputs(1)
    teacher.requires_grad_()
    student.requires_grad_()
    mosaic_equivariance_loss(teacher, student, LABELS, (H, H), FLIPS1, CROPS, FLIPS2).backward()
    assert teacher.grad is None and student.grad is not None
    # the padding cells of the second mosaic (cells 5, 6, 7) get no gradient; cell 4 does
    g = student.grad[1].reshape(H, H, C)
    assert not g[:3, 3:].any() and not g[3:].any() and g[:3, :3].abs().sum() > 0


@pytest.mark.parametrize("grid", [(5, 5), (4, 6), (6, 4), (3, 4)])
def test_grids_that_are_not_square_and_even_are_refused(grid):
    n = grid[0] * grid[1]
    with pytest.raises(ValueError, match=rf"square patch grid of even side, got {grid[0]}x{grid[1]}"):
        mosaic_equivariance_loss(
            torch.rand(1, n, 2), torch.rand(1, n, 2), torch.ones(1, 2), grid, FLIPS1[:1], CROPS[:1], FLIPS2[:1]
        )
