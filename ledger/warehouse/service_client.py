"""The query service's client: POST a query or a named report, get its rows.

A caller that asks often (the cabinet, a check per request) keeps one HTTP/1.1 connection per
thread to the service and reuses it: a new connection per query cost the service a thread start
and both sides a handshake, more than the point read the public check makes. The service closes
a connection idle for its read timeout (service.REQUEST_READ_TIMEOUT), so a kept connection may
be found dead when next used: a request failing that way on a reused connection is sent once
more on a new one (every query is a read, so sending it again changes nothing).
"""

import http.client
import json
import threading
from dataclasses import dataclass
from typing import Any

from ledger.errors import OfdError
from ledger.warehouse.backends import QueryLimits, Row

# The client waits for a free slot and for the query itself: twice the timeout, and a margin.
CLIENT_MARGIN = 10.0


class ServiceError(OfdError):
    """The query service cannot be reached or answered with an error."""


class ServiceUnreachable(ServiceError):
    """No answer from the address: the service stopped, or moved (a restart takes a new port)."""


class ServiceUnauthorized(ServiceError):
    """401: the key presented is not the service's (a new service may have a new key)."""


@dataclass(frozen=True, slots=True)
class ServiceTarget:
    """Where the service listens and the analyst key it is asked with."""

    host: str
    port: int
    key: str | None


class ServiceClient:
    """Asks the service over one kept connection per calling thread (each thread closes only
    its own: a connection is never shared, so none is closed under another's request)."""

    def __init__(self, timeout: float = QueryLimits().timeout) -> None:
        self._wait = 2 * timeout + CLIENT_MARGIN
        self._local = threading.local()

    def ask(self, target: ServiceTarget, path: str, payload: dict[str, Any]) -> list[Row]:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if target.key:
            headers["Authorization"] = f"Bearer {target.key}"
        try:
            status, answer = self._send(target, path, body, headers)
        except (OSError, http.client.HTTPException) as err:  # refused, broken, timed out
            self.close()
            reason = str(err) or type(err).__name__  # RemoteDisconnected's, timeouts' may be empty
            raise ServiceUnreachable(
                f"warehouse service at {target.host}:{target.port}: {reason}"
            ) from err
        return self._answered(target, status, answer)

    def _send(
        self, target: ServiceTarget, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        connection = self._connection(target)
        reused = connection.sock is not None
        try:
            return _exchange(connection, path, body, headers)
        except (ConnectionError, http.client.BadStatusLine):
            if not reused:
                raise
            self.close()
        # The service closed the kept connection (idle too long, or it restarted): once more,
        # on a new one.
        return _exchange(self._connection(target), path, body, headers)

    def _answered(self, target: ServiceTarget, status: int, answer: bytes) -> list[Row]:
        try:
            body = json.loads(answer or b"{}")
        except ValueError as err:
            self.close()
            raise ServiceError(f"warehouse service at {target.host}:{target.port}: {err}") from err
        if status == http.client.UNAUTHORIZED:
            raise ServiceUnauthorized(str(body.get("error", "unauthorized")))
        if status != http.client.OK:
            raise ServiceError(str(body.get("error", f"HTTP {status}")))
        rows: list[Row] = body["rows"]
        return rows

    def _connection(self, target: ServiceTarget) -> http.client.HTTPConnection:
        """This thread's connection to `target`; one to another address is closed first."""
        kept: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if kept is not None and (kept.host, kept.port) == (target.host, target.port):
            return kept
        self.close()
        fresh = http.client.HTTPConnection(target.host, target.port, timeout=self._wait)
        self._local.connection = fresh
        return fresh

    def close(self) -> None:
        """Closes this thread's connection (the next request opens another)."""
        kept: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if kept is not None:
            kept.close()
            self._local.connection = None


def _exchange(
    connection: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    """One request and its whole answer (read to its end: the connection is then free again)."""
    connection.request("POST", path, body=body, headers=headers)
    answer = connection.getresponse()
    return answer.status, answer.read()


def ask_service(
    address: tuple[str, int],
    path: str,
    payload: dict[str, Any],
    *,
    key: str | None = None,
    timeout: float = QueryLimits().timeout,
) -> list[Row]:
    """One request on a connection of its own (a command's single query)."""
    client = ServiceClient(timeout)
    try:
        return client.ask(ServiceTarget(*address, key), path, payload)
    finally:
        client.close()
