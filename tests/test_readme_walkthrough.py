"""The README's walk-through, run as written: the lines between `<!-- walkthrough:begin -->` and
`<!-- walkthrough:end -->`, each in bash, in a fresh directory with nothing running, so the
README cannot drift from what works.

What a person at a fresh clone has and this directory does not is given as the person has it:
`.venv` (a link to the one running the tests: `make setup`, its first line, made it) and free
ports (OFD_PORT, OFD_CONTROL_PORT, OFD_GRPC_PORT, and OFD_CONTROL and OFD_GATEWAY naming them:
the defaults 7777/7778 may be taken on a test machine). A line ending in `&` is started and
awaited until it prints its ready line, as the README says to; `TOKEN` is the token the line
before printed, typed in as a person would. The receipt `kkm send` acknowledged must then be in
what `journal show` and `query` print. The README's grpcurl line is made with Python's gRPC.
"""

import base64
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from ledger.schemas import SCHEMAS
from ofdproto.ingest.v1 import ingest_pb2
from simulators.stage.ports import free_ports
from simulators.stage.processes import ServerProcess, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- walkthrough:begin -->", "<!-- walkthrough:end -->"
STEP_TIMEOUT = 120.0  # the first start of the embedded PostgreSQL runs initdb
FISCAL_SIGN = re.compile(r"^  fiscal sign  (\d+)$", re.M)
TOKEN_LINE = re.compile(r"^token\s+(\d+)$", re.M)

pytestmark = pytest.mark.slow


def walkthrough() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    lines = block.strip().removeprefix("```sh").removesuffix("```").strip().splitlines()
    return [line.strip() for line in lines if line.strip()]


def grpcurl_line() -> str:
    text = README.read_text(encoding="utf-8")
    block = text.split("<!-- grpcurl -->", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return block.strip()


def test_the_readme_has_the_walkthrough() -> None:
    lines = walkthrough()
    assert lines[0].startswith("make setup")
    assert any(line.startswith(".venv/bin/ofd serve") and "&" in line for line in lines)
    assert any(" kkm send " in line for line in lines)
    assert lines[-1].startswith(".venv/bin/ofd query")


def _environment(ports: list[int]) -> dict[str, str]:
    port, control, grpc_port = ports
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFD_")}
    env.update(
        OFD_PORT=str(port),
        OFD_CONTROL_PORT=str(control),
        OFD_GRPC_PORT=str(grpc_port),
        OFD_METRICS_PORT="0",
        OFD_CONTROL=f"127.0.0.1:{control}",
        OFD_GATEWAY=f"127.0.0.1:{port}",
    )
    return env


def test_the_walkthrough_ends_with_the_receipt_found(tmp_path: Path) -> None:
    os.symlink(Path(sys.executable).parent.parent, tmp_path / ".venv")
    candidates = free_ports(range(21000, 31000))
    env = _environment([next(candidates) for _ in range(3)])
    background: list[ServerProcess] = []
    printed: list[str] = []
    try:
        for line in walkthrough():
            if line.startswith("make "):
                continue  # `make setup` made the .venv this test runs in
            command = line.split("  #", 1)[0].strip()
            if command.endswith("&"):
                server = start(command.removesuffix("&"), tmp_path, env)
                background.append(server)
                wait_ready(server, STEP_TIMEOUT)
                continue
            if " TOKEN" in command:
                found = TOKEN_LINE.search(printed[-1])
                assert found, printed[-1]
                command = command.replace(" TOKEN", f" {found[1]}")
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT,
                check=False,
            )
            assert done.returncode == 0, f"$ {command}\n{done.stdout}\n{done.stderr}"
            assert "Traceback" not in done.stderr, done.stderr
            printed.append(done.stdout)
            if command.startswith(".venv/bin/ofd load"):
                assert "loaded 1 documents" in done.stderr
        check_grpcurl_line(env, printed)
    finally:
        for server in background:
            stop(server)
    send = next(out for out in printed if "fiscal sign" in out)
    sign = FISCAL_SIGN.search(send)
    assert sign, send
    journal, warehouse = printed[-3], printed[-1]
    assert f'"fiscal_sign": "{sign[1]}"' in journal
    assert re.search(rf"^100001\s+{sign[1]}\s+500$", warehouse, re.M), warehouse


def start(command: str, directory: Path, env: dict[str, str]) -> ServerProcess:
    """A line that ends in `&`: the gateway, in a session of its own (stopped by its pid, its
    embedded PostgreSQL by its data directory)."""
    log_path = directory / "background.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            ["bash", "-c", "exec " + command.strip()],
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServerProcess("gateway", proc, log_path, pg_dir=directory / "data" / "pg")


def check_grpcurl_line(env: dict[str, str], printed: list[str]) -> None:
    """The README's grpcurl call, with the device's current token (after the receipt: the one
    `kkm send` printed as NEXT TOKEN)."""
    words = shlex.split(grpcurl_line())
    headers = dict(words[i + 1].split(": ", 1) for i, word in enumerate(words) if word == "-H")
    body = base64.b64decode(words[words.index("-d") + 1].split('"body": "')[1].split('"')[0])
    method = "/" + words[-1]
    send = next(out for out in printed if "NEXT TOKEN" in out)
    headers["x-kkm-token"] = re.findall(r"NEXT TOKEN: (\d+)", send)[0]
    target = f"127.0.0.1:{env['OFD_GRPC_PORT']}"
    assert words[-2] == "127.0.0.1:7780"  # the default the README names
    with grpc.insecure_channel(target) as channel:
        exchange = channel.unary_unary(
            method,
            request_serializer=ingest_pb2.Frame.SerializeToString,
            response_deserializer=ingest_pb2.Frame.FromString,
        )
        answer, call = exchange.with_call(
            ingest_pb2.Frame(body=body), metadata=tuple(headers.items()), timeout=10
        )
    response = SCHEMAS[int(headers["x-kkm-version"])].Response.FromString(answer.body)
    assert response.result.result_code == 0, response.result
    assert dict(call.initial_metadata())["x-kkm-id"] == headers["x-kkm-id"]
