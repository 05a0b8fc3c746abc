"""The periodic alert scans over the device registry: devices silent too long (well before the
72 h after which a device blocks itself) and shifts open longer than 24 h.

Each alert is raised once: its row in device_alerts says it was, so with several gateways only
the one whose insert wins reports it; alerts that no longer hold are cleared in the same
transaction. Notifications (ingest.notifications) publish what a scan returns; a device found
offline is also told to its organization in the cabinet (ledger/notices.py), once per silence.
"""

from dataclasses import dataclass
from datetime import datetime

from ledger import notices
from ledger.lifecycle import SERVED_STATUSES
from ledger.state_store import Conn

MAX_ALERTS_PER_SCAN = 1000
SHIFT_LIMIT_HOURS = 24
# Devices state shift times in their own local time; Kazakhstan is one zone (UTC+5) since 2024.
DEVICE_TIMEZONE = "Asia/Almaty"
_SERVED = sorted(status.value for status in SERVED_STATUSES)

RAISE_OFFLINE_SQL = """
INSERT INTO device_alerts (system_id, kind, shift_number)
SELECT s.system_id, 'offline', 0
FROM device_state s JOIN devices d ON d.system_id = s.system_id
WHERE d.status = ANY($3::text[])
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
WHERE d.status = ANY($2::text[]) AND s.shift_open
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


@dataclass(frozen=True, slots=True)
class OfflineAlert:
    system_id: int
    last_contact: datetime


@dataclass(frozen=True, slots=True)
class ShiftOpenAlert:
    system_id: int
    shift_number: int
    opened_at: datetime  # device-local time, as the device reported it


@dataclass(frozen=True, slots=True)
class Raised:
    offline: list[OfflineAlert]
    shifts_open: list[ShiftOpenAlert]


async def scan(conn: Conn, offline_seconds: float, *, timeout: float) -> Raised:
    """Clears the alerts that no longer hold and raises the new ones (at most
    MAX_ALERTS_PER_SCAN of each kind), in one transaction."""
    async with conn.transaction():
        await conn.execute(CLEAR_OFFLINE_SQL, timeout=timeout)
        await conn.execute(CLEAR_SHIFT_SQL, timeout=timeout)
        offline = await conn.fetch(
            RAISE_OFFLINE_SQL, offline_seconds, MAX_ALERTS_PER_SCAN, _SERVED, timeout=timeout
        )
        shifts = await conn.fetch(RAISE_SHIFT_SQL, MAX_ALERTS_PER_SCAN, _SERVED, timeout=timeout)
        await notices.post(
            conn,
            notices.Kind.OFFLINE,
            [(row["system_id"], notices.local_time(row["last_contact"]), None) for row in offline],
            timeout=timeout,
        )
    return Raised(
        [OfflineAlert(row["system_id"], row["last_contact"]) for row in offline],
        [
            ShiftOpenAlert(row["system_id"], row["shift_number"], row["shift_opened_at"])
            for row in shifts
        ],
    )
