"""The metrics port's HTTP server: /metrics for Prometheus and /healthz for load balancers, on a
daemon thread of its own (a scrape never waits for the event loop, nor the loop for a scrape).

/healthz answers 200 "ok" while the gateway can make documents durable, and 503 with the reason
while its writes fail (the journal or PostgreSQL unreachable from this gateway): a balancer then
sends devices to the others. It says so only for HEALTH_HOLD seconds after the last failure, so a
gateway taken out of rotation is tried again and comes back once its writes succeed.
"""

from collections.abc import Callable, Iterable
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

HEALTH_PATH = "/healthz"
HEALTH_HOLD = 10.0  # seconds a failed write keeps /healthz at 503 (unless a write succeeds)

Health = Callable[[], str | None]  # None: healthy; else why not
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape on stderr (the gateway's logs are JSON)."""

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


def application(registry: CollectorRegistry, health: Health) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == HEALTH_PATH:
            reason = health()
            status = "200 OK" if reason is None else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n" if reason is None else f"{reason}\n".encode()]
        body: Iterable[bytes] = metrics(environ, start_response)
        return body

    return app


def serve(
    registry: CollectorRegistry, health: Health, host: str, port: int
) -> tuple[WSGIServer, Thread]:
    """Serves from a daemon thread (port 0: the kernel picks); raises OSError if it cannot bind."""
    server = make_server(
        host, port, application(registry, health), ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
