"""`make demo` stopped half-way (SIGTERM, as a supervisor or `kill` sends it; Ctrl-C takes the
same path) leaves no process behind: gateway, embedded PostgreSQL, loader, simulated KGD and
forwarder all end with it. The demo runs in a directory of its own, so every process it started
is found by its working directory (PostgreSQL's is inside it, the rest inherited it)."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
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


def _start_demo(directory: Path, *options: str) -> tuple["subprocess.Popen[bytes]", Path, str]:
    """The demo on free ports in `directory`: the process, its output file, the cabinet's URL."""
    candidates = free_ports(range(22000, 32000))
    ports = [str(next(candidates)) for _ in range(3)]
    output = directory / "demo.out"
    with output.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-u", "-m", "simulators.demo", "--port", ports[0],
             "--control-port", ports[1], "--web-port", ports[2], *options],
            cwd=directory, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return demo, output, f"http://127.0.0.1:{ports[2]}"


def _await_output(demo: "subprocess.Popen[bytes]", output: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in output.read_text():
        assert demo.poll() is None, output.read_text()
        assert time.monotonic() < deadline, output.read_text()
        time.sleep(0.1)


def _stop_and_sweep(demo: "subprocess.Popen[bytes]", directory: Path) -> list[str]:
    """SIGTERM (when still running); then whatever is left in `directory`, killed."""
    try:
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
            demo.wait(TIMEOUT)
        deadline = time.monotonic() + 10  # PostgreSQL's own workers may take a moment to go
        while processes_in(directory) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        left = processes_in(directory)
        for line in left:  # a failed run must not leave them to the next test
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
    return left


def test_sigterm_stops_every_process_the_demo_started(tmp_path: Path) -> None:
    assert subprocess.run(
        [sys.executable, "-m", "simulators.demo", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.startswith("usage: python -m simulators.demo")  # fmt: skip

    demo, output, _ = _start_demo(tmp_path)
    try:
        _await_output(demo, output, STARTED, TIMEOUT)
        assert len(processes_in(tmp_path)) >= 4  # what is about to be stopped is there
    finally:
        left = _stop_and_sweep(demo, tmp_path)
    assert demo.returncode == 130
    assert "demo interrupted: every process it started is stopped" in output.read_text()
    assert left == []


def test_the_demo_passes_and_stays_for_a_person_to_log_in(tmp_path: Path) -> None:
    demo, output, cabinet = _start_demo(tmp_path, "--stay")
    try:
        _await_output(demo, output, "the cabinet stays on", 4 * TIMEOUT)
        assert "demo passed" in output.read_text()
        with urllib.request.urlopen(f"{cabinet}/login", timeout=10) as answer:  # noqa: S310
            assert "Вход в кабинет" in answer.read().decode()
    finally:
        left = _stop_and_sweep(demo, tmp_path)
    assert demo.returncode == 130
    assert left == []
