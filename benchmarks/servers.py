"""The servers under test as subprocesses: started, awaited until ready, always stopped.

Each server writes its output to a log file rather than a pipe (a pipe nobody drains would
block a chatty server mid-run); the ready line is polled from that file. Stopping is SIGTERM,
then SIGKILL after a grace period. The gateway's embedded PostgreSQL normally stops with the
gateway; if it is still running afterwards (the gateway was killed, or crashed) its postmaster
is stopped by pid, found by its data directory.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.procstat import postmaster_pids

HOST = "127.0.0.1"
READY_TIMEOUT = 60.0  # a first start of the embedded PostgreSQL runs initdb
STOP_GRACE = 10.0  # the gateway drains in-flight requests for up to 5 s
# Fixed ports below the ephemeral range (32768-60999): a client connection opened in between
# cannot take them, and a scan finds ones nobody else holds.
PORT_RANGE = range(17801, 17900)
_READY = re.compile(r"ready tcp=(?P<host>[\d.]+):(?P<port>\d+)")


class ServerFailed(RuntimeError):
    """A server did not become ready; the message carries the end of its log."""


@dataclass(slots=True)
class ServerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    pg_dir: Path | None = None  # the embedded PostgreSQL's data directory, for the gateway

    @property
    def pid(self) -> int:
        return self.proc.pid


def free_ports(count: int) -> list[int]:
    """`count` ports of PORT_RANGE that nothing listens on now."""
    found: list[int] = []
    for port in PORT_RANGE:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise ServerFailed(f"fewer than {count} free ports in {PORT_RANGE.start}-{PORT_RANGE.stop}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _spawn(name: str, argv: list[str], log_path: Path) -> ServerProcess:
    with log_path.open("wb") as log:
        # A session of its own: a Ctrl-C meant for the benchmark does not hit the server first,
        # so the benchmark's cleanup stops it in order.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return ServerProcess(name, proc, log_path)


def wait_ready(server: ServerProcess, timeout: float = READY_TIMEOUT) -> None:
    """Polls the log for the ready line and takes the port from it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _READY.search(server.log_path.read_text(errors="replace"))
        if match:
            server.port = int(match["port"])
            return
        if server.proc.poll() is not None:
            raise ServerFailed(
                f"{server.name} exited with {server.proc.returncode}:\n{_tail(server.log_path)}"
            )
        time.sleep(0.05)
    raise ServerFailed(f"{server.name} not ready after {timeout:.0f} s:\n{_tail(server.log_path)}")


def start_echo_floor(log_path: Path, port: int, version: int) -> ServerProcess:
    server = _spawn(
        "echo floor",
        [sys.executable, "-m", "benchmarks.echo_floor", "--host", HOST, "--port", str(port),
         "--version", str(version)],
        log_path,
    )  # fmt: skip
    try:
        wait_ready(server)
    except BaseException:
        stop(server)
        raise
    return server


def start_gateway(data_dir: Path, port: int, control_port: int, secret_hex: str) -> ServerProcess:
    """`ofd serve` on the embedded default: no --database-url, PostgreSQL in data_dir/pg."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server = _spawn(
        "gateway",
        [sys.executable, "-m", "ingest.cli", "serve", "--data-dir", str(data_dir), "--host", HOST,
         "--port", str(port), "--control-port", str(control_port), "--secret-hex", secret_hex],
        data_dir / "gateway.log",
    )  # fmt: skip
    server.pg_dir = data_dir / "pg"
    try:
        wait_ready(server)
    except BaseException:
        stop(server)
        raise
    return server


def _terminate(pid_wait: "subprocess.Popen[bytes]", grace: float) -> None:
    if pid_wait.poll() is not None:
        return
    pid_wait.send_signal(signal.SIGTERM)
    try:
        pid_wait.wait(grace)
    except subprocess.TimeoutExpired:
        pid_wait.kill()
        pid_wait.wait(grace)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_postmasters(pg_dir: Path, grace: float) -> None:
    """Fast shutdown (SIGINT) of a PostgreSQL left running in `pg_dir`, then SIGKILL."""
    pids = postmaster_pids(pg_dir)
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def stop(server: ServerProcess) -> None:
    """SIGTERM, SIGKILL after the grace period; then any PostgreSQL it left behind."""
    _terminate(server.proc, STOP_GRACE)
    if server.pg_dir is not None:
        # pgserver stops the server when its last client exits cleanly; give it a moment.
        deadline = time.monotonic() + STOP_GRACE
        while postmaster_pids(server.pg_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        _stop_postmasters(server.pg_dir, STOP_GRACE)
