"""MLflow's system metrics of a trial's run: where they are logged, and under which node."""

from __future__ import annotations

import os
import socket
from typing import Any

#: seconds between two samples of a run's system metrics (MLflow's default; its variable
#: MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it)
SYSTEM_METRICS_INTERVAL_S = 10


def system_metrics_on() -> bool:
    """Whether trial runs log system metrics: as MLflow's own switch says where it is set, else
    under Slurm (where a run's node and its load are worth seeing) and not on a workstation."""
    switch = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower()
    if switch in ("true", "1", "false", "0"):
        return switch in ("true", "1")
    return bool(os.environ.get("SLURM_JOB_ID"))


def node_id() -> str:
    """This node's name: Slurm's where a Slurm job runs here, else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def start_monitor(run_id: str, tracking_uri: str) -> Any | None:
    """MLflow's system metrics for the run while it lasts (CPU, memory, disk, network; GPU
    utilisation and memory where NVIDIA's library finds a GPU), every
    :data:`SYSTEM_METRICS_INTERVAL_S` seconds, named after this node (``system/<node>/...``) so
    runs of several nodes never mix; the started ``SystemMetricsMonitor`` (its ``finish()``
    writes the last samples), or None where :func:`system_metrics_on` says no."""
    if not system_metrics_on():
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, node_id=node_id(), tracking_uri=tracking_uri
    )
    monitor.start()
    return monitor
