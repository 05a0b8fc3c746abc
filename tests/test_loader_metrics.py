"""`ofd load --metrics-host/--metrics-port`: the loader's /metrics alone, for a Prometheus on
another machine, while its query endpoint stays on loopback (deploy/ scrapes this port)."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(url: str, data: bytes | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, data, timeout=2) as answer:  # noqa: S310  # loopback
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


@pytest.mark.slow
def test_loader_serves_metrics_on_its_own_port(tmp_path: Path) -> None:
    port = _free_port()
    loader = subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "load", "--data-dir", str(tmp_path),
         "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT
        status, body = 0, ""
        while time.monotonic() < deadline and loader.poll() is None:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/metrics")
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200, loader.communicate()[1].decode() if loader.poll() is not None else ""
        assert "ofd_warehouse_freshness_seconds_bucket" in body
        # Metrics only: queries still go to the loopback query endpoint, with the analyst key.
        assert _get(f"http://127.0.0.1:{port}/query", b'{"sql": "SELECT 1"}')[0] == 405
        service_file = tmp_path / "warehouse" / "service.json"
        while not service_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        service = json.loads(service_file.read_text())
        assert service["host"] == "127.0.0.1"
        assert service["port"] != port
    finally:
        loader.send_signal(signal.SIGTERM)
        loader.wait(timeout=30)
    assert loader.returncode == 0
