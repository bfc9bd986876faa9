"""`bench ui` serves the MLflow UI on 127.0.0.1 over the study's store."""

import socket
import subprocess
import sys
import urllib.request

import pytest
from helpers import wait_for_health, write_study

from bench.stores import Tracker

pytestmark = pytest.mark.slow


def test_bench_ui_serves_the_store_on_loopback(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "ui", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_health(port) == 200
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "MLflow" in page or "<html" in page.lower()
        assert (tmp_path / "mlflow.db").exists()  # the default store in the working directory
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_bench_ui_prints_the_runs_url_of_the_study(tmp_path):
    import socket
    import subprocess
    import sys

    study = write_study(tmp_path / "s.yaml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "ui", str(study), "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    exp = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "smoke").client.get_experiment_by_name("smoke")
    assert line.strip().endswith(f": http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs"), line
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
