"""Notifications over MQTT: what happened to a device, for people and alerting.

Topic scheme (one per event, so a subscriber picks with wildcards):

    ofd/<gateway_id>/devices/<system_id>/<event>

e.g. `ofd/gw1/devices/100001/blocked`; `ofd/+/devices/+/z_mismatch` follows every gateway's
Z report mismatches. Published with QoS 1 (at least once: a subscriber may see a duplicate and
should key on `id`), never retained.

Payload: one JSON object, UTF-8:

    {
      "schema": 1,                      # bumped on any incompatible change
      "id": "3f1c...",                  # unique per notification: deduplicate on it
      "event": "blocked",               # the last topic level again
      "gateway": "gw1",
      "system_id": 100001,
      "at": "2026-11-26T05:45:00.123456+00:00",   # when the gateway raised it (UTC)
      "data": {...}                     # event-specific, below
    }

Events and their `data`:

- registered: the control API marked it registered at KGD; data: status, trade_point_id
- awaiting_deregistration, deregistered, awaiting_registration (re-registration): the rest of
  the lifecycle; data: status, trade_point_id
- token_reset: a new token issued; data: by (the caller's key name)
- blocked / unblocked: data: message (blocked: what the device shows)
- subscription_on / subscription_off: data: active
- z_mismatch: a closed shift whose Z report differs from the OFD's tally; data: shift_number,
  offline, device_sent_z, differences (at most 20), difference_count
- protocol_version_changed: the device speaks another version than before; data: previous,
  current
- offline: the periodic scan: no contact for longer than the threshold (well before the 72 h
  after which a device blocks itself); data: last_contact, seconds
- shift_open_too_long: the periodic scan: a shift open longer than 24 h; data: shift_number,
  opened_at (device-local)

A broker outage never slows or blocks ingest: `publish` only puts the notification on a bounded
queue (dropping the oldest when full, counted in `stats.dropped`); one background task sends them,
each send bounded by a timeout, reconnecting with capped exponential backoff and jitter.
"""

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiomqtt
import asyncpg
import structlog

from ledger import alerts
from ledger.state_store import DATABASE_ERRORS

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
MAX_QUEUED = 10_000  # notifications waiting for the broker; past this the oldest go
PUBLISH_TIMEOUT = 5.0  # seconds one publish may wait for the broker's PUBACK
CONNECT_TIMEOUT = 5.0
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0
MAX_DIFFERENCES = 20
DEFAULT_PORT = 1883
SCAN_TIMEOUT = 10.0  # seconds one periodic alert scan may take

# (system id, event, data): hands a notification over; never blocks, never raises.
Notify = Callable[[int, str, dict[str, object]], None]


def no_notify(system_id: int, event: str, data: dict[str, object]) -> None:
    del system_id, event, data


def topic(gateway_id: str, system_id: int, event: str) -> str:
    return f"ofd/{gateway_id}/devices/{system_id}/{event}"


def payload(gateway_id: str, system_id: int, event: str, data: dict[str, object]) -> bytes:
    message = {
        "schema": SCHEMA_VERSION,
        "id": uuid.uuid4().hex,
        "event": event,
        "gateway": gateway_id,
        "system_id": system_id,
        "at": datetime.now(UTC).isoformat(),
        "data": data,
    }
    return json.dumps(message, ensure_ascii=False, default=str).encode()


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int
    gateway_id: str
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str, gateway_id: str) -> "MqttSettings":
        """`mqtt://[user:password@]host[:port]`."""
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"an MQTT URL looks like mqtt://host:1883, not {url!r}")
        return cls(
            parts.hostname, parts.port or DEFAULT_PORT, gateway_id, parts.username, parts.password
        )


@dataclass(slots=True)
class NotifierStats:
    queued: int = 0
    published: int = 0
    dropped: int = 0  # the queue was full: the oldest went
    failures: int = 0  # connections or publishes that failed (each retried)


class Notifier:
    """The bounded queue and the task that drains it to the broker."""

    def __init__(self, settings: MqttSettings) -> None:
        self._settings = settings
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(MAX_QUEUED)
        self.stats = NotifierStats()

    def publish(self, system_id: int, event: str, data: dict[str, object]) -> None:
        """Queues one device notification. Synchronous and bounded: callable on the request path."""
        self.publish_message(
            topic(self._settings.gateway_id, system_id, event),
            payload(self._settings.gateway_id, system_id, event, data),
        )

    def publish_message(self, topic_name: str, body: bytes) -> None:
        """Queues one message for any topic (the cabinet's one-time codes use their own)."""
        item = (topic_name, body)
        if self._queue.full():
            self._queue.get_nowait()
            self.stats.dropped += 1
        self._queue.put_nowait(item)
        self.stats.queued += 1

    async def run(self) -> None:
        """Sends forever (cancel to stop): connect, drain, and on any failure back off and
        reconnect, resending the notification that failed first."""
        pending: tuple[str, bytes] | None = None
        delay = BACKOFF_FIRST
        while True:
            try:
                async with aiomqtt.Client(
                    self._settings.host,
                    self._settings.port,
                    username=self._settings.username,
                    password=self._settings.password,
                    identifier=f"ofd-{self._settings.gateway_id}-{uuid.uuid4().hex[:8]}",
                    timeout=CONNECT_TIMEOUT,
                ) as client:
                    delay = BACKOFF_FIRST
                    while True:
                        if pending is None:
                            pending = await self._queue.get()
                        await client.publish(pending[0], pending[1], qos=1, timeout=PUBLISH_TIMEOUT)
                        pending = None
                        self.stats.published += 1
            except (aiomqtt.MqttError, OSError, TimeoutError) as err:
                self.stats.failures += 1
                log.warning("mqtt unavailable", error=str(err), retry_in=round(delay, 2))
                await asyncio.sleep(delay * (0.5 + random.random()))  # jitter only
                delay = min(delay * 2, BACKOFF_MAX)


# --- the periodic scan (ledger.alerts): devices silent too long, shifts open too long ---


async def scan_once(pool: asyncpg.Pool, notify: Notify, offline_seconds: float) -> int:
    """Publishes the alerts one scan raises; returns how many."""
    async with pool.acquire(timeout=SCAN_TIMEOUT) as conn:
        raised = await alerts.scan(conn, offline_seconds, timeout=SCAN_TIMEOUT)
    now = datetime.now(UTC)
    for offline in raised.offline:
        seconds = int((now - offline.last_contact).total_seconds())
        notify(
            offline.system_id,
            "offline",
            {"last_contact": offline.last_contact.isoformat(), "seconds": seconds},
        )
    for shift in raised.shifts_open:
        notify(
            shift.system_id,
            "shift_open_too_long",
            {"shift_number": shift.shift_number, "opened_at": shift.opened_at.isoformat()},
        )
    return len(raised.offline) + len(raised.shifts_open)


async def scan_forever(
    pool: asyncpg.Pool, notify: Notify, offline_seconds: float, interval: float
) -> None:
    """Runs `scan_once` every `interval` seconds until cancelled; a failed scan is logged and
    the next one tries again."""
    while True:
        with contextlib.suppress(TimeoutError):
            try:
                await scan_once(pool, notify, offline_seconds)
            except DATABASE_ERRORS as err:
                log.warning("alert scan failed", error=repr(err))
        await asyncio.sleep(interval)
