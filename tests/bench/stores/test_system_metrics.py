"""Where trial runs log MLflow's system metrics, and under which node's name."""

import pytest

from bench.stores.system_metrics import node_id, system_metrics_on


@pytest.mark.parametrize(
    "switch,slurm,expected",
    [
        (None, None, False),  # a workstation: off
        (None, "123", True),  # a Slurm job: on
        ("true", None, True),  # MLflow's own switch wins either way
        ("false", "123", False),
        ("0", "123", False),
        ("1", None, True),
        ("maybe", "123", True),  # not a switch value: as if unset
    ],
)
def test_system_metrics_on_under_slurm_or_where_mlflow_s_switch_asks(monkeypatch, switch, slurm, expected):
    for name, value in (("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", switch), ("SLURM_JOB_ID", slurm)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert system_metrics_on() is expected


def test_the_node_is_slurm_s_name_for_it_else_the_host(monkeypatch):
    import socket

    monkeypatch.delenv("SLURMD_NODENAME", raising=False)
    assert node_id() == socket.gethostname()
    monkeypatch.setenv("SLURMD_NODENAME", "gpu-node-17")
    assert node_id() == "gpu-node-17"
