"""tkp_pcl.runtime: mixed precision where it is native, float32 elsewhere."""

from pathlib import Path

import pytest
import torch

from tkp_pcl import runtime
from tkp_pcl.runtime import amp_setup, precision

CPU = torch.device("cpu")


def test_native_bf16_is_read_from_the_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    assert runtime.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_amp_off_is_float32():
    use, _, scaler = amp_setup(False, CPU)
    assert not use and not scaler.is_enabled() and precision(False, CPU) == "float32"


@pytest.mark.parametrize("native", [True, False])
def test_amp_on_a_cpu_is_bf16_only_where_the_cpu_has_it(monkeypatch, native):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    use, dtype, scaler = amp_setup(True, CPU)
    assert use == native and not scaler.is_enabled()  # bf16 needs no loss scaling
    assert precision(True, CPU) == ("bf16" if native else "float32")
    if native:
        with torch.autocast("cpu", dtype=dtype, enabled=use):
            out = torch.nn.Linear(8, 4)(torch.randn(2, 8))
        assert out.dtype == torch.bfloat16
