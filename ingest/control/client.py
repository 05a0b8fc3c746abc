"""The blocking control API client for the CLI, the demo, the fleet and tests."""

import os
from pathlib import Path
from typing import Any

import grpc

from ingest.control.methods import CALL_TIMEOUT, METHODS, SERVICE
from ingest.tls import ClientTls
from ledger.access import read_key_file

KEY_ENV = "OFD_CONTROL_KEY"


def find_key(key: str | None = None, data_dir: Path | None = None) -> str | None:
    """The key a client presents: given, else OFD_CONTROL_KEY, else DATA_DIR/operator.key."""
    if key:
        return key
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV]
    return None if data_dir is None else read_key_file(data_dir)


def auth_metadata(key: str | None) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata that presents `key`; none without a key."""
    return () if not key else (("authorization", f"Bearer {key}"),)


class ControlClient:
    """A blocking client for the CLI, the demo and tests; `key` (else OFD_CONTROL_KEY) goes
    with every call."""

    def __init__(self, target: str, key: str | None = None, tls: ClientTls | None = None) -> None:
        self._channel = (
            grpc.insecure_channel(target)
            if tls is None
            else grpc.secure_channel(target, tls.credentials())
        )
        self._metadata = auth_metadata(find_key(key))

    def call(self, method: str, request: Any) -> Any:
        request_type, response_type, _ = METHODS[method]
        if not isinstance(request, request_type):
            raise TypeError(f"{method} takes {request_type.__name__}")
        stub = self._channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return stub(request, timeout=CALL_TIMEOUT, metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()
