"""Applications to the KGD as rows (kgd_applications): filed in the very transaction that moves
a device, so no register changes status without its application, and none is filed for a change
that rolled back.

The registry files them (ledger/registry.py: adding a device, requesting its deregistration,
re-registering it) and closes them when an operator moves the device by hand first
(`close_open`: the override). The worker in ledger/kgd/applications.py sends them.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.errors import NotFound
from ledger.kgd import ApplicationKind
from ledger.state_store import Conn

OPEN_STATUSES = ("pending", "sent")
STATUSES = ("pending", "sent", "accepted", "refused", "overridden")


@dataclass(frozen=True, slots=True)
class ApplicationRow:
    id: int
    application_id: str
    system_id: int
    kind: ApplicationKind
    status: str
    payload: dict[str, Any]
    attempts: int
    last_error: str
    reason: str
    created_at: datetime
    decided_at: datetime | None


COLUMNS = (
    "id, application_id, system_id, kind, status, payload::text, attempts, last_error, reason,"
    " created_at, decided_at"
)


def row_of(record: Any) -> ApplicationRow:
    fields = list(record)
    fields[3] = ApplicationKind(fields[3])
    fields[5] = json.loads(fields[5])
    return ApplicationRow(*fields)


async def snapshot(conn: Conn, system_id: int) -> dict[str, Any]:
    """What an application says of the register: itself, its organization, its trade point with
    coordinates, as they are now."""
    row = await conn.fetchrow(
        "SELECT d.kgd_registration_number, d.serial_number, d.model, d.year,"
        " o.iin, o.title AS org_title, o.address AS org_address,"
        " p.id AS point_id, p.title AS point_title, p.address AS point_address,"
        " p.latitude, p.longitude"
        " FROM devices d JOIN trade_points p ON p.id = d.trade_point_id"
        " JOIN organizations o ON o.id = p.organization_id WHERE d.system_id = $1",
        system_id,
    )
    if row is None:
        raise NotFound(f"no device with system id {system_id}")
    return {
        "kgd_registration_number": row["kgd_registration_number"],
        "serial_number": row["serial_number"],
        "model": row["model"],
        "year": row["year"],
        "organization": {
            "iin": row["iin"],
            "title": row["org_title"],
            "address": row["org_address"],
        },
        "trade_point": {
            "id": row["point_id"],
            "title": row["point_title"],
            "address": row["point_address"],
            "latitude": row["latitude"],
            "longitude": row["longitude"],
        },
    }


async def file_application(conn: Conn, system_id: int, kind: ApplicationKind) -> str:
    """Files an application (inside the caller's transaction); returns its application id.
    An application of the device still open is closed as overridden: the new one supersedes
    it."""
    payload = await snapshot(conn, system_id)
    await close_open(conn, system_id)
    application_id: str = await conn.fetchval(
        "INSERT INTO kgd_applications (system_id, kind, payload) VALUES ($1, $2, $3::jsonb)"
        " RETURNING application_id",
        system_id,
        kind.value,
        json.dumps(payload, ensure_ascii=False, sort_keys=True),
    )
    return application_id


async def close_open(conn: Conn, system_id: int) -> list[str]:
    """Closes the device's open applications as overridden (an operator moved the device
    first); returns their ids. Their answers, when they come, are no longer acted on."""
    rows = await conn.fetch(
        "UPDATE kgd_applications SET status = 'overridden', decided_at = now()"
        " WHERE system_id = $1 AND status = ANY($2::text[]) RETURNING application_id",
        system_id,
        list(OPEN_STATUSES),
    )
    return [r["application_id"] for r in rows]


async def latest_application(conn: Conn, system_id: int) -> ApplicationRow | None:
    """The device's newest application: what the cabinet and `kkm show` tell of it."""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM kgd_applications WHERE system_id = $1 ORDER BY id DESC LIMIT 1",
        system_id,
    )
    return None if row is None else row_of(row)


async def counts_by_status(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM kgd_applications GROUP BY status")
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({r["status"]: int(r["n"]) for r in rows})
    return counts
