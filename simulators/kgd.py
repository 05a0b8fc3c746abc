"""A simulated KGD (tax authority) speaking the OFD's KGD wire (proto/kgd/openapi.yaml) over real
HTTP, for tests, the demo and the benchmarks.

- Applications: held as pending, decided `decision_delay` seconds after they arrive. A register
  is refused when its serial is already registered under another system id ("serial already
  registered elsewhere"); any application of a serial in `refuse_serials` is refused with the
  reason given there; otherwise accepted. Idempotent by application_id: a resend is answered
  with the current status.
- Documents: stored once per document_id, acknowledged as accepted or duplicate. Every receipt
  of a document is counted, so a test can prove exactly once (each held once, none missing) and
  see how many resends the OFD made (`duplicates`). The order in which each register's documents
  first arrived is kept.
- Faults, set through the constructor or `POST /admin/faults` (JSON, any subset):
  `down` (every KGD call answers 503), `delay` (seconds a call waits before its answer, the
  documents already stored: the lost-answer case), `refuse_batches` (the next N document
  batches are answered 422 and nothing of them is stored), `decision_delay`.
- `GET /admin/state`: the counters as JSON.

`python -m simulators.kgd --port 7790 [--decision-delay S]` runs one until SIGTERM, printing
`kgd ready http://HOST:PORT` when it serves.
"""

import argparse
import asyncio
import base64
import binascii
import contextlib
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SERIAL_TAKEN = "serial already registered elsewhere"
DEFAULT_PORT = 7790
MAX_BODY = 64 * 1024 * 1024


@dataclass(slots=True)
class KgdFaults:
    down: bool = False
    delay: float = 0.0
    refuse_batches: int = 0
    decision_delay: float = 0.0


@dataclass(slots=True)
class HeldApplication:
    body: dict[str, Any]
    arrived: float  # monotonic
    status: str = "pending"
    reason: str = ""


@dataclass(slots=True)
class KgdCounters:
    batches: int = 0  # document batches acknowledged
    refused_batches: int = 0
    unavailable: int = 0  # calls answered 503 while down
    received: int = 0  # documents received in acknowledged batches, resends included
    duplicates: int = 0  # of those, already held
    in_flight: int = 0  # document batches being answered now


@dataclass
class SimulatedKgd:
    faults: KgdFaults = field(default_factory=KgdFaults)
    refuse_serials: dict[str, str] = field(default_factory=dict)  # serial -> reason
    counters: KgdCounters = field(default_factory=KgdCounters)
    # document_id -> (the document as received, how many times it was received)
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    times_received: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    order: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    applications: dict[str, HeldApplication] = field(default_factory=dict)
    registered_serials: dict[str, int] = field(default_factory=dict)  # serial -> system id
    _runner: web.AppRunner | None = None
    port: int = 0

    # --- running ---

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/applications", self._submit)
        app.router.add_get("/v1/applications/{application_id}", self._status)
        app.router.add_post("/v1/documents", self._documents)
        app.router.add_post("/admin/faults", self._set_faults)
        app.router.add_get("/admin/state", self._state)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serves on host:port (0: a free port); returns the base URL."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- what tests read ---

    def state(self) -> dict[str, Any]:
        statuses: dict[str, int] = defaultdict(int)
        for application in self.applications.values():
            statuses[self._decide(application).status] += 1
        return {
            "documents": len(self.documents),
            "received": self.counters.received,
            "duplicates": self.counters.duplicates,
            "batches": self.counters.batches,
            "refused_batches": self.counters.refused_batches,
            "unavailable": self.counters.unavailable,
            "in_flight": self.counters.in_flight,
            "applications": dict(statuses),
        }

    # --- the KGD's wire ---

    async def _gate(self) -> web.Response | None:
        """The faults every KGD call goes through: down answers 503 at once."""
        if self.faults.down:
            self.counters.unavailable += 1
            return _error(503, "KGD is down for maintenance", retry_after=1)
        return None

    async def _submit(self, request: web.Request) -> web.Response:
        if (refused := await self._gate()) is not None:
            return refused
        body = await _json(request)
        application_id = str(body.get("application_id") or "")
        if not application_id or body.get("kind") not in (
            "registration",
            "deregistration",
            "reregistration",
        ):
            return _error(400, "an application needs an application_id and a kind")
        held = self.applications.get(application_id)
        if held is None:
            held = self.applications[application_id] = HeldApplication(body, time.monotonic())
        elif held.body != body:
            return _error(409, f"application {application_id} was filed with other content")
        await self._slow()
        return web.json_response(_status_json(application_id, self._decide(held)))

    async def _status(self, request: web.Request) -> web.Response:
        if (refused := await self._gate()) is not None:
            return refused
        application_id = request.match_info["application_id"]
        held = self.applications.get(application_id)
        if held is None:
            return _error(404, f"no application {application_id}")
        await self._slow()
        return web.json_response(_status_json(application_id, self._decide(held)))

    def _decide(self, held: HeldApplication) -> HeldApplication:
        """Decides a pending application once its decision delay has passed."""
        if held.status != "pending":
            return held
        if time.monotonic() - held.arrived < self.faults.decision_delay:
            return held
        serial = str(held.body.get("serial_number", ""))
        system_id = int(held.body.get("system_id", 0))
        kind = held.body.get("kind")
        if kind == "deregistration":
            if serial in self.refuse_serials:
                held.status, held.reason = "refused", self.refuse_serials[serial]
                return held
            held.status = "accepted"
            if self.registered_serials.get(serial) == system_id:
                del self.registered_serials[serial]
            return held
        owner = self.registered_serials.get(serial)
        if serial in self.refuse_serials:
            held.status, held.reason = "refused", self.refuse_serials[serial]
        elif owner is not None and owner != system_id:
            held.status, held.reason = "refused", SERIAL_TAKEN
        else:
            held.status = "accepted"
            self.registered_serials[serial] = system_id
        return held

    async def _documents(self, request: web.Request) -> web.Response:
        if (refused := await self._gate()) is not None:
            return refused
        body = await _json(request)
        documents = body.get("documents")
        if not isinstance(documents, list) or not documents:
            return _error(400, "a batch needs documents")
        if self.faults.refuse_batches > 0:
            self.faults.refuse_batches -= 1
            self.counters.refused_batches += 1
            return _error(422, "batch refused: the KGD could not process it now")
        problem = next((p for p in map(_document_problem, documents) if p), None)
        if problem:
            return _error(400, problem)
        self.counters.in_flight += 1
        try:
            acknowledgements = [self._store(document) for document in documents]
            await self._slow()  # stored, not yet answered: a forwarder killed now resends
        finally:
            self.counters.in_flight -= 1
        self.counters.batches += 1
        return web.json_response({"acknowledgements": acknowledgements})

    def _store(self, document: dict[str, Any]) -> dict[str, str]:
        document_id = str(document["document_id"])
        self.counters.received += 1
        self.times_received[document_id] += 1
        if document_id in self.documents:
            self.counters.duplicates += 1
            return {"document_id": document_id, "status": "duplicate"}
        self.documents[document_id] = document
        self.order[int(document["device_id"])].append(document_id)
        return {"document_id": document_id, "status": "accepted"}

    async def _slow(self) -> None:
        if self.faults.delay > 0:
            await asyncio.sleep(self.faults.delay)

    # --- admin ---

    async def _set_faults(self, request: web.Request) -> web.Response:
        body = await _json(request)
        for name in ("down", "delay", "refuse_batches", "decision_delay"):
            if name in body:
                kind = type(getattr(self.faults, name))
                setattr(self.faults, name, kind(body[name]))
        return web.json_response(self.state())

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())


def _status_json(application_id: str, held: HeldApplication) -> dict[str, str]:
    return {"application_id": application_id, "status": held.status, "reason": held.reason}


def _document_problem(document: Any) -> str:
    if not isinstance(document, dict) or not document.get("document_id"):
        return "every document needs a document_id"
    try:
        base64.b64decode(str(document.get("body", "")), validate=True)
        int(document["device_id"])
    except (binascii.Error, KeyError, TypeError, ValueError):
        return f"document {document['document_id']}: body must be base64, device_id a number"
    return ""


def _error(status: int, text: str, *, retry_after: int | None = None) -> web.Response:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return web.json_response({"error": text}, status=status, headers=headers)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as err:
        raise web.HTTPBadRequest(text=f'{{"error": "not JSON: {err}"}}') from err
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "a JSON object is expected"}')
    return body


async def _serve(host: str, port: int, faults: KgdFaults) -> None:
    kgd = SimulatedKgd(faults)
    url = await kgd.start(host, port)
    print(f"kgd ready {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await kgd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="simulators.kgd", description="a simulated KGD")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--decision-delay", type=float, default=0.0)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            _serve(
                args.host,
                args.port,
                KgdFaults(delay=args.delay, decision_delay=args.decision_delay),
            )
        )


if __name__ == "__main__":
    main()
