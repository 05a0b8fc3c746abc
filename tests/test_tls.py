"""TLS on the gRPC surfaces, with certificates made for the test by openssl: the control API
with mutual TLS (an operator needs the CA and a client certificate it signed, then still a key),
the gRPC device ingest with server TLS. Plaintext, a missing client certificate and an
untrusted server are refused.
"""

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from conftest import gateway_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ingest.app import running_gateway
from ingest.tls import ServerTls
from ledger.access import read_key_file

pytestmark = pytest.mark.adversity

TIMEOUT = 10.0


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_ca: Path  # a CA that signed none of these


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}")  # fmt: skip
    return key, cert


def _signed(directory: Path, name: str, ca: tuple[Path, Path], extension: str) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}{s}" for s in (".key", ".csr", ".pem"))
    ext = directory / f"{name}.ext"
    ext.write_text(extension)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = _ca(tmp_path, "ofd-ca")
    server = _signed(tmp_path, "gateway", ca, "subjectAltName=IP:127.0.0.1\n")
    client = _signed(tmp_path, "operator", ca, "extendedKeyUsage=clientAuth\n")
    _, stranger = _ca(tmp_path, "stranger-ca")
    return Pki(ca[1], server[0], server[1], client[0], client[1], stranger)


def _ofd(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_control_api_over_mutual_tls_and_grpc_ingest_over_tls(
    tmp_path: Path, database_url: str, pki: Pki
) -> None:
    tls = ServerTls(str(pki.server_cert), str(pki.server_key), str(pki.ca))
    settings = dataclasses.replace(
        gateway_settings(tmp_path / "gw", database_url, control_auth=True),
        control_tls=tls,
        grpc_tls=ServerTls(str(pki.server_cert), str(pki.server_key)),
    )
    async with running_gateway(settings) as gateway:
        key = read_key_file(tmp_path / "gw")
        assert key is not None
        control = f"127.0.0.1:{gateway.control_port}"
        base = ["--control", control, "--key", key]
        client = ["--control-ca", str(pki.ca), "--control-cert", str(pki.client_cert),
                  "--control-cert-key", str(pki.client_key)]  # fmt: skip

        ok = await asyncio.to_thread(_ofd, *base, *client, "whoami", "--json")
        assert ok.returncode == 0, ok.stderr
        assert '"bootstrap"' in ok.stdout

        refused = [
            base,  # plaintext to a TLS port
            [*base, "--control-ca", str(pki.ca)],  # TLS without the client certificate
            [*base, *client[2:], "--control-ca", str(pki.stranger_ca)],  # untrusted server
        ]
        for argv in refused:
            answer = await asyncio.to_thread(_ofd, *argv, "whoami")
            assert answer.returncode != 0, argv
            assert "Traceback" not in answer.stderr
            assert len(answer.stderr.strip().splitlines()) == 1, answer.stderr

        assert gateway.grpc_port is not None
        ingest = f"127.0.0.1:{gateway.grpc_port}"
        credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        async with grpc.aio.secure_channel(ingest, credentials) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(ingest) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--control-tls-cert", "/nonexistent.pem"], "TLS needs both a certificate and its key"),
        (["--control-tls-client-ca", "/ca.pem"], "a client CA needs the server's certificate"),
        (["--grpc-tls-cert", "/nonexistent.pem", "--grpc-tls-key", "/nonexistent.key"],
         "cannot read the TLS certificate /nonexistent.pem"),
    ],
)  # fmt: skip
def test_tls_mistakes_are_one_line(tmp_path: Path, argv: list[str], message: str) -> None:
    done = _ofd("serve", "--data-dir", str(tmp_path / "data"), "--grpc-port", "0", *argv)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
