"""Measuring a stage: FLOPs of CPU attention are counted, marks and peaks are taken."""

import torch
import torch.nn.functional as F

from bench.run.measure import Meter, RssSampler, rss_bytes


def test_cpu_attention_is_counted_forward_and_backward():
    q = torch.randn(1, 2, 64, 16, requires_grad=True)
    with RssSampler() as sampler:
        meter = Meter(sampler)
        with meter.span() as fwd:
            out = F.scaled_dot_product_attention(q, q, q)
            meter.mark()
            out.sum().backward()
    assert fwd.marks[0][1] == 4 * 64 * 64 * 16 * 2  # QK^T and AV: 2 x 2 x N^2 x d per head
    assert fwd.flops > 2 * fwd.marks[0][1]  # the backward counted too
    assert fwd.rss >= rss_bytes() // 2 and (fwd.cuda is None) == (not torch.cuda.is_available()) and fwd.seconds > 0
