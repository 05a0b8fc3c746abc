"""Device state in PostgreSQL: loading one device, and writing a batch of changes at once.

Every write is conditional on the version the change was computed from, so that two gateway
processes (or a retry racing its original) can never both win: the loser sees its device missing
from the returned ids and re-evaluates against the winner's state.
"""

import json
from collections.abc import Sequence

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from ledger.device_state import DeviceState, RegInfo
from ledger.offline import write_offline
from ledger.tally import Tally, tally_of
from ledger.tally_codec import from_bytes

log = structlog.get_logger(__name__)

# A connection of our own or one lent by a pool: both run queries alike.
Conn = asyncpg.Connection | PoolConnectionProxy
# What a failing, read-only or unreachable PostgreSQL raises: answered 254, retried by devices.
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

LOAD_SELECT = """
SELECT d.system_id, d.status, d.kgd_registration_number, d.serial_number, d.model,
       d.blocked, d.block_message, d.subscription_active,
       o.title AS org_title, o.address AS org_address, o.address_kz AS org_address_kz,
       o.iin AS org_iin, o.oked AS org_oked,
       p.title AS point_title, p.address AS point_address, p.address_kz AS point_address_kz,
       p.latitude, p.longitude, o.id AS organization_id, p.id AS trade_point_id,
       s.version, s.token, s.last_request_number, s.last_request_token, s.last_command,
       s.last_response, s.shift_number, s.shift_open, s.last_document_shift,
       s.last_document_number, s.documents_accepted, s.protocol_version, s.last_contact,
       s.current_tally, s.offline_since
FROM devices d
JOIN trade_points p ON p.id = d.trade_point_id
JOIN organizations o ON o.id = p.organization_id
JOIN device_state s ON s.system_id = d.system_id
"""
LOAD_SQL = LOAD_SELECT + "WHERE d.system_id = $1"
# Many devices in one round trip (ledger/state_loads.py): a fleet reconnecting at once.
LOAD_MANY_SQL = LOAD_SELECT + "WHERE d.system_id = ANY($1::bigint[])"

# One statement for the whole batch: unnest zips the column arrays into rows.
WRITE_BATCH_SQL = """
UPDATE device_state AS s SET
    version = u.version + 1, token = u.token, last_request_number = u.lrn,
    last_request_token = u.lrt, last_command = u.lc, last_response = u.lr,
    shift_number = u.sn, shift_open = u.so, last_document_shift = u.lds,
    last_document_number = u.ldn, documents_accepted = u.da, protocol_version = u.pv,
    last_contact = u.contact, current_tally = u.tally, shift_opened_at = u.opened
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::integer[], $5::bigint[],
            $6::integer[], $7::bytea[], $8::integer[], $9::boolean[], $10::integer[],
            $11::bigint[], $12::bigint[], $13::integer[], $14::timestamptz[], $15::bytea[],
            $16::timestamp[])
     AS u(system_id, version, token, lrn, lrt, lc, lr, sn, so, lds, ldn, da, pv, contact,
          tally, opened)
WHERE s.system_id = u.system_id AND s.version = u.version
RETURNING s.system_id
"""

# The shifts a batch closes, one statement for all of them; run only when there are some.
INSERT_SHIFT_REPORTS_SQL = """
INSERT INTO shift_reports (system_id, shift_number, protocol_version, closed_at, is_offline,
                           device_z, ofd_z, differences)
SELECT * FROM unnest($1::bigint[], $2::integer[], $3::integer[], $4::timestamp[],
                     $5::boolean[], $6::bytea[], $7::bytea[], $8::jsonb[])
"""


def _tally_from_row(row: asyncpg.Record) -> tuple[Tally, bytes | None]:
    blob: bytes | None = row["current_tally"]
    if blob is not None:
        try:
            return from_bytes(blob), blob
        except ValueError as err:
            # Refusing every request over it would block the till; the close will show the gap.
            log.exception("stored tally unreadable", device_id=row["system_id"], error=str(err))
    # No document since the tally was introduced: only the shift columns are known.
    return tally_of(row["shift_number"], is_open=row["shift_open"]), None


def _state_from_row(row: asyncpg.Record) -> DeviceState:
    reg = RegInfo(
        kgd_registration_number=row["kgd_registration_number"],
        serial_number=row["serial_number"],
        model=row["model"],
        org_title=row["org_title"],
        org_address=row["org_address"],
        org_address_kz=row["org_address_kz"],
        org_iin=row["org_iin"],
        org_oked=row["org_oked"],
        point_title=row["point_title"],
        point_address=row["point_address"],
        point_address_kz=row["point_address_kz"],
        latitude=row["latitude"],
        longitude=row["longitude"],
        organization_id=row["organization_id"],
        trade_point_id=row["trade_point_id"],
    )
    tally, blob = _tally_from_row(row)
    return DeviceState(
        system_id=row["system_id"],
        status=row["status"],
        reg=reg,
        version=row["version"],
        token=row["token"],
        last_request_number=row["last_request_number"],
        last_request_token=row["last_request_token"],
        last_command=row["last_command"],
        last_response=row["last_response"],
        shift_number=row["shift_number"],
        shift_open=row["shift_open"],
        last_document_shift=row["last_document_shift"],
        last_document_number=row["last_document_number"],
        documents_accepted=row["documents_accepted"],
        protocol_version=row["protocol_version"],
        last_contact=row["last_contact"],
        tally=tally,
        tally_blob=blob,
        offline_since=row["offline_since"],
        blocked=row["blocked"],
        block_message=row["block_message"],
        subscription_active=row["subscription_active"],
    )


async def load_state(conn: Conn, system_id: int, *, timeout: float) -> DeviceState | None:
    row = await conn.fetchrow(LOAD_SQL, system_id, timeout=timeout)
    return None if row is None else _state_from_row(row)


async def load_states(
    conn: Conn, system_ids: Sequence[int], *, timeout: float
) -> dict[int, DeviceState]:
    """The states of those of `system_ids` that exist, by system id."""
    rows = await conn.fetch(LOAD_MANY_SQL, list(system_ids), timeout=timeout)
    return {row["system_id"]: _state_from_row(row) for row in rows}


async def write_states(
    conn: Conn, changes: Sequence[tuple[int, DeviceState]], *, timeout: float
) -> set[int]:
    """Writes each (expected_version, new_state); returns the system ids whose write won.

    The caller runs this inside a transaction and must not put one device twice in a batch.
    Rows are written in system id order, so two gateways whose batches share devices take the
    row locks in the same order and cannot deadlock. The shift reports of the winners go in
    with them, in the same transaction.
    """
    changes = sorted(changes, key=lambda change: change[1].system_id)
    rows = await conn.fetch(
        WRITE_BATCH_SQL,
        [s.system_id for _, s in changes],
        [expected for expected, _ in changes],
        [s.token for _, s in changes],
        [s.last_request_number for _, s in changes],
        [s.last_request_token for _, s in changes],
        [s.last_command for _, s in changes],
        [s.last_response for _, s in changes],
        [s.shift_number for _, s in changes],
        [s.shift_open for _, s in changes],
        [s.last_document_shift for _, s in changes],
        [s.last_document_number for _, s in changes],
        [s.documents_accepted for _, s in changes],
        [s.protocol_version for _, s in changes],
        [s.last_contact for _, s in changes],
        [s.tally_blob for _, s in changes],
        [s.tally.opened_at if s.tally.is_open else None for _, s in changes],
        timeout=timeout,
    )
    won = {r["system_id"] for r in rows}
    closes = [s for _, s in changes if s.shift_report is not None and s.system_id in won]
    if closes:
        await _insert_shift_reports(conn, closes, timeout=timeout)
    offline = [
        (s.system_id, s.offline_write)
        for _, s in changes
        if s.offline_write is not None and s.system_id in won
    ]
    if offline:
        await write_offline(conn, offline, timeout=timeout)
    return won


async def _insert_shift_reports(
    conn: Conn, states: Sequence[DeviceState], *, timeout: float
) -> None:
    reports = [(s.system_id, s.shift_report) for s in states if s.shift_report is not None]
    await conn.execute(
        INSERT_SHIFT_REPORTS_SQL,
        [system_id for system_id, _ in reports],
        [r.shift_number for _, r in reports],
        [r.protocol_version for _, r in reports],
        [r.closed_at for _, r in reports],
        [r.is_offline for _, r in reports],
        [r.device_z for _, r in reports],
        [r.ofd_z for _, r in reports],
        [json.dumps(list(r.differences), ensure_ascii=False) for _, r in reports],
        timeout=timeout,
    )
