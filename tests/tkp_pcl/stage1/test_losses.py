import torch
import torch.nn.functional as F

from tkp_pcl.stage1.losses import equivariance_loss, image_loss, patch_contrastive_error
from tkp_pcl.stage1.maps import flip_patches


def clustered(separated: bool, n=64, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    centres = F.normalize(torch.randn(4, d, generator=g), dim=-1)
    if separated:
        emb = centres[labels] + 0.05 * torch.randn(n, d, generator=g)
    else:
        emb = torch.randn(n, d, generator=g)
    return emb[None], labels[None]


def test_pce_lower_for_separated_than_mixed():
    for form in ("infonce", "margin"):
        sep = patch_contrastive_error(*clustered(True), form=form)
        mixed = patch_contrastive_error(*clustered(False), form=form)
        assert sep < mixed - 0.1, (form, sep, mixed)


def test_pce_gradients_flow_and_pull_same_class_together():
    emb, labels = clustered(False)
    emb = emb.clone().requires_grad_()
    loss = patch_contrastive_error(emb, labels, temperature=0.2)
    loss.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = emb - 5.0 * emb.grad
    assert patch_contrastive_error(stepped, labels, temperature=0.2) < loss


def test_pce_samples_at_most_max_patches():
    emb, labels = clustered(True, n=500)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = patch_contrastive_error(emb, labels, max_patches=32, generator=g1)
    b = patch_contrastive_error(emb, labels, max_patches=32, generator=g2)
    assert torch.equal(a, b)  # deterministic from the generator
    assert torch.isfinite(a)


def test_pce_without_positives_is_zero_with_graph():
    emb = torch.randn(1, 3, 8, requires_grad=True)
    loss = patch_contrastive_error(emb, torch.tensor([[0, 1, 2]]))
    assert loss.item() == 0.0
    loss.backward()


def test_pce_ignores_negative_labels():
    emb, labels = clustered(True)
    ignored = labels.clone()
    ignored[0, :32] = -1
    full = patch_contrastive_error(emb[:, 32:], labels[:, 32:])
    assert torch.allclose(patch_contrastive_error(emb, ignored), full)


def test_image_loss():
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    good = image_loss(torch.tensor([[0.99, 0.01, 0.95]]), labels)
    bad = image_loss(torch.tensor([[0.5, 0.9, 0.1]]), labels)
    assert good < 0.05 < bad
    assert torch.isfinite(image_loss(torch.tensor([[1.0, 0.0, 0.0]]), labels))


def test_equivariance_prefers_mirrored_predictions():
    g = torch.Generator().manual_seed(0)
    grid = (4, 4)
    probs = torch.rand(2, 16, 3, generator=g).softmax(-1)
    labels = torch.ones(2, 3)
    mirrored = flip_patches(probs, grid)
    unrelated = torch.rand(2, 16, 3, generator=g).softmax(-1)
    assert equivariance_loss(probs, mirrored, labels, grid) < equivariance_loss(probs, unrelated, labels, grid)
