"""Measuring a stage as it runs (for ``bench run --rehearse``): wall time, FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` on the real model, peak process RSS (sampled) and,
on a GPU, CUDA's peak allocated memory.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

_aten = torch.ops.aten


def _register_cpu_attention() -> None:
    """FlopCounterMode counts the CUDA kernels of ``scaled_dot_product_attention`` but not the
    CPU one (torch 2.x), which ViTs call here: count it with the same formulas."""
    fwd = _aten._scaled_dot_product_flash_attention_for_cpu
    bwd = _aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd in flop_counter.flop_registry or fwd.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(fwd)
    def _fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(bwd)
    def _bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_register_cpu_attention()


def rss_bytes() -> int:
    """This process's resident set size now (psutil where installed, else /proc), or its peak so
    far (``getrusage``) where neither answers."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Samples :func:`rss_bytes` every ``interval`` seconds in a daemon thread; :meth:`peak`
    gives the largest sample between two times (``time.perf_counter``)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.samples = interval, [(time.perf_counter(), rss_bytes())]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.perf_counter(), rss_bytes()))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, t0: float, t1: float) -> int:
        self.samples.append((time.perf_counter(), rss_bytes()))
        return max((b for t, b in list(self.samples) if t0 <= t <= t1), default=rss_bytes())


@dataclass
class Span:
    """One measured stage: wall seconds, FLOPs, peak RSS and CUDA peak (bytes; None on a CPU),
    and marks (time, FLOPs so far) taken inside it, e.g. at each epoch's end."""

    seconds: float = 0.0
    flops: int = 0
    rss: int = 0
    cuda: int | None = None
    t0: float = 0.0
    marks: list[tuple[float, int]] = field(default_factory=list)


class Meter:
    """Measures stages one at a time: ``with meter.span() as s: ...``; inside, ``meter.mark()``
    notes (time, FLOPs so far) on the open span."""

    def __init__(self, sampler: RssSampler):
        self.sampler = sampler
        self._counter: FlopCounterMode | None = None
        self._span: Span | None = None

    def mark(self) -> None:
        if self._span is not None and self._counter is not None:
            self._span.marks.append((time.perf_counter(), self._counter.get_total_flops()))

    @contextmanager
    def span(self):
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        s = Span(t0=time.perf_counter())
        self._span, self._counter = s, FlopCounterMode(display=False)
        try:
            with self._counter:
                yield s
        finally:
            t1 = time.perf_counter()
            s.seconds, s.flops = t1 - s.t0, self._counter.get_total_flops()
            s.rss = self.sampler.peak(s.t0, t1)
            s.cuda = torch.cuda.max_memory_allocated() if cuda else None
            self._span = self._counter = None


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """This machine's float32 matmul rate now (GFLOP/s, CPU): the yardstick beside every wall time."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * n**3 / (time.perf_counter() - t0) / 1e9
