"""Starting `ofd serve` as a child process and waiting for its ready line.

The demo, the benchmarks and the crash tests run the gateway as a real process (it must be
killable); this is the one place that knows how to start it and read where it listens.
"""

import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

READY_PATTERN = re.compile(r"ofd gateway ready tcp=(\S+):(\d+) control=(\S+):(\d+)")
START_TIMEOUT = 120.0  # the first start runs initdb for the embedded PostgreSQL
STOP_TIMEOUT = 15.0


@dataclass
class GatewayProcess:
    process: subprocess.Popen[str]
    host: str
    port: int
    control: str

    def stop(self) -> int:
        """SIGTERM (drain and stop cleanly), then SIGKILL if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        return self.process.returncode

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(STOP_TIMEOUT)


def start_gateway(
    data_dir: Path,
    *extra_args: str,
    port: int = 0,
    control_port: int = 0,
    log_path: Path | None = None,
) -> GatewayProcess:
    """Starts a gateway (port 0: one the kernel picks); returns once it printed its ready line."""
    log = log_path.open("a") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingest.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--control-port",
            str(control_port),
            *extra_args,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([process.stdout], [], [], remaining)
        if not readable:
            break
        line = process.stdout.readline()
        if not line:
            break
        match = READY_PATTERN.search(line)
        if match:
            host, tcp_port, control_host, control_listen = match.groups()
            return GatewayProcess(process, host, int(tcp_port), f"{control_host}:{control_listen}")
    process.kill()
    process.wait(STOP_TIMEOUT)
    raise RuntimeError(f"the gateway did not start (exit code {process.returncode})")
