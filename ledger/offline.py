"""Offline ("autonomous") mode as the OFD keeps it: offline receipts by number, and each device's
open offline window.

- An offline receipt is stored under the number the device gave it (`offline_ticket_number`,
  unique for the device's lifetime). The same number again with the identical document is the
  same document: answered with the same ticket number and counted once. With another document
  it is refused, INCORRECT_REQUEST_DATA naming the field (inferred: the device then stops until
  support removes the message, which is what a forged or corrupted backlog deserves).
- A device's offline window opens with a SYSTEM reporting `offline_period` or with an accepted
  offline document (whichever shows the earlier moment), widens with every later one, and
  closes with the first online document or a SYSTEM without a period. While it is open,
  `open_windows` lists it with its age, so a device at 60 hours shows up before it blocks itself
  at 72 (protocol.md "Offline mode").

Times are device-local (UTC+5), as the protocol carries them. Rows change only in the
transaction that writes the request's device state (`ledger.state_store.write_states`), and only
for requests that change them: the per-request batch update does not grow.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# As in ledger.state_store, which imports this module.
Conn = asyncpg.Connection | PoolConnectionProxy

# The oldest queued receipt may not be older than this, or the device blocks itself.
OFFLINE_LIMIT = timedelta(hours=72)
# Windows at least this old are the ones to warn about (a day before the self-block).
OFFLINE_WARNING = timedelta(hours=48)
MAX_WINDOWS = 1000  # one listing at most; callers narrow with `at_least`
DIGEST_BYTES = 16


@dataclass(frozen=True, slots=True)
class OfflineTicket:
    """An accepted offline receipt, as offline_tickets keeps it."""

    offline_number: int
    document_id: str
    fiscal_sign: str
    digest: bytes
    shift_number: int
    made_at: datetime


@dataclass(frozen=True, slots=True)
class OfflineWrite:
    """What one accepted request changes in its device's offline record."""

    ticket: OfflineTicket | None = None
    since: datetime | None = None  # widen the window to cover since..until
    until: datetime | None = None
    close: bool = False  # the device is online again: no open window
    reported: bool = False  # the device reported the period itself (SYSTEM)


CLOSE = OfflineWrite(close=True)


@dataclass(frozen=True, slots=True)
class OfflineWindow:
    system_id: int
    since: datetime
    until: datetime | None
    reported_at: datetime | None
    age: timedelta  # now (device-local) minus `since`

    @property
    def left(self) -> timedelta:
        """Time until the device blocks itself (negative: past it)."""
        return OFFLINE_LIMIT - self.age


def digest_of(ticket: Any) -> bytes:
    """The receipt's fingerprint: deterministic bytes, so the same document gives the same."""
    data = ticket.SerializeToString(deterministic=True)
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def widen(when: datetime) -> OfflineWrite:
    return OfflineWrite(since=when, until=when)


async def find_offline_ticket(
    conn: Conn, system_id: int, offline_number: int, *, timeout: float
) -> OfflineTicket | None:
    row = await conn.fetchrow(
        "SELECT offline_number, document_id, fiscal_sign, digest, shift_number, made_at"
        " FROM offline_tickets WHERE system_id = $1 AND offline_number = $2",
        system_id,
        offline_number,
        timeout=timeout,
    )
    if row is None:
        return None
    return OfflineTicket(
        row["offline_number"],
        row["document_id"],
        row["fiscal_sign"],
        row["digest"],
        row["shift_number"],
        row["made_at"],
    )


_WINDOW_SQL = """
UPDATE device_state AS s SET
    offline_since = CASE WHEN u.close THEN NULL ELSE LEAST(s.offline_since, u.since) END,
    offline_until = CASE WHEN u.close THEN NULL ELSE GREATEST(s.offline_until, u.until) END,
    offline_reported_at = CASE WHEN u.close THEN NULL WHEN u.reported THEN now()
                               ELSE s.offline_reported_at END
FROM unnest($1::bigint[], $2::timestamp[], $3::timestamp[], $4::boolean[], $5::boolean[])
     AS u(system_id, since, until, close, reported)
WHERE s.system_id = u.system_id
"""

# ON CONFLICT: the pipeline looked the number up first, under the device's state version; a
# row there now can only be this very document, and must not fail the batch of other devices.
_TICKETS_SQL = """
INSERT INTO offline_tickets (system_id, offline_number, document_id, fiscal_sign, digest,
                             shift_number, made_at)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bytea[],
                     $6::integer[], $7::timestamp[])
ON CONFLICT DO NOTHING
"""


async def write_offline(
    conn: Conn, writes: Sequence[tuple[int, OfflineWrite]], *, timeout: float
) -> None:
    """Applies the (system id, change) pairs of one committed batch, in its transaction."""
    if not writes:
        return
    await conn.execute(
        _WINDOW_SQL,
        [system_id for system_id, _ in writes],
        [w.since for _, w in writes],
        [w.until for _, w in writes],
        [w.close for _, w in writes],
        [w.reported for _, w in writes],
        timeout=timeout,
    )
    tickets = [(system_id, w.ticket) for system_id, w in writes if w.ticket is not None]
    if tickets:
        await conn.execute(
            _TICKETS_SQL,
            [system_id for system_id, _ in tickets],
            [t.offline_number for _, t in tickets],
            [t.document_id for _, t in tickets],
            [t.fiscal_sign for _, t in tickets],
            [t.digest for _, t in tickets],
            [t.shift_number for _, t in tickets],
            [t.made_at for _, t in tickets],
            timeout=timeout,
        )


async def open_windows(
    conn: Conn, *, now: datetime, at_least: timedelta = timedelta(0), timeout: float = 10.0
) -> list[OfflineWindow]:
    """Devices whose offline window is open since at least `at_least` before `now` (device-local
    time), oldest first: `at_least=OFFLINE_WARNING` is the list to act on."""
    rows = await conn.fetch(
        "SELECT system_id, offline_since, offline_until, offline_reported_at FROM device_state"
        " WHERE offline_since IS NOT NULL AND offline_since <= $1"
        " ORDER BY offline_since LIMIT $2",
        now - at_least,
        MAX_WINDOWS,
        timeout=timeout,
    )
    return [
        OfflineWindow(
            r["system_id"],
            r["offline_since"],
            r["offline_until"],
            r["offline_reported_at"],
            now - r["offline_since"],
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class OfflineBacklog:
    """How many offline windows are open, and the oldest one's age (zero with none open)."""

    windows_open: int
    max_age: timedelta


async def offline_backlog(conn: Conn, *, now: datetime, timeout: float = 10.0) -> OfflineBacklog:
    """The open windows `open_windows` lists, counted without its row limit (the partial index
    device_state_offline keeps this one index scan); `now` is device-local, as there."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, min(offline_since) AS oldest FROM device_state"
        " WHERE offline_since IS NOT NULL",
        timeout=timeout,
    )
    assert row is not None  # an aggregate always returns a row
    oldest: datetime | None = row["oldest"]
    age = timedelta(0) if oldest is None else max(now - oldest, timedelta(0))
    return OfflineBacklog(int(row["n"]), age)
