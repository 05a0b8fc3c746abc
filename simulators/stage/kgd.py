"""The simulated KGD and `ofd forward` as child processes (the demo, the benchmarks), started and
awaited until their ready lines, stopped with simulators.stage.processes.stop."""

import json
import re
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from simulators.stage.processes import READY_TIMEOUT, ServerFailed, ServerProcess, log_tail, spawn
from simulators.stage.processes import stop as stop_process

_KGD_READY = re.compile(r"kgd ready (?P<url>http://[\w.:-]+)")
_FORWARDER_READY = re.compile(r"ofd forwarder ready kgd=\S+ source=\S+(?: metrics=(?P<m>\S+))?")
ADMIN_TIMEOUT = 5.0


def _wait_for(server: ServerProcess, pattern: re.Pattern[str]) -> re.Match[str]:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        match = pattern.search(server.log_path.read_text(errors="replace"))
        if match:
            return match
        if server.proc.poll() is not None:
            raise ServerFailed(f"{server.name} exited:\n{log_tail(server.log_path)}")
        time.sleep(0.05)
    stop_process(server)
    raise ServerFailed(f"{server.name} not ready:\n{log_tail(server.log_path)}")


def start_kgd(log_path: Path, *args: str, port: int = 0) -> tuple[ServerProcess, str]:
    """`python -m simulators.kgd`; returns the process and its base URL."""
    log_path.unlink(missing_ok=True)
    server = spawn(
        "kgd", [sys.executable, "-m", "simulators.kgd", "--port", str(port), *args], log_path
    )
    return server, _wait_for(server, _KGD_READY)["url"]


def start_forwarder(data_dir: Path, kgd_url: str, *args: str) -> ServerProcess:
    """`ofd forward` on the data directory's journals and embedded PostgreSQL (unless `args`
    name others)."""
    log_path = data_dir / "forwarder.log"
    log_path.unlink(missing_ok=True)
    server = spawn(
        "forwarder",
        [sys.executable, "-m", "ingest.cli", "forward", "--data-dir", str(data_dir),
         "--kgd-url", kgd_url, "--metrics-port", "0", *args],
        log_path,
    )  # fmt: skip
    _wait_for(server, _FORWARDER_READY)
    return server


def kgd_state(url: str) -> dict[str, Any]:
    """The simulated KGD's counters (GET /admin/state)."""
    with urllib.request.urlopen(f"{url}/admin/state", timeout=ADMIN_TIMEOUT) as answer:  # noqa: S310
        state: dict[str, Any] = json.loads(answer.read())
    return state


def set_kgd_faults(url: str, **faults: Any) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310  (a loopback URL of our own)
        f"{url}/admin/faults",
        data=json.dumps(faults).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT) as answer:  # noqa: S310
        state: dict[str, Any] = json.loads(answer.read())
    return state
