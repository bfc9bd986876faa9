"""Loss terms on small inputs whose values are worked out by hand (in the comments) or by a
reference (``F.binary_cross_entropy``, ``F.cross_entropy``, a numpy loop)."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# the code under test, imported in one place (module paths move: edit only these lines)
from tkp_pcl.stage1.losses import equivariance_loss, image_loss, patch_contrastive_error, patch_labels_from_probs

LOG = math.log


# ---- image BCE -------------------------------------------------------------------------------


def test_image_loss_by_hand():
    # one image, two classes: -(log 0.8 + log(1 - 0.25)) / 2
    loss = image_loss(torch.tensor([[0.8, 0.25]]), torch.tensor([[1.0, 0.0]]))
    assert loss.item() == pytest.approx(-(LOG(0.8) + LOG(0.75)) / 2, rel=1e-6)
    # negatives only: -log(1 - 0.4) -log(1 - 0.1), over 2 entries
    loss = image_loss(torch.tensor([[0.4, 0.1]]), torch.tensor([[0.0, 0.0]]))
    assert loss.item() == pytest.approx(-(LOG(0.6) + LOG(0.9)) / 2, rel=1e-6)


def test_image_loss_equals_torch_bce():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 5, generator=g) * 0.98 + 0.01
    y = (torch.rand(3, 5, generator=g) < 0.5).float()
    y[:, 0] = 1  # background in every image
    torch.testing.assert_close(image_loss(p, y), F.binary_cross_entropy(p, y))


def test_image_loss_saturated_scores_are_clamped_to_eps():
    # p = 1 for an absent class: (1 - p) clamped to about eps = 1e-6 -> -log(1e-6) = 13.8, over 2
    loss = image_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(-LOG(1e-6) / 2, rel=1e-2)
    loss = image_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(-LOG(1e-6) / 2, rel=1e-2)
    # a NaN score gives a NaN loss (the training loop catches it), not an exception
    assert torch.isnan(image_loss(torch.tensor([[float("nan"), 0.5]]), torch.tensor([[1.0, 0.0]])))


# ---- flip equivariance -----------------------------------------------------------------------


def test_flip_equivariance_by_hand():
    # grid 1 x 2 (two patches side by side), 2 classes, both present.
    # plain p: patch0 (0.8, 0.2), patch1 (0.4, 0.6); max-normalise each class over patches:
    #   class0 /0.8 -> (1, 0.5), class1 /0.6 -> (1/3, 1); renormalise per patch:
    #   patch0 (1, 1/3)/(4/3) = (3/4, 1/4), patch1 (0.5, 1)/1.5 = (1/3, 2/3); mirrored (patches
    #   swap): target for the flipped view = [(1/3, 2/3), (3/4, 1/4)].
    # flipped q: patch0 (0.3, 0.7), patch1 (0.9, 0.1): class0 /0.9 -> (1/3, 1), class1 /0.7 ->
    #   (1, 1/7); per patch: (1/3, 1)/(4/3) = (1/4, 3/4), (1, 1/7)/(8/7) = (7/8, 1/8); mirrored:
    #   target for the plain view = [(7/8, 1/8), (1/4, 3/4)].
    p = torch.tensor([[[0.8, 0.2], [0.4, 0.6]]])
    q = torch.tensor([[[0.3, 0.7], [0.9, 0.1]]])
    labels = torch.tensor([[1.0, 1.0]])
    ce_q = (-(1 / 3 * LOG(0.3) + 2 / 3 * LOG(0.7)) - (3 / 4 * LOG(0.9) + 1 / 4 * LOG(0.1))) / 2
    ce_p = (-(7 / 8 * LOG(0.8) + 1 / 8 * LOG(0.2)) - (1 / 4 * LOG(0.4) + 3 / 4 * LOG(0.6))) / 2
    loss = equivariance_loss(p, q, labels, (1, 2))
    assert loss.item() == pytest.approx(0.5 * (ce_q + ce_p), rel=1e-5)


def _normalise_np(p, labels, eps=1e-6):
    """ViT-PCM's map normalisation, written as a loop: (N, C), (C,) -> (N, C)."""
    n, c = p.shape
    m = p * labels[None, :]
    for k in range(c):
        m[:, k] = m[:, k] / max(m[:, k].max(), eps)
    for i in range(n):
        m[i] = m[i] / max(m[i].sum(), eps)
    return m


def _mirror_np(v, grid):
    h, w = grid
    return v.reshape(h, w, -1)[:, ::-1].reshape(h * w, -1)


def test_flip_equivariance_equals_a_numpy_loop():
    g = torch.Generator().manual_seed(3)
    grid = (2, 3)  # N = 6, C = 4, B = 2: no two axes of the same length
    p = torch.rand(2, 6, 4, generator=g).softmax(-1)
    q = torch.rand(2, 6, 4, generator=g).softmax(-1)
    labels = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])  # absent classes masked
    total = 0.0
    for b in range(2):
        pn, qn, lab = p[b].double().numpy(), q[b].double().numpy(), labels[b].double().numpy()
        t_for_q = _mirror_np(_normalise_np(pn.copy(), lab), grid)
        t_for_p = _mirror_np(_normalise_np(qn.copy(), lab), grid)
        ce_q = -(t_for_q * np.log(qn)).sum(1).mean()
        ce_p = -(t_for_p * np.log(pn)).sum(1).mean()
        total += 0.5 * (ce_q + ce_p) / 2  # mean over the 2 images
    assert equivariance_loss(p, q, labels, grid).item() == pytest.approx(total, rel=1e-5)


def test_flip_equivariance_gradient_reaches_both_views_only_through_the_student():
    p = torch.tensor([[[0.8, 0.2], [0.4, 0.6]]], requires_grad=True)
    q = torch.tensor([[[0.3, 0.7], [0.9, 0.1]]], requires_grad=True)
    equivariance_loss(p, q, torch.ones(1, 2), (1, 2)).backward()
    # d/dp of 0.5 * mean_patches(-sum t log p) = -0.5 * t / (2 p), t = the flipped view's target
    t_for_p = torch.tensor([[[7 / 8, 1 / 8], [1 / 4, 3 / 4]]])
    torch.testing.assert_close(p.grad, -0.25 * t_for_p / p.detach())


# ---- patch labels ----------------------------------------------------------------------------


def test_patch_labels_pick_the_best_present_class():
    probs = torch.tensor([[[0.2, 0.7, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]]])  # N=4, C=3
    labels = torch.tensor([[1.0, 0.0, 1.0]])  # class 1 absent: never chosen although it wins twice
    out = patch_labels_from_probs(probs, labels)
    assert out.dtype == torch.long and out.shape == (1, 4)
    assert out.tolist() == [[0, 2, 2, 0]]
    # background only: every patch is background
    assert patch_labels_from_probs(probs, torch.tensor([[1.0, 0.0, 0.0]])).tolist() == [[0, 0, 0, 0]]
    # two images with their own labels
    two = torch.cat([probs, probs.flip(1)])
    lab2 = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    assert patch_labels_from_probs(two, lab2).tolist() == [[0, 2, 2, 0], [1, 2, 1, 1]]


# ---- patch contrastive error -----------------------------------------------------------------


def _e(*rows):
    return torch.tensor([rows], dtype=torch.float32)  # (1, M, d)


def test_infonce_by_hand_with_background_and_an_anchor_without_positive():
    # embeddings (1,0), (0,1), (2,0) (normalised to (1,0)); labels 0, 0, 1 (background is a class)
    # cos: s01 = 0, s02 = 1, s12 = 0; T = 0.5 -> logits row0 (-, 0, 2), row1 (0, -, 0)
    # anchor 0 (positive 1): -(0 - log(e^0 + e^2)); anchor 1 (positive 0): -(0 - log 2);
    # anchor 2 has no positive and is left out
    loss = patch_contrastive_error(_e((1.0, 0.0), (0.0, 1.0), (2.0, 0.0)), torch.tensor([[0, 0, 1]]), temperature=0.5)
    assert loss.item() == pytest.approx((LOG(1 + math.e**2) + LOG(2)) / 2, rel=1e-6)


def test_infonce_with_two_positives_averages_them_per_anchor():
    # four patches on the unit circle at 0, 90, 180 and 0 degrees; labels 5, 5, 7, 5
    # T = 1: logits = cosines. anchor 0: others 1 (0), 2 (-1), 3 (1), positives 1 and 3
    #   lse0 = log(e^0 + e^-1 + e^1); -mean(0 - lse0, 1 - lse0) = lse0 - 0.5
    # anchor 1: others 0 (0), 2 (0), 3 (0): lse1 = log 3; positives 0, 3: -mean(-lse1, -lse1) = log 3
    # anchor 3: like anchor 0 (others 0 (1), 1 (0), 2 (-1)): lse0 - 0.5; anchor 2: no positive
    e = _e((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (1.0, 0.0))
    lse0 = LOG(1 + math.exp(-1) + math.e)
    loss = patch_contrastive_error(e, torch.tensor([[5, 5, 7, 5]]), temperature=1.0)
    assert loss.item() == pytest.approx((2 * (lse0 - 0.5) + LOG(3)) / 3, rel=1e-6)


def test_infonce_equals_per_pair_cross_entropy():
    # reference: for each anchor i and positive j, F.cross_entropy of the anchor's logits over the
    # other patches with target j; averaged over positives, then over anchors
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 5, 3, generator=g) * 3
    lab = torch.tensor([[0, 1, 1, 2, 0], [3, 1, -1, 0, 2]])  # -1 ignored
    t = 0.3
    e = F.normalize(emb.reshape(-1, 3), dim=-1)
    ll = lab.reshape(-1)
    e, ll = e[ll >= 0], ll[ll >= 0]
    m = len(ll)
    per_anchor = []
    for i in range(m):
        others = [k for k in range(m) if k != i]
        logits = torch.stack([e[i] @ e[k] / t for k in others])
        pos = [others.index(j) for j in others if ll[j] == ll[i]]
        if pos:
            per_anchor.append(sum(F.cross_entropy(logits[None], torch.tensor([p])) for p in pos) / len(pos))
    expected = torch.stack(per_anchor).mean()
    torch.testing.assert_close(patch_contrastive_error(emb, lab, temperature=t), expected)


def test_margin_by_hand():
    # (1,0), (0.6,0.8), (0,1); labels 0, 0, 1; margin 0.3
    # positives (0,1) both ways: cos 0.6 -> mean(1 - 0.6) = 0.4
    # negatives (0,2), (2,0): cos 0 -> relu(-0.3) = 0; (1,2), (2,1): cos 0.8 -> 0.5; mean = 0.25
    e = _e((1.0, 0.0), (0.6, 0.8), (0.0, 1.0))
    loss = patch_contrastive_error(e, torch.tensor([[0, 0, 1]]), form="margin", margin=0.3)
    assert loss.item() == pytest.approx(0.4 + 0.25, rel=1e-6)
    # margin 0.7: relu(0.8 - 0.7) = 0.1 on 2 of 4 negative pairs -> 0.05
    loss = patch_contrastive_error(e, torch.tensor([[0, 0, 1]]), form="margin", margin=0.7)
    assert loss.item() == pytest.approx(0.4 + 0.05, rel=1e-5)


def test_margin_edges():
    e2 = _e((1.0, 0.0), (0.6, 0.8))
    # two patches of one class: one positive pair, cos 0.6 -> 0.4 (not 0)
    assert patch_contrastive_error(e2, torch.tensor([[3, 3]]), form="margin").item() == pytest.approx(0.4, rel=1e-6)
    # two patches of two classes, no positive: relu(0.6 - 0.3) = 0.3
    assert patch_contrastive_error(e2, torch.tensor([[0, 1]]), form="margin", margin=0.3).item() == pytest.approx(
        0.3, rel=1e-6
    )
    # all negative pairs beyond the margin (cos -1 < 0.3): only the positive term, here 0
    e = _e((1.0, 0.0), (1.0, 0.0), (-1.0, 0.0))
    assert patch_contrastive_error(e, torch.tensor([[0, 0, 1]]), form="margin").item() == pytest.approx(0.0, abs=1e-7)
    # background only, all identical: 0
    assert patch_contrastive_error(e[:, :2], torch.tensor([[0, 0]]), form="margin").item() == pytest.approx(
        0.0, abs=1e-7
    )


def test_margin_equals_a_numpy_loop():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 7, 4, generator=g)
    lab = torch.tensor([[0, 2, 2, 1, 0, 0, 3]])
    e = emb[0].double().numpy()
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    pos, neg = [], []
    for i, j in itertools.permutations(range(7), 2):
        (pos if lab[0, i] == lab[0, j] else neg).append(float(e[i] @ e[j]))
    expected = np.mean([1 - s for s in pos]) + np.mean([max(0.0, s - 0.2) for s in neg])
    assert patch_contrastive_error(emb, lab, form="margin", margin=0.2).item() == pytest.approx(expected, rel=1e-5)


def test_pce_with_fewer_than_two_patches_or_no_pair_is_zero_with_a_graph():
    for form in ("infonce", "margin"):
        one = torch.randn(1, 3, 4, requires_grad=True)
        loss = patch_contrastive_error(one, torch.tensor([[-1, 2, -1]]), form=form)  # one patch kept
        assert loss.item() == 0.0
        loss.backward()
        assert one.grad is not None and not one.grad.any()
    # no positives: the InfoNCE is 0 (every anchor left out)
    e = torch.randn(1, 3, 4, requires_grad=True)
    loss = patch_contrastive_error(e, torch.tensor([[0, 1, 2]]))
    assert loss.item() == 0.0 and loss.requires_grad


def test_pce_ignores_negative_ids_and_keeps_background():
    e = _e((1.0, 0.0), (0.0, 1.0), (2.0, 0.0), (0.3, -0.7))
    with_ignored = patch_contrastive_error(e, torch.tensor([[0, 0, 1, -1]]), temperature=0.5)
    assert with_ignored.item() == pytest.approx((LOG(1 + math.e**2) + LOG(2)) / 2, rel=1e-6)


def test_pce_draws_max_patches_when_there_are_more():
    e = _e((1.0, 0.0), (0.6, 0.8), (0.0, 1.0), (-1.0, 0.0))
    lab = torch.tensor([[0, 0, 1, 1]])
    full = patch_contrastive_error(e, lab, form="margin").item()
    subsets = {
        tuple(s): patch_contrastive_error(e[:, list(s)], lab[:, list(s)], form="margin").item()
        for s in itertools.combinations(range(4), 2)
    }
    got = {
        patch_contrastive_error(e, lab, form="margin", max_patches=2, generator=torch.Generator().manual_seed(s)).item()
        for s in range(12)
    }
    assert all(any(v == pytest.approx(x, abs=1e-6) for x in subsets.values()) for v in got)
    assert len(got) > 1 and full not in got
    # exactly max_patches patches: no draw (the generator is untouched), the full loss
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    assert patch_contrastive_error(e, lab, form="margin", max_patches=4, generator=gen).item() == pytest.approx(full)
    assert torch.equal(gen.get_state(), state)


def test_pce_unknown_form():
    with pytest.raises(ValueError, match=r"^unknown PCE form 'cosine'; valid forms: infonce, margin$"):
        patch_contrastive_error(_e((1.0, 0.0), (0.0, 1.0)), torch.tensor([[0, 0]]), form="cosine")
