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

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
MAX_QUEUED = 10_000  # notifications waiting for the broker; past this the oldest go
PUBLISH_TIMEOUT = 5.0  # seconds one publish may wait for the broker's PUBACK
CONNECT_TIMEOUT = 5.0
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0
MAX_DIFFERENCES = 20
DEFAULT_PORT = 1883
# The periodic scan for silent devices and long shifts.
SCAN_TIMEOUT = 10.0
MAX_ALERTS_PER_SCAN = 1000
SHIFT_LIMIT_HOURS = 24
# Devices state shift times in their own local time; Kazakhstan is one zone (UTC+5) since 2024.
DEVICE_TIMEZONE = "Asia/Almaty"

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
        """Queues one notification. Synchronous and bounded: callable on the request path."""
        item = (
            topic(self._settings.gateway_id, system_id, event),
            payload(self._settings.gateway_id, system_id, event, data),
        )
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


# --- the periodic scan: devices silent too long, shifts open too long ---

RAISE_OFFLINE_SQL = """
INSERT INTO device_alerts (system_id, kind, shift_number)
SELECT s.system_id, 'offline', 0
FROM device_state s JOIN devices d ON d.system_id = s.system_id
WHERE d.status IN ('registered', 'awaiting_deregistration')
  AND s.last_contact < now() - make_interval(secs => $1)
ORDER BY s.system_id
LIMIT $2
ON CONFLICT DO NOTHING
RETURNING system_id,
    (SELECT last_contact FROM device_state x WHERE x.system_id = device_alerts.system_id)
        AS last_contact
"""
CLEAR_OFFLINE_SQL = """
DELETE FROM device_alerts a USING device_state s
WHERE a.kind = 'offline' AND s.system_id = a.system_id AND s.last_contact > a.raised_at
"""
RAISE_SHIFT_SQL = f"""
INSERT INTO device_alerts (system_id, kind, shift_number)
SELECT s.system_id, 'shift_open', s.shift_number
FROM device_state s JOIN devices d ON d.system_id = s.system_id
WHERE d.status IN ('registered', 'awaiting_deregistration') AND s.shift_open
  AND s.shift_opened_at < (now() AT TIME ZONE '{DEVICE_TIMEZONE}')
                          - make_interval(hours => {SHIFT_LIMIT_HOURS})
ORDER BY s.system_id
LIMIT $1
ON CONFLICT DO NOTHING
RETURNING system_id, shift_number,
    (SELECT shift_opened_at FROM device_state x WHERE x.system_id = device_alerts.system_id)
        AS shift_opened_at
"""
CLEAR_SHIFT_SQL = """
DELETE FROM device_alerts a USING device_state s
WHERE a.kind = 'shift_open' AND s.system_id = a.system_id
  AND (NOT s.shift_open OR s.shift_number <> a.shift_number)
"""


async def scan_once(pool: asyncpg.Pool, notify: Notify, offline_seconds: float) -> int:
    """Raises each alert once (the row in device_alerts says it was: with several gateways
    only the one whose insert wins publishes), and clears those that no longer hold."""
    raised = 0
    async with pool.acquire(timeout=SCAN_TIMEOUT) as conn, conn.transaction():
        await conn.execute(CLEAR_OFFLINE_SQL, timeout=SCAN_TIMEOUT)
        await conn.execute(CLEAR_SHIFT_SQL, timeout=SCAN_TIMEOUT)
        offline = await conn.fetch(
            RAISE_OFFLINE_SQL, offline_seconds, MAX_ALERTS_PER_SCAN, timeout=SCAN_TIMEOUT
        )
        shifts = await conn.fetch(RAISE_SHIFT_SQL, MAX_ALERTS_PER_SCAN, timeout=SCAN_TIMEOUT)
    now = datetime.now(UTC)
    for row in offline:
        last: datetime = row["last_contact"]
        seconds = int((now - last).total_seconds())
        notify(row["system_id"], "offline", {"last_contact": last.isoformat(), "seconds": seconds})
        raised += 1
    for row in shifts:
        opened: datetime = row["shift_opened_at"]
        notify(
            row["system_id"],
            "shift_open_too_long",
            {"shift_number": row["shift_number"], "opened_at": opened.isoformat()},
        )
        raised += 1
    return raised


async def scan_forever(
    pool: asyncpg.Pool, notify: Notify, offline_seconds: float, interval: float
) -> None:
    """Runs `scan_once` every `interval` seconds until cancelled; a failed scan is logged and
    the next one tries again."""
    while True:
        with contextlib.suppress(TimeoutError):
            try:
                await scan_once(pool, notify, offline_seconds)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("alert scan failed", error=repr(err))
        await asyncio.sleep(interval)
