"""deploy/systemd: the units pass `systemd-analyze verify` with nothing to say, their command
lines are ones `ofd` accepts, the hardening is there, the environment files hold only settings
the CLI reads, and the user they run as is the one the sysusers file creates."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_files import DEPLOY, cli_args, env_file, read_by_cli

SYSTEMD = DEPLOY / "systemd"
GATEWAY = SYSTEMD / "ofd-gateway@.service"
LOADER = SYSTEMD / "ofd-loader.service"
TARGET = SYSTEMD / "ofd-gateway.target"
INSTALLED_OFD = "/opt/ofd/venv/bin/ofd"
# What the specifiers stand for when systemd starts ofd-gateway@7791 on host gw-1.
SPECIFIERS = {"%i": "7791", "%H": "gw-1", "%d": "/run/credentials/x", "%S": "/var/lib"}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "UMask": "0077",
}


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found is not None, "systemd-analyze is missing: apt-get install systemd"
    return found


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value given (systemd keys repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def _expand(text: str) -> str:
    for specifier, value in SPECIFIERS.items():
        text = text.replace(specifier, value)
    return text


def _verify(tmp_path: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_systemd_analyze(), "verify", *(str(tmp_path / unit) for unit in units)],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip


def _copies(tmp_path: Path) -> None:
    """The units with ExecStart's binary where it is on this machine (verify wants it to exist)."""
    ofd = Path(sys.executable).parent / "ofd"  # beside the Python running the tests
    assert ofd.exists(), ofd
    for unit in (GATEWAY, LOADER, TARGET):
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED_OFD, str(ofd)))


def test_units_verify_clean(tmp_path: Path) -> None:
    _copies(tmp_path)
    done = _verify(tmp_path, "ofd-gateway@7791.service", "ofd-loader.service", TARGET.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""


def test_verify_reports_what_it_should(tmp_path: Path) -> None:
    """The check has teeth: a misspelt directive is reported, though verify still exits 0."""
    _copies(tmp_path)
    unit = tmp_path / "ofd-loader.service"
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    done = _verify(tmp_path, "ofd-loader.service")
    assert "Unknown key 'NoNewPrivilege'" in done.stderr


@pytest.mark.parametrize("unit", [GATEWAY, LOADER], ids=lambda p: p.name)
def test_unit_is_hardened_and_unprivileged(unit: Path) -> None:
    service = _unit(unit)["Service"]
    for key, value in HARDENING.items():
        assert service[key] == [value], key
    assert service["User"] == ["ofd"]
    (state,) = service["StateDirectory"]
    assert service["ReadWritePaths"] == [f"%S/{state}"]  # the data directory, nothing else
    assert service["Restart"] == ["on-failure"]


def test_gateway_command_line_is_one_of_several_per_core() -> None:
    service = _unit(GATEWAY)["Service"]
    (exec_start,) = service["ExecStart"]
    words = _expand(exec_start).split()
    assert words[0] == INSTALLED_OFD
    args = cli_args(words[1:])
    assert args["reuse_port"] is True
    assert args["gateway_id"] == "gw-1-7791"  # host and instance: unique across VMs
    assert args["metrics_port"] == 7791  # each process its own /metrics port
    # The shared secret through LoadCredential=, readable by this service only.
    credentials = dict(c.split(":", 1) for c in service["LoadCredential"])
    assert credentials == {"secret": "/etc/ofd/secret", "pgpass": "/etc/ofd/pgpass"}
    assert args["secret_file"] == _expand("%d/secret")
    assert "PGPASSFILE=%d/pgpass" in service["Environment"]
    assert int(service["LimitNOFILE"][0]) > 10_000  # MAX_CONNECTIONS per process, and more
    assert _unit(GATEWAY)["Install"]["WantedBy"] == [TARGET.name]


def test_loader_command_line() -> None:
    (exec_start,) = _unit(LOADER)["Service"]["ExecStart"]
    words = exec_start.split()
    assert words[0] == INSTALLED_OFD
    env = env_file(SYSTEMD / "ofd-loader.env.example")
    args = cli_args(words[1:], env)
    assert args["kafka_group"] == "ofd-warehouse"
    assert args["metrics_port"] == int(env["OFD_LOADER_METRICS_PORT"])
    assert args["clickhouse_url"].startswith("clickhouse://")


@pytest.mark.parametrize("example", sorted(SYSTEMD.glob("*.env.example")), ids=lambda p: p.name)
def test_environment_files_hold_settings_the_cli_reads(example: Path) -> None:
    for name, value in env_file(example).items():
        assert read_by_cli(name, value), f"{example.name}: nothing reads {name}"


def test_gateway_environment_runs_on_kafka_and_the_failover_dsn() -> None:
    env = env_file(SYSTEMD / "ofd-gateway.env.example")
    args = cli_args(["serve"], env)
    assert args["journal"] == "kafka"
    assert args["database_url"].endswith("?target_session_attrs=read-write")
    assert "," in args["database_url"]  # primary and replica
    assert args["control_host"] != args["host"]  # operators never where devices connect
    assert args["metrics_host"] != args["host"]


def test_sysusers_creates_the_units_user(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    assert sysusers is not None
    (tmp_path / "etc").mkdir()
    done = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSTEMD / "ofd.sysusers")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    entries = [line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()]
    (ofd,) = [e for e in entries if e[0] == "ofd"]
    assert ofd[2] != "0"
    assert ofd[6].endswith("nologin")
