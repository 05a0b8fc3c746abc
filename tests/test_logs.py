"""The JSON log of a running `ofd serve`: every line is one JSON object, and the lines about a
request name its device and request number (refusals at info, every answer at debug)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import register_device
from grpc_health.v1 import health_pb2, health_pb2_grpc
from wire import ask, body, ticket

from ingest.codec import encode
from ledger.wire import ResultCode
from simulators.stage.ports import free_ports
from simulators.stage.processes import ServerProcess, start_gateway, stop

VERSION = 204
WRONG_TOKEN_OFFSET = 1


def _serve(data_dir: Path, database_url: str, level: str) -> ServerProcess:
    return start_gateway(
        data_dir, "--database-url", database_url, "--log-level", level,
        log_path=data_dir / "gateway.log",
    )  # fmt: skip


def _events(log_path: Path) -> list[dict[str, Any]]:
    """The JSON lines of the log (the ready line and pgserver chatter are not JSON)."""
    out = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.mark.parametrize("level", ["debug", "info"])
async def test_request_lines_carry_device_and_request_number(
    tmp_path: Path, database_url: str, level: str
) -> None:
    device = await register_device(database_url)
    sid = device.system_id
    server = await asyncio.to_thread(_serve, tmp_path, database_url, level)
    try:
        good = encode(VERSION, sid, device.token, 1, body(ticket(VERSION, 1)))
        assert (await ask(server.port, good)).code == ResultCode.OK
        wrong = device.token + WRONG_TOKEN_OFFSET
        bad = encode(VERSION, sid, wrong, 2, body(ticket(VERSION, 2)))
        assert (await ask(server.port, bad)).code == ResultCode.INVALID_TOKEN
        # A retry of the first request, answered from the stored answer.
        assert (await ask(server.port, good)).code == ResultCode.OK
    finally:
        await asyncio.to_thread(stop, server)
    events = _events(tmp_path / "gateway.log")
    assert events, "the gateway wrote no JSON log lines"
    assert all({"event", "level", "timestamp"} <= e.keys() for e in events)
    mine = [e for e in events if e.get("device_id") == sid]
    refused = [e for e in mine if e["event"] == "request refused"]
    assert [(e["request_number"], e["result"], e["result_name"]) for e in refused] == [
        (2, int(ResultCode.INVALID_TOKEN), "INVALID_TOKEN")
    ]
    assert refused[0]["level"] == "info"
    answered = [(e["event"], e["request_number"]) for e in mine if e["level"] == "debug"]
    if level == "debug":
        assert answered == [("request answered", 1), ("retry answered as before", 1)]
    else:
        assert answered == []


def test_every_stderr_line_is_json_grpc_included(tmp_path: Path, database_url: str) -> None:
    """stderr alone (stdout has the ready line): gRPC's C core writes there too unless silenced
    (ingest/__init__.py sets GRPC_VERBOSITY=NONE before grpc is imported), so a gRPC ingest port
    is served and called, and the gateway stopped, before every line is parsed."""
    grpc_port = next(free_ports(range(20000, 30000)))
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest.cli", "serve", "--data-dir", str(tmp_path),
             "--database-url", database_url, "--port", "0", "--control-port", "0",
             "--grpc-port", str(grpc_port), "--metrics-port", "0", "--log-level", "debug"],
            stdout=out, stderr=err, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "ready" not in stdout.read_text():
            assert proc.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.05)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
        device = encode(VERSION, 1, 1, 1, body(ticket(VERSION, 1)))
        tcp = int(stdout.read_text().split("tcp=127.0.0.1:")[1].split()[0])
        assert asyncio.run(ask(tcp, device)).code == ResultCode.UNKNOWN_ID
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    lines = stderr.read_text().splitlines()
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def test_library_logs_and_their_tracebacks_are_json_lines_too() -> None:
    """asyncpg, aiohttp and warnings log through `logging`: the same one JSON object a line,
    a traceback inside it rather than over many lines."""
    script = (
        "import logging, warnings\n"
        "from ingest.logs import configure_logging\n"
        "configure_logging('info')\n"
        "try:\n"
        "    raise ConnectionResetError('connection lost')\n"
        "except ConnectionResetError:\n"
        "    logging.getLogger('asyncpg.pool').exception('pool connection failed')\n"
        "warnings.warn('a library warns')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.strip().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["logger"] for e in events] == ["asyncpg.pool", "py.warnings"]
    assert "ConnectionResetError: connection lost" in events[0]["exception"]
