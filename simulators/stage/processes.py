"""Servers as child processes: started, awaited until ready, always stopped.

The demo, the benchmarks and the crash tests run the gateway as a real process (it must be
killable); this is the one place that knows how to start it and read where it listens. Output
goes to a log file rather than a pipe (a pipe nobody drains would block a chatty server), and
the ready line is polled from that file. Stopping is SIGTERM, then SIGKILL after a grace period;
an embedded PostgreSQL left behind (the gateway was killed) is stopped by its data directory.
"""

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

READY_TIMEOUT = 60.0  # a first start of the embedded PostgreSQL runs initdb
STOP_GRACE = 10.0  # the gateway drains in-flight requests for up to 5 s
_READY = re.compile(
    r"ready tcp=(?P<host>[\w.:-]+):(?P<port>\d+)(?: control=(?P<control>[\w.:-]+:\d+))?"
)


class ServerFailed(RuntimeError):
    """A server did not become ready; the message carries the end of its log."""


@dataclass(slots=True)
class ServerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    host: str = ""
    port: int = 0
    control: str = ""  # host:port of the control API, for the gateway
    pg_dir: Path | None = None  # the embedded PostgreSQL's data directory, for the gateway
    control_key: str | None = None  # the gateway's bootstrap operator key (DATA_DIR/operator.key)

    @property
    def pid(self) -> int:
        return self.proc.pid


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def spawn(name: str, argv: list[str], log_path: Path) -> ServerProcess:
    with log_path.open("ab") as log:
        # A session of its own: a Ctrl-C meant for the caller does not hit the server first,
        # so the caller's cleanup stops it in order.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServerProcess(name, proc, log_path)


def wait_ready(server: ServerProcess, timeout: float = READY_TIMEOUT) -> None:
    """Polls the log for the (latest) ready line and takes the addresses from it."""
    deadline = time.monotonic() + timeout
    seen = server.log_path.stat().st_size if server.log_path.exists() else 0
    while time.monotonic() < deadline:
        with server.log_path.open("rb") as log:
            log.seek(seen)
            match = _READY.search(log.read().decode(errors="replace"))
        if match:
            server.host, server.port = match["host"], int(match["port"])
            server.control = match["control"] or ""
            return
        if server.proc.poll() is not None:
            raise ServerFailed(
                f"{server.name} exited with {server.proc.returncode}:\n{log_tail(server.log_path)}"
            )
        time.sleep(0.05)
    raise ServerFailed(
        f"{server.name} not ready after {timeout:.0f} s:\n{log_tail(server.log_path)}"
    )


def ready_or_stopped(server: ServerProcess) -> None:
    """Waits for the ready line; a server that does not get there is stopped, not left behind."""
    try:
        wait_ready(server)
    except BaseException:
        stop(server)
        raise


def start_gateway(
    data_dir: Path,
    *extra_args: str,
    port: int = 0,
    control_port: int = 0,
    log_path: Path | None = None,
) -> ServerProcess:
    """`ofd serve` with its data in `data_dir` (port 0: one the kernel picks); returns once it
    printed its ready line. Without --database-url in `extra_args` it runs on the embedded
    PostgreSQL in data_dir/pg."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server = spawn(
        "gateway",
        [sys.executable, "-m", "ingest.cli", "serve", "--data-dir", str(data_dir),
         "--port", str(port), "--control-port", str(control_port),
         # No /metrics (counted all the same) and no gRPC ingest unless extra_args ask: no fixed
         # port to collide on.
         "--metrics-port", "0", "--grpc-port", "0", *extra_args],
        log_path or data_dir / "gateway.log",
    )  # fmt: skip
    if "--database-url" not in extra_args:
        server.pg_dir = data_dir / "pg"
    ready_or_stopped(server)
    # Written before the ready line; absent only for a gateway whose control API is open.
    key_path = data_dir / "operator.key"
    if key_path.exists():
        server.control_key = key_path.read_text().strip()
    return server


def postmaster_pids(pg_dir: Path) -> list[int]:
    """PostgreSQL servers whose data directory (-D) is `pg_dir`."""
    target = str(pg_dir.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process ended while we looked
            continue
        if args and args[0].endswith("postgres") and "-D" in args:
            index = args.index("-D")
            if index + 1 < len(args) and args[index + 1].rstrip("/") == target:
                found.append(int(entry.name))
    return found


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


def end_process(proc: "subprocess.Popen[bytes]", grace: float) -> None:
    """SIGTERM, then SIGKILL if it is still running after `grace` seconds; waits for it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


def stop(server: ServerProcess, grace: float = STOP_GRACE) -> int:
    """SIGTERM, SIGKILL after the grace period; then any PostgreSQL it left behind.
    Returns the server's exit code."""
    proc = server.proc
    end_process(proc, grace)
    if server.pg_dir is not None:
        # pgserver stops the server when its last client exits cleanly; give it a moment.
        deadline = time.monotonic() + grace
        while postmaster_pids(server.pg_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        _stop_postmasters(server.pg_dir, grace)
    return proc.returncode


def unwind_on_sigterm() -> None:
    """Makes SIGTERM raise SystemExit, so that the finally blocks that stop child servers and
    remove temporary directories run when a script stops a benchmark or a fleet run."""
    signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
