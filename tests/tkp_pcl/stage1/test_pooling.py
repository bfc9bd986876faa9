import pytest
import torch

from tkp_pcl.stage1.pooling import POOLINGS, pool, resolve_k


def scores(b=2, n=10, c=3, seed=0):
    return torch.rand(b, n, c, generator=torch.Generator().manual_seed(seed))


def test_topk_with_k1_is_max():
    s = scores()
    assert torch.equal(pool(s, "topk", k=1), pool(s, "max"))
    # k_ratio small enough that round(k_ratio * N) == 0 still gives K = 1
    assert torch.equal(pool(s, "topk", k_ratio=0.01), s.amax(1))


def test_topk_with_ratio_1_is_mean():
    s = scores()
    torch.testing.assert_close(pool(s, "topk", k_ratio=1.0), pool(s, "mean"))


def test_topk_hand_computed():
    # one image, 5 patches, 2 classes
    s = torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.6], [0.5, 0.0]]])
    # K = round(0.4 * 5) = 2: class 0 -> (0.9 + 0.7) / 2, class 1 -> (0.8 + 0.6) / 2
    torch.testing.assert_close(pool(s, "topk", k_ratio=0.4), torch.tensor([[0.8, 0.7]]))
    torch.testing.assert_close(pool(s, "topk", k=3), torch.tensor([[0.7, 1.7 / 3]]))
    torch.testing.assert_close(pool(s, "max"), torch.tensor([[0.9, 0.8]]))
    torch.testing.assert_close(pool(s, "mean"), torch.tensor([[0.48, 0.36]]))


def test_resolve_k():
    assert resolve_k(576, 0.1) == 58
    assert resolve_k(576, 1.0) == 576
    assert resolve_k(10, 0.01) == 1
    assert resolve_k(10, k=50) == 10
    with pytest.raises(ValueError):
        resolve_k(10, 0.0)


def test_lse_between_mean_and_max_and_tends_to_both():
    s = scores(n=50)
    lse = pool(s, "lse", lse_r=5.0)
    assert (lse <= s.amax(1) + 1e-6).all() and (lse >= s.mean(1) - 1e-6).all()
    torch.testing.assert_close(pool(s, "lse", lse_r=0.01), s.mean(1), atol=2e-3, rtol=0)
    torch.testing.assert_close(pool(s, "lse", lse_r=2000.0), s.amax(1), atol=5e-3, rtol=0)


def test_bad_kind_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        pool(scores(), "median")
    for name in POOLINGS:
        assert name in str(e.value)


def test_topk_gradient_reaches_k_patches_only():
    s = scores(b=1, n=10, c=1).requires_grad_()
    pool(s, "topk", k=3).sum().backward()
    assert int((s.grad != 0).sum()) == 3
    s.grad = None
    pool(s, "max").sum().backward()
    assert int((s.grad != 0).sum()) == 1
