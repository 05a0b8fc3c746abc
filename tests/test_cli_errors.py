"""Every mistake issue 15 lists, made as a person makes it: one line on stderr that names the fix,
the exit code, and no traceback.

Servers are real: `ofd serve` and `ofd load` run as processes (a port or a data directory held by
another one is what is tested), the control API mistakes go to an in-process gateway with
authentication on (the `secured` and `ofd` fixtures of tests/test_control_lifecycle.py).
"""

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_control_lifecycle import Ofd, add_org, ofd, secured  # noqa: F401  (fixtures)

from ingest.app import RunningGateway
from ingest.cli import main
from ledger.warehouse.service import service_address
from simulators.stage.processes import ServerProcess, spawn, start_gateway, stop

SERVE_TIMEOUT = 90.0


def ofd_process(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *argv],
        capture_output=True,
        text=True,
        timeout=SERVE_TIMEOUT,
        check=False,
        env=env,
    )


def the_line(stderr: str) -> str:
    """The one line that is not a JSON log line (logs go to stderr too, one object a line)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def serve_argv(data_dir: Path, database_url: str, **ports: int) -> list[str]:
    chosen = {"port": 0, "control_port": 0, "grpc_port": 0, "metrics_port": 0, **ports}
    argv = ["serve", "--data-dir", str(data_dir), "--database-url", database_url]
    for name, port in chosen.items():
        argv += ["--" + name.replace("_", "-"), str(port)]
    return argv


@pytest.mark.parametrize("option", ["port", "control_port", "grpc_port"])
def test_a_port_in_use(tmp_path: Path, database_url: str, held_port: int, option: str) -> None:
    done = ofd_process(*serve_argv(tmp_path, database_url, **{option: held_port}))
    assert done.returncode == 1
    flag = "--" + option.replace("_", "-")
    assert the_line(done.stderr) == (
        f"error: port {held_port} is in use: pass {flag} or stop the other gateway"
    )


def test_a_second_gateway_on_the_same_data_directory(tmp_path: Path, database_url: str) -> None:
    first = start_gateway(tmp_path, "--database-url", database_url)
    try:
        done = ofd_process(*serve_argv(tmp_path, database_url))
    finally:
        stop(first)
    assert done.returncode == 1
    assert the_line(done.stderr) == (
        f"error: data directory {tmp_path} is held by another gateway (pid {first.pid}): use"
        " another --gateway-id (with the same --secret-file) or another --data-dir"
    )


def start_loader(data_dir: Path) -> ServerProcess:
    loader = spawn(
        "loader",
        [sys.executable, "-m", "ingest.cli", "load", "--data-dir", str(data_dir)],
        data_dir / "loader.log",
    )
    deadline = time.monotonic() + SERVE_TIMEOUT
    while service_address(data_dir) is None:
        assert loader.proc.poll() is None, (data_dir / "loader.log").read_text()
        assert time.monotonic() < deadline, "the loader did not start its query service"
        time.sleep(0.1)
    return loader


def test_a_second_loader_on_the_same_data_directory(tmp_path: Path) -> None:
    first = start_loader(tmp_path)
    try:
        done = ofd_process("load", "--once", "--data-dir", str(tmp_path))
    finally:
        stop(first)
    assert done.returncode == 1
    assert the_line(done.stderr) == (
        f"error: the warehouse of data directory {tmp_path} is held by another loader"
        f" (pid {first.pid}): stop it, or give this one another --data-dir or a --clickhouse-url"
    )


def test_a_loader_that_cannot_reach_its_clickhouse(tmp_path: Path) -> None:
    url = "http://analyst:secret@127.0.0.1:1"
    done = ofd_process("load", "--once", "--data-dir", str(tmp_path), "--clickhouse-url", url)
    assert done.returncode == 1
    assert the_line(done.stderr) == (
        "error: cannot reach ClickHouse at http://analyst:***@127.0.0.1:1 ([Errno 111]"
        " Connection refused): check --clickhouse-url (CLICKHOUSE_URL) and that the server is up"
    )


def test_a_bad_iin(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["org", "add", "--iin", "1805400123", "--title", "ТОО Дүкен"])
    assert done.value.code == 2
    assert the_line(capsys.readouterr().err) == (
        "ofd org add: error: argument --iin: an IIN or BIN is 12 digits, not '1805400123'"
        " (10 characters) (see ofd org add --help)"
    )


def test_latitude_in_degrees(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["point", "add", "--org", "1", "--title", "Дүкен", "--lat", "43.238949"])
    assert done.value.code == 2
    assert the_line(capsys.readouterr().err) == (
        "ofd point add: error: argument --lat: 43.238949 looks like degrees: the unit is"
        " micro-degrees (degrees x 1,000,000), pass 43238949 (see ofd point add --help)"
    )


def test_an_env_variable_with_a_bad_value(tmp_path: Path) -> None:
    done = ofd_process("serve", "--data-dir", str(tmp_path), env={"OFD_PORT": "abc"})
    assert done.returncode == 2
    assert the_line(done.stderr) == (
        "ofd serve: error: environment variable OFD_PORT='abc' is invalid (not an integer):"
        " fix or unset OFD_PORT"
    )
    helped = ofd_process("--help", env={"OFD_PORT": "abc"})
    assert helped.returncode == 0
    assert "usage: ofd" in helped.stdout


async def test_the_registry_refuses_in_words(ofd: Ofd) -> None:  # noqa: F811
    org = await add_org(ofd)
    missing = await ofd("point", "add", "--org", "999999999", "--title", "Дүкен")
    assert missing.code == 1
    assert the_line(missing.err) == "error: not_found: no organization 999999999"
    iin = (await ofd.ok("org", "list", "--json"))["organizations"][0]["iin"]
    taken = await ofd("org", "add", "--iin", iin, "--title", "ТОО Екінші")
    assert the_line(taken.err) == (
        f"error: already_exists: an organization with iin {iin} already exists"
    )
    empty = await ofd("org", "update", "--id", str(org), "--title", "")
    assert the_line(empty.err) == (
        "error: invalid_argument: an organization's title must not be empty"
    )


async def test_a_wrong_key_names_where_it_came_from(
    ofd: Ofd,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hint = (
        "pass --key KEY, set OFD_CONTROL_KEY, or point --key-file at the gateway's"
        " DATA_DIR/operator.key"
    )
    wrong = await ofd("whoami", key="ofd_wrong")
    assert wrong.code == 1
    assert the_line(wrong.err) == (
        f"error: unauthenticated: the control API at {ofd.control} refused the key from --key"
        f" (unknown or revoked key): {hint}"
    )
    assert "operator.key" not in wrong.err.replace("DATA_DIR/operator.key", "")

    monkeypatch.setenv("OFD_CONTROL_KEY", "ofd_wrong_too")
    from_env = await ofd("whoami", key="")
    assert "refused the key from OFD_CONTROL_KEY (unknown or revoked key)" in from_env.err

    monkeypatch.delenv("OFD_CONTROL_KEY")
    none = await ofd("whoami", key="")  # the fixture points --key-file at /nonexistent
    assert the_line(none.err) == (
        f"error: unauthenticated: the control API at {ofd.control} wants a key and got none:"
        " --key and OFD_CONTROL_KEY are unset and --key-file /nonexistent cannot be read"
        f" (No such file or directory): {hint}"
    )


def test_a_control_api_that_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--control", "127.0.0.1:1", "--key", "k", "kkm", "list"])
    assert code == 1
    line = the_line(capsys.readouterr().err)
    assert line.startswith("error: the control API at 127.0.0.1:1 is unreachable (")
    assert line.endswith(
        "is `ofd serve` running? Pass its address with --control HOST:PORT (OFD_CONTROL)"
    )


def test_reset_token_refuses_without_a_terminal_or_yes(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--control", "127.0.0.1:1", "kkm", "reset-token", "100001"])
    assert code == 2
    line = the_line(capsys.readouterr().err)
    assert line.startswith("error: refusing to issue a new token for device 100001")
    assert "pass --yes to confirm (stdin is not a terminal)" in line


def test_debug_shows_the_traceback(tmp_path: Path, database_url: str, held_port: int) -> None:
    done = ofd_process(*serve_argv(tmp_path, database_url, port=held_port), "--debug")
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "OSError" in done.stderr


async def test_the_fleet_against_a_gateway_without_a_key(
    secured: RunningGateway,  # noqa: F811
) -> None:
    control = f"127.0.0.1:{secured.control_port}"
    fleet = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.fleet", "--devices", "1", "--seconds", "0.1", "--quiet",
        "--gateway", f"127.0.0.1:{secured.tcp.port}", "--control", control,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "OFD_CONTROL_KEY"},
    )  # fmt: skip
    _, err = await asyncio.wait_for(fleet.communicate(), SERVE_TIMEOUT)
    assert fleet.returncode == 1
    assert the_line(err.decode()) == (
        f"error: the control API at {control} refused: unauthenticated (no `authorization:"
        " Bearer <key>` metadata); a running gateway wants an operator key: pass --key, set"
        " OFD_CONTROL_KEY or --key-file DATA_DIR/operator.key"
    )
