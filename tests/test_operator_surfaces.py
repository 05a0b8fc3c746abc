"""The operator's surfaces are apart from the devices': a gateway serving devices on every
interface still keeps its control API and /metrics on loopback, its files private, and its secret
out of /proc when it comes from a file.

What listens where is read from the kernel's socket table (/proc/net/tcp), not by connecting to a
non-loopback address.
"""

import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.stage.processes import start_gateway, stop

pytestmark = pytest.mark.adversity

LISTEN = "0A"
EVERYWHERE = "0.0.0.0"


def _address(hex_address: str) -> str:
    """/proc/net/tcp{,6} spell addresses as 32-bit little-endian words; an IPv4-mapped IPv6
    address (how gRPC binds 127.0.0.1) is given in its IPv4 form."""
    raw = b"".join(
        bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8)
    )
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def _listening() -> dict[int, set[str]]:
    """port -> the addresses something listens on (IPv4 and IPv6)."""
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state != LISTEN:
                continue
            address_hex, port_hex = local.split(":")
            found.setdefault(int(port_hex, 16), set()).add(_address(address_hex))
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_devices_everywhere_operators_on_loopback_files_private(
    tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "data"
    secret_file = tmp_path / "secret.hex"
    secret_file.write_text("ab" * 32 + "\n")
    metrics_port = _free_port()
    gateway = start_gateway(
        data_dir,
        "--host", EVERYWHERE,
        "--database-url", database_url,
        "--metrics-port", str(metrics_port),
        "--secret-file", str(secret_file),
    )  # fmt: skip
    try:
        listening = _listening()
        assert listening[gateway.port] == {EVERYWHERE}
        control_port = int(gateway.control.rsplit(":", 1)[1])
        assert listening[control_port] == {"127.0.0.1"}
        assert listening[metrics_port] == {"127.0.0.1"}
        # The secret came from the file: nothing of it on the command line.
        cmdline = Path(f"/proc/{gateway.pid}/cmdline").read_bytes()
        assert b"abab" not in cmdline
        assert not (data_dir / "secret").exists()
    finally:
        stop(gateway)
    # Everything the gateway created is its user's alone.
    created = [p for p in data_dir.rglob("*") if p.name != "gateway.log"]
    assert any(p.suffix == ".seg" for p in created)
    for path in created:
        if path.is_symlink():
            continue
        assert _mode(path) & 0o077 == 0, f"{path} is {oct(_mode(path))}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read --secret-file"),
        ("abcd\n", "must be at least 16 bytes"),
        ("not hex at all, not hex at all, not hex\n", "must be hexadecimal"),
    ],
)
def test_a_bad_secret_file_is_one_line(tmp_path: Path, content: str | None, message: str) -> None:
    secret_file = tmp_path / "secret.hex"
    if content is not None:
        secret_file.write_text(content)
    done = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "serve", "--data-dir", str(tmp_path / "data"),
         "--secret-file", str(secret_file)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_one_of_several_gateways_needs_the_shared_secret(tmp_path: Path) -> None:
    """A gateway id says there are others: a secret made in this data directory would sign
    differently from theirs, so start refuses it."""
    done = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "serve", "--data-dir", str(tmp_path / "data"),
         "--gateway-id", "gw7"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "give every one the same --secret-file" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "secret").exists()


def test_a_bad_mqtt_url_is_refused_before_the_database_is_opened(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "serve", "--data-dir", str(tmp_path / "data"),
         "--mqtt-url", "http://broker:1883"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "an MQTT URL looks like mqtt://host:1883" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "pg").exists()  # the embedded PostgreSQL never started
