"""Pooling: hand values, edges (K = 0 refused, K clipped to N) and the defaults that a study
inherits when it says nothing (``k_ratio`` 0.1, ``lse_r`` 5.0)."""

import inspect
import math
import re

import pytest
import torch

# the code under test, imported in one place (module paths move: edit only these lines)
from tkp_pcl.config import PoolingConfig
from tkp_pcl.stage1.pooling import POOLINGS, lse_pool, max_pool, mean_pool, pool, resolve_k, topk_pool

# B = 2 images, N = 4 patches, C = 3 classes (N != C, B != N: a pooling over the wrong axis
# changes the shape or the values)
S = torch.tensor(
    [
        [[0.9, 0.1, 0.0], [0.2, 0.8, 0.5], [0.7, 0.3, 0.4], [0.1, 0.6, 0.2]],
        [[0.0, 0.5, 1.0], [0.4, 0.4, 0.3], [0.6, 0.2, 0.9], [0.3, 0.7, 0.1]],
    ]
)


def test_max_and_mean_by_hand():
    torch.testing.assert_close(pool(S, "max"), torch.tensor([[0.9, 0.8, 0.5], [0.6, 0.7, 1.0]]))
    torch.testing.assert_close(max_pool(S), pool(S, "max"))
    # column means: (0.9+0.2+0.7+0.1)/4 = 0.475, (0.1+0.8+0.3+0.6)/4 = 0.45, (0+0.5+0.4+0.2)/4 = 0.275
    #               (0+0.4+0.6+0.3)/4 = 0.325, (0.5+0.4+0.2+0.7)/4 = 0.45, (1+0.3+0.9+0.1)/4 = 0.575
    expected = torch.tensor([[0.475, 0.45, 0.275], [0.325, 0.45, 0.575]])
    torch.testing.assert_close(pool(S, "mean"), expected)
    torch.testing.assert_close(mean_pool(S), expected)


def test_topk_by_hand_for_every_k():
    # K = 2: mean of the two largest per column
    k2 = torch.tensor(
        [[(0.9 + 0.7) / 2, (0.8 + 0.6) / 2, (0.5 + 0.4) / 2], [(0.6 + 0.4) / 2, (0.7 + 0.5) / 2, (1.0 + 0.9) / 2]]
    )
    torch.testing.assert_close(pool(S, "topk", k=2), k2)
    torch.testing.assert_close(topk_pool(S, k=2), k2)
    # K = round(0.5 * 4) = 2 from the ratio
    torch.testing.assert_close(pool(S, "topk", k_ratio=0.5), k2)
    # K = 3
    k3 = torch.tensor([[1.8 / 3, 1.7 / 3, 1.1 / 3], [1.3 / 3, 1.6 / 3, 2.2 / 3]])
    torch.testing.assert_close(pool(S, "topk", k=3), k3)
    # K = 1 is the max, K = N (or more: clipped) the mean
    torch.testing.assert_close(pool(S, "topk", k=1), torch.tensor([[0.9, 0.8, 0.5], [0.6, 0.7, 1.0]]))
    torch.testing.assert_close(pool(S, "topk", k=9), torch.tensor([[0.475, 0.45, 0.275], [0.325, 0.45, 0.575]]))


def test_lse_by_hand():
    s = torch.tensor([[[0.0, 0.2], [1.0, 0.2]]])  # N = 2, C = 2
    for r in (5.0, 2.0):
        # (1/r) log((e^0 + e^r) / 2) and, for a constant column, the constant itself
        expected = torch.tensor([[math.log((1 + math.exp(r)) / 2) / r, 0.2]])
        torch.testing.assert_close(pool(s, "lse", lse_r=r), expected)
    torch.testing.assert_close(lse_pool(S, lse_r=5.0), pool(S, "lse"))


def test_defaults_are_k_ratio_01_and_lse_r_5():
    assert PoolingConfig().kind == "topk"
    assert PoolingConfig().k_ratio == 0.1 and PoolingConfig().lse_r == 5.0 and PoolingConfig().k is None
    assert inspect.signature(resolve_k).parameters["k_ratio"].default == 0.1
    assert inspect.signature(topk_pool).parameters["k_ratio"].default == 0.1
    assert inspect.signature(lse_pool).parameters["lse_r"].default == 5.0
    # behaviour, not only the signatures: 20 patches -> K = round(0.1 * 20) = 2 by default
    s = torch.arange(20.0).reshape(1, 20, 1) / 20
    torch.testing.assert_close(pool(s), torch.tensor([[(19 + 18) / 40]]))
    torch.testing.assert_close(topk_pool(s), torch.tensor([[(19 + 18) / 40]]))
    assert resolve_k(20) == 2
    # lse with r = 5 on two patches 0 and 1: log((1 + e^5) / 2) / 5
    two = torch.tensor([[[0.0], [1.0]]])
    torch.testing.assert_close(pool(two, "lse"), torch.tensor([[math.log((1 + math.exp(5.0)) / 2) / 5.0]]))
    torch.testing.assert_close(lse_pool(two), pool(two, "lse"))


def test_k_zero_and_negative_are_refused_never_nan():
    for bad in (0, -1):
        with pytest.raises(ValueError, match=rf"^k must be >= 1, got {bad}$"):
            resolve_k(10, k=bad)
        with pytest.raises(ValueError, match="k must be >= 1"):
            pool(S, "topk", k=bad)
        with pytest.raises(ValueError, match="k must be >= 1"):
            topk_pool(S, k=bad)
    assert resolve_k(10, k=1) == 1 and resolve_k(10, k=2) == 2


def test_resolve_k_edges():
    assert resolve_k(10, 0.01) == 1  # round(0.1) = 0 -> at least 1
    assert resolve_k(10, 0.05) == 1  # round(0.5) = 0 (round half to even) -> 1
    assert resolve_k(10, 0.26) == 3  # round(2.6) = 3
    assert resolve_k(10, 0.34) == 3 and resolve_k(10, 0.36) == 4
    assert resolve_k(10, 1.0) == 10  # ratio 1 allowed
    assert resolve_k(4, k=4) == 4 and resolve_k(4, k=5) == 4 and resolve_k(4, k=3) == 3
    assert resolve_k(3, 1.0, k=2) == 2  # a fixed k wins over the ratio
    assert isinstance(resolve_k(4, k=2.0), int)
    for bad in (0.0, -0.1, 1.01, 2.0):
        with pytest.raises(ValueError, match=rf"^k_ratio must be in \(0, 1\], got {bad}$"):
            resolve_k(10, bad)


def test_pool_refuses_bad_kinds_and_shapes():
    assert set(POOLINGS) == {"max", "topk", "mean", "lse"}
    with pytest.raises(ValueError, match=r"^unknown pooling kind 'median'; valid kinds: lse, max, mean, topk$"):
        pool(S, "median")
    for bad in (S[0], S[None]):
        with pytest.raises(
            ValueError, match="^" + re.escape(f"scores must be (B, N, C), got shape {tuple(bad.shape)}") + "$"
        ):
            pool(bad, "max")
