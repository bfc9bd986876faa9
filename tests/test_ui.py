"""`bench ui` serves the MLflow UI on 127.0.0.1 over the study's store."""

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow


def test_bench_ui_serves_the_store_on_loopback(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "ui", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and status is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status
            except OSError:
                time.sleep(0.5)
        assert status == 200
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "MLflow" in page or "<html" in page.lower()
        assert (tmp_path / "mlflow.db").exists()  # the default store in the working directory
    finally:
        proc.terminate()
        proc.wait(timeout=30)
