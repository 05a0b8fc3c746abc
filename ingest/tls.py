"""TLS for the gRPC surfaces: the control API (optionally mutual: operators present a client
certificate signed by a CA of the operator's own) and the gRPC device ingest, from PEM files.

Files are read once at start; a missing or unreadable one is a one-line error naming it. The
keys stay in files (never flags or variables, which show in /proc).
"""

from dataclasses import dataclass
from pathlib import Path

import grpc


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read {what} {path}: {err.strerror}") from err


@dataclass(frozen=True, slots=True)
class ServerTls:
    cert_file: str  # PEM: the server's certificate (chain)
    key_file: str  # PEM: its private key
    client_ca_file: str | None = None  # PEM: require client certificates signed by this CA

    def __post_init__(self) -> None:
        self.credentials()  # a missing or unreadable file is refused with the settings

    def credentials(self) -> grpc.ServerCredentials:
        cert = _read(self.cert_file, "the TLS certificate")
        key = _read(self.key_file, "the TLS key")
        client_ca = (
            None if self.client_ca_file is None else _read(self.client_ca_file, "the client CA")
        )
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


@dataclass(frozen=True, slots=True)
class ClientTls:
    ca_file: str  # PEM: the CA that signed the server's certificate
    cert_file: str | None = None  # PEM: this client's certificate (mutual TLS)
    key_file: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "the CA file"),
            private_key=None if self.key_file is None else _read(self.key_file, "the TLS key"),
            certificate_chain=(
                None if self.cert_file is None else _read(self.cert_file, "the TLS certificate")
            ),
        )


def server_tls(cert: str, key: str, client_ca: str = "", *, surface: str) -> ServerTls | None:
    """From CLI values ("" = not given): None when neither file is given; a one-line error when
    only one is."""
    if not cert and not key:
        if client_ca:
            raise ValueError(f"{surface}: a client CA needs the server's certificate and key")
        return None
    if not (cert and key):
        raise ValueError(f"{surface}: TLS needs both a certificate and its key")
    return ServerTls(cert, key, client_ca or None)
