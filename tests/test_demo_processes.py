"""`make demo` stopped half-way (SIGTERM, as a supervisor or `kill` sends it; Ctrl-C takes the
same path) leaves no process behind: gateway, embedded PostgreSQL, loader, simulated KGD and
forwarder all end with it. The demo runs in a directory of its own, so every process it started
is found by its working directory (PostgreSQL's is inside it, the rest inherited it)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulators.stage.ports import free_ports

pytestmark = pytest.mark.slow
STARTED = "simulated KGD at"  # printed once the gateway, loader, KGD and forwarder all run
TIMEOUT = 120.0


def processes_in(directory: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if cwd == str(directory) or cwd.startswith(f"{directory}/"):
            found.append(f"{entry.name}: {command}")
    return found


def test_sigterm_stops_every_process_the_demo_started(tmp_path: Path) -> None:
    assert subprocess.run(
        [sys.executable, "-m", "simulators.demo", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.startswith("usage: python -m simulators.demo")  # fmt: skip

    candidates = free_ports(range(22000, 32000))
    ports = [str(next(candidates)) for _ in range(3)]
    output = tmp_path / "demo.out"
    with output.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-u", "-m", "simulators.demo", "--port", ports[0],
             "--control-port", ports[1], "--web-port", ports[2]],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while STARTED not in output.read_text():
            assert demo.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
        assert len(processes_in(tmp_path)) >= 4  # what is about to be stopped is there
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(TIMEOUT) == 130
        deadline = time.monotonic() + 10  # PostgreSQL's own workers may take a moment to go
        while processes_in(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        left = processes_in(tmp_path)
        for line in left:  # a failed run must not leave them to the next test
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
    assert "demo interrupted: every process it started is stopped" in output.read_text()
    assert left == []
