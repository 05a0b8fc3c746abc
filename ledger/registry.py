"""The device registry: organizations, trade points, devices, registration state and tokens.

Plain functions over a connection; the control API calls them and turns RegistryError into a
gRPC status. Every change to device_state bumps its version, so a gateway that cached the old
state loses its next conditional update and re-reads.

The registration lifecycle's vocabulary is ledger.lifecycle; `transition` carries an action out
under the device's row lock.
"""

import json
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import asyncpg

from ledger import notices
from ledger.constraints import translate
from ledger.errors import (
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    RegistryError,
)
from ledger.kgd import ApplicationKind
from ledger.kgd.filing import close_open, file_application
from ledger.lifecycle import TRANSITIONS, Action, DeviceStatus
from ledger.state_store import Conn

MAX_SYSTEM_ID = 0xFFFFFFFF
MAX_BLOCK_MESSAGE = 500  # characters; the column's CHECK says the same
# A trade point's coordinates may change at most once in this long (issue 6).
COORDINATES_CHANGE_INTERVAL = timedelta(days=1)
# Lists are bounded: a caller pages with `after` (the last system id it saw).
MAX_LIST = 1000
MAX_AUDIT = 1000


@dataclass(frozen=True, slots=True)
class Organization:
    id: int
    iin: str
    title: str
    address: str
    address_kz: str
    oked: str
    head: str = ""  # the name of the organization's head (director), as the taxpayer writes it


@dataclass(frozen=True, slots=True)
class TradePoint:
    id: int
    organization_id: int
    title: str
    address: str
    address_kz: str
    latitude: int
    longitude: int


@dataclass(frozen=True, slots=True)
class Device:
    system_id: int
    kgd_registration_number: str
    serial_number: str
    model: str
    year: int
    trade_point_id: int
    status: DeviceStatus
    blocked: bool = False
    block_message: str = ""
    subscription_active: bool = True


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    system_id: int | None
    detail: str  # JSON


DEVICE_COLUMNS = (
    "system_id, kgd_registration_number, serial_number, model, year, trade_point_id, status,"
    " blocked, block_message, subscription_active"
)


def _device(row: asyncpg.Record) -> Device:
    fields = list(row)
    fields[6] = DeviceStatus(fields[6])
    return Device(*fields)


def _translate(err: asyncpg.PostgresError) -> RegistryError:
    return translate(err)


async def add_organization(conn: Conn, org: Organization) -> Organization:
    try:
        row = await conn.fetchrow(
            "INSERT INTO organizations (iin, title, address, address_kz, oked, head)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            org.iin,
            org.title,
            org.address,
            org.address_kz,
            org.oked,
            org.head,
        )
    except asyncpg.PostgresError as err:
        raise _translate(err) from err
    assert row is not None
    return replace(org, id=row["id"])


ORGANIZATION_COLUMNS = "id, iin, title, address, address_kz, oked, head"
TRADE_POINT_COLUMNS = "id, organization_id, title, address, address_kz, latitude, longitude"


async def update_organization(conn: Conn, org: Organization) -> Organization:
    """Changes an organization's title, addresses, OKED and head; its IIN, the taxpayer the
    organization is, never changes (another taxpayer is another organization)."""
    async with conn.transaction():
        try:
            row = await conn.fetchrow(
                "UPDATE organizations"
                " SET title = $2, address = $3, address_kz = $4, oked = $5, head = $6"
                f" WHERE id = $1 RETURNING {ORGANIZATION_COLUMNS}",
                org.id,
                org.title,
                org.address,
                org.address_kz,
                org.oked,
                org.head,
            )
        except asyncpg.PostgresError as err:
            raise _translate(err) from err
        if row is None:
            raise NotFound(f"no organization {org.id}")
        # The organization's facts go out in SYSTEM and INFO answers: its devices re-read them.
        await conn.execute(
            "UPDATE device_state s SET version = version + 1 FROM devices d"
            " JOIN trade_points p ON p.id = d.trade_point_id"
            " WHERE d.system_id = s.system_id AND p.organization_id = $1",
            org.id,
        )
    return Organization(*row)


async def list_organizations(
    conn: Conn, *, organization_id: int = 0, iin: str = "", after: int = 0, limit: int = MAX_LIST
) -> list[Organization]:
    """Organizations in id order, narrowed to one id and to one IIN (0 / "" match any)."""
    rows = await conn.fetch(
        f"SELECT {ORGANIZATION_COLUMNS} FROM organizations"
        " WHERE ($1::bigint = 0 OR id = $1) AND ($2::text = '' OR iin = $2) AND id > $3"
        " ORDER BY id LIMIT $4",
        organization_id,
        iin,
        after,
        _page(limit),
    )
    return [Organization(*row) for row in rows]


async def list_trade_points(
    conn: Conn,
    *,
    organization_id: int = 0,
    point_ids: frozenset[int] | None = None,
    after: int = 0,
    limit: int = MAX_LIST,
) -> list[TradePoint]:
    """Trade points in id order, of one organization or of all (0); `point_ids` narrows to
    those (a caller's scope)."""
    rows = await conn.fetch(
        f"SELECT {TRADE_POINT_COLUMNS} FROM trade_points"
        " WHERE ($1::bigint = 0 OR organization_id = $1)"
        " AND ($2::bigint[] IS NULL OR id = ANY($2)) AND id > $3 ORDER BY id LIMIT $4",
        organization_id,
        None if point_ids is None else sorted(point_ids),
        after,
        _page(limit),
    )
    return [TradePoint(*row) for row in rows]


def _page(limit: int) -> int:
    """A list's page size: `limit` within 1..MAX_LIST, 0 meaning the most."""
    return min(limit, MAX_LIST) if limit > 0 else MAX_LIST


async def add_trade_point(conn: Conn, point: TradePoint) -> TradePoint:
    try:
        row = await conn.fetchrow(
            "INSERT INTO trade_points"
            " (organization_id, title, address, address_kz, latitude, longitude)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            point.organization_id,
            point.title,
            point.address,
            point.address_kz,
            point.latitude,
            point.longitude,
        )
    except asyncpg.PostgresError as err:
        raise _translate(err) from err
    assert row is not None
    return TradePoint(
        row["id"],
        point.organization_id,
        point.title,
        point.address,
        point.address_kz,
        point.latitude,
        point.longitude,
    )


async def add_device(conn: Conn, device: Device) -> Device:
    """Adds a device awaiting registration; system id 0 asks the registry for the next free one."""
    if not 0 <= device.system_id <= MAX_SYSTEM_ID:
        raise InvalidRequest(f"system id {device.system_id} is not a u32")
    try:
        async with conn.transaction():
            system_id = device.system_id or await conn.fetchval(
                "SELECT nextval('device_system_id_seq')"
            )
            await conn.execute(
                "INSERT INTO devices (system_id, kgd_registration_number, serial_number, model,"
                " year, trade_point_id) VALUES ($1, $2, $3, $4, $5, $6)",
                system_id,
                device.kgd_registration_number,
                device.serial_number,
                device.model,
                device.year,
                device.trade_point_id,
            )
            await conn.execute("INSERT INTO device_state (system_id) VALUES ($1)", system_id)
            # The register is registered only once the KGD accepts this (ledger/kgd).
            await file_application(conn, system_id, ApplicationKind.REGISTRATION)
    except asyncpg.PostgresError as err:
        raise _translate(err) from err
    return Device(
        system_id,
        device.kgd_registration_number,
        device.serial_number,
        device.model,
        device.year,
        device.trade_point_id,
        DeviceStatus.AWAITING_REGISTRATION,
    )


async def get_device(conn: Conn, system_id: int) -> Device:
    row = await conn.fetchrow(
        f"SELECT {DEVICE_COLUMNS} FROM devices WHERE system_id = $1",
        system_id,
    )
    if row is None:
        raise NotFound(f"no device with system id {system_id}")
    return _device(row)


async def set_status(conn: Conn, system_id: int, status: DeviceStatus) -> Device:
    """Sets the status whatever it was (tests and the registry's own setup; the control API moves
    devices by `transition` only)."""
    async with conn.transaction():
        done = await conn.fetchval(
            "UPDATE devices SET status = $2 WHERE system_id = $1 RETURNING system_id",
            system_id,
            status.value,
        )
        if done is None:
            raise NotFound(f"no device with system id {system_id}")
        # Bumping the version makes every gateway re-read the device before answering it.
        await conn.execute(
            "UPDATE device_state SET version = version + 1 WHERE system_id = $1", system_id
        )
    return await get_device(conn, system_id)


async def issue_token(conn: Conn, system_id: int) -> int:
    """A fresh random token, as the cabinet's "get token"; the last request's stored answer is
    forgotten so that no retry of a request made with the old token can succeed."""
    token = 1 + secrets.randbelow(MAX_SYSTEM_ID)
    done = await conn.fetchval(
        "UPDATE device_state SET token = $2, version = version + 1, last_request_token = NULL,"
        " last_command = NULL, last_response = NULL WHERE system_id = $1 RETURNING system_id",
        system_id,
        token,
    )
    if done is None:
        raise NotFound(f"no device with system id {system_id}")
    return token


async def current_token(conn: Conn, system_id: int) -> int:
    """The token the device must present now (as the cabinet's "get token"), unchanged."""
    row = await conn.fetchrow("SELECT token FROM device_state WHERE system_id = $1", system_id)
    if row is None:
        raise NotFound(f"no device with system id {system_id}")
    if row["token"] is None:
        raise PreconditionFailed("no token issued yet: issue one (ofd kkm reset-token)")
    token: int = row["token"]
    return token


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """What a device reported about itself beyond its documents."""

    offline_since: datetime | None  # its open offline window, if any
    offline_until: datetime | None
    software: str  # its last software report ("" when none)


async def reported_by_device(conn: Conn, system_id: int) -> DeviceReport:
    row = await conn.fetchrow(
        "SELECT offline_since, offline_until, software FROM device_state WHERE system_id = $1",
        system_id,
    )
    if row is None:
        raise NotFound(f"no device with system id {system_id}")
    return DeviceReport(row["offline_since"], row["offline_until"], row["software"] or "")


async def audit(
    conn: Conn, actor: str, action: str, system_id: int | None, **detail: object
) -> None:
    """One line of the control audit log: who did what to which device (now, by the database
    clock, so gateways with skewed clocks still order it)."""
    await conn.execute(
        "INSERT INTO control_audit (actor, action, system_id, detail) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        system_id,
        json.dumps(detail, ensure_ascii=False, sort_keys=True),
    )


async def list_audit(conn: Conn, system_id: int | None, limit: int = MAX_AUDIT) -> list[AuditEntry]:
    """The newest entries first, of one device or (None) of all."""
    rows = await conn.fetch(
        "SELECT at, actor, action, system_id, detail::text FROM control_audit"
        " WHERE $1::bigint IS NULL OR system_id = $1 ORDER BY id DESC LIMIT $2",
        system_id,
        min(limit, MAX_AUDIT) if limit > 0 else MAX_AUDIT,
    )
    return [AuditEntry(*row) for row in rows]


async def _bump(conn: Conn, system_id: int) -> None:
    # Bumping the version makes every gateway re-read the device before answering it.
    await conn.execute(
        "UPDATE device_state SET version = version + 1 WHERE system_id = $1", system_id
    )


async def transition(
    conn: Conn, system_id: int, action: Action, *, trade_point_id: int = 0
) -> Device:
    """Carries out a lifecycle action, refusing it unless the device is in the status the action
    starts from; the check and the move happen under one row lock, so two callers cannot both
    pass the check.

    Re-registration may move the device to another trade point; the shift and document counters
    stay: shift numbers run on from the first registration.
    """
    start, end = TRANSITIONS[action]
    if trade_point_id and action is not Action.REREGISTER:
        raise InvalidRequest("only re-registration moves a device to another point")
    async with conn.transaction():
        current = await conn.fetchval(
            "SELECT status FROM devices WHERE system_id = $1 FOR UPDATE", system_id
        )
        if current is None:
            raise NotFound(f"no device with system id {system_id}")
        if current != start:
            raise PreconditionFailed(
                f"device {system_id} is {current}: {action} needs a device {start}"
            )
        try:
            await conn.execute(
                "UPDATE devices SET status = $2,"
                " trade_point_id = CASE WHEN $3::bigint = 0 THEN trade_point_id ELSE $3 END"
                " WHERE system_id = $1",
                system_id,
                end.value,
                trade_point_id,
            )
        except asyncpg.PostgresError as err:
            raise _translate(err) from err
        await _bump(conn, system_id)
        await _kgd_application(conn, system_id, action)
    return await get_device(conn, system_id)


# Actions that ask the KGD: the device waits in its new status for the KGD's decision.
APPLYING = {
    Action.REQUEST_DEREGISTRATION: ApplicationKind.DEREGISTRATION,
    Action.REREGISTER: ApplicationKind.REREGISTRATION,
}


async def _kgd_application(conn: Conn, system_id: int, action: Action) -> None:
    """Files the KGD application an action asks for; any other action settles the device's
    open application (the KGD's decision carried out, or an operator's override of it)."""
    kind = APPLYING.get(action)
    if kind is not None:
        await file_application(conn, system_id, kind)
    else:
        await close_open(conn, system_id)


async def set_blocked(conn: Conn, system_id: int, blocked: bool, message: str = "") -> Device:
    """Blocks (with the message the device shows) or unblocks a device; its organization is
    told in the cabinet of a block and of the unblocking of a blocked one."""
    if len(message) > MAX_BLOCK_MESSAGE:
        raise InvalidRequest(f"block message longer than {MAX_BLOCK_MESSAGE} characters")
    if blocked and not message.strip():
        raise InvalidRequest("a block needs the message the device will show")
    async with conn.transaction():
        # The subquery reads the row as it was before this statement.
        was_blocked = await conn.fetchval(
            "UPDATE devices SET blocked = $2, block_message = $3 WHERE system_id = $1"
            " RETURNING (SELECT x.blocked FROM devices x WHERE x.system_id = $1)",
            system_id,
            blocked,
            message if blocked else "",
        )
        if was_blocked is None:
            raise NotFound(f"no device with system id {system_id}")
        await _bump(conn, system_id)
        if blocked or was_blocked:
            kind = notices.Kind.BLOCKED if blocked else notices.Kind.UNBLOCKED
            await notices.post(conn, kind, [(system_id, message if blocked else "", None)])
    return await get_device(conn, system_id)


async def set_subscription(conn: Conn, system_id: int, active: bool) -> Device:
    async with conn.transaction():
        done = await conn.fetchval(
            "UPDATE devices SET subscription_active = $2 WHERE system_id = $1 RETURNING system_id",
            system_id,
            active,
        )
        if done is None:
            raise NotFound(f"no device with system id {system_id}")
        await _bump(conn, system_id)
    return await get_device(conn, system_id)


async def update_trade_point(conn: Conn, point: TradePoint) -> TradePoint:
    """Changes a trade point's title, addresses and coordinates; the coordinates at most once a
    day (a shop does not move daily; a changing position is what a fraud looks like)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT latitude, longitude, coordinates_changed_at, now() AS now"
            " FROM trade_points WHERE id = $1 FOR UPDATE",
            point.id,
        )
        if row is None:
            raise NotFound(f"no trade point {point.id}")
        moved = (row["latitude"], row["longitude"]) != (point.latitude, point.longitude)
        changed_at = row["coordinates_changed_at"]
        recently = changed_at is not None and row["now"] - changed_at < COORDINATES_CHANGE_INTERVAL
        if moved and recently:
            raise PreconditionFailed(
                f"coordinates of trade point {point.id} changed at {changed_at:%Y-%m-%d %H:%M}"
                " UTC: at most once a day",
            )
        try:
            await conn.execute(
                "UPDATE trade_points SET title = $2, address = $3, address_kz = $4,"
                " latitude = $5, longitude = $6,"
                " coordinates_changed_at = CASE WHEN $7 THEN now() ELSE coordinates_changed_at END"
                " WHERE id = $1",
                point.id,
                point.title,
                point.address,
                point.address_kz,
                point.latitude,
                point.longitude,
                moved,
            )
        except asyncpg.PostgresError as err:
            raise _translate(err) from err
        # The point's facts go out in SYSTEM and INFO answers: every device there re-reads them.
        await conn.execute(
            "UPDATE device_state s SET version = version + 1 FROM devices d"
            " WHERE d.system_id = s.system_id AND d.trade_point_id = $1",
            point.id,
        )
    return await get_trade_point(conn, point.id)


async def get_trade_point(conn: Conn, point_id: int) -> TradePoint:
    row = await conn.fetchrow(
        f"SELECT {TRADE_POINT_COLUMNS} FROM trade_points WHERE id = $1", point_id
    )
    if row is None:
        raise NotFound(f"no trade point {point_id}")
    return TradePoint(*row)


async def list_devices(
    conn: Conn,
    *,
    organization_id: int = 0,
    trade_point_id: int = 0,
    point_ids: frozenset[int] | None = None,
    status: DeviceStatus | None = None,
    system_ids: frozenset[int] | None = None,
    after: int = 0,
    limit: int = MAX_LIST,
) -> list[Device]:
    """Devices by organization, trade point and status (0 / None match any), in system id order;
    `point_ids` and `system_ids` narrow to those (a caller's scope)."""
    columns = ", ".join(f"d.{c.strip()}" for c in DEVICE_COLUMNS.split(","))
    rows = await conn.fetch(
        f"SELECT {columns} FROM devices d JOIN trade_points p ON p.id = d.trade_point_id"
        " WHERE ($1::bigint = 0 OR p.organization_id = $1)"
        " AND ($2::bigint = 0 OR d.trade_point_id = $2)"
        " AND ($3::text = '' OR d.status = $3)"
        " AND ($4::bigint[] IS NULL OR d.system_id = ANY($4))"
        " AND ($7::bigint[] IS NULL OR d.trade_point_id = ANY($7))"
        " AND d.system_id > $5"
        " ORDER BY d.system_id LIMIT $6",
        organization_id,
        trade_point_id,
        "" if status is None else status.value,
        None if system_ids is None else sorted(system_ids),
        after,
        _page(limit),
        None if point_ids is None else sorted(point_ids),
    )
    return [_device(row) for row in rows]


async def placement_of_device(conn: Conn, system_id: int) -> tuple[int, int] | None:
    """The (organization id, trade point id) a device stands in; None: no such device."""
    row = await conn.fetchrow(
        "SELECT p.organization_id, d.trade_point_id FROM devices d"
        " JOIN trade_points p ON p.id = d.trade_point_id WHERE d.system_id = $1",
        system_id,
    )
    return None if row is None else (row["organization_id"], row["trade_point_id"])


async def organization_of_point(conn: Conn, point_id: int) -> int | None:
    value: int | None = await conn.fetchval(
        "SELECT organization_id FROM trade_points WHERE id = $1", point_id
    )
    return value


async def delete_trade_point(conn: Conn, point_id: int) -> None:
    """Deletes a trade point in which no device stands (nor ever stood: a deregistered device
    still names the point it was registered in, and its documents name it in the warehouse)."""
    async with conn.transaction():
        found = await conn.fetchval(
            "SELECT id FROM trade_points WHERE id = $1 FOR UPDATE", point_id
        )
        if found is None:
            raise NotFound(f"no trade point {point_id}")
        # Under the point's row lock: a device added at the same time waits for it (the
        # devices' foreign key locks the row it refers to), then finds the point gone.
        if await conn.fetchval("SELECT 1 FROM devices WHERE trade_point_id = $1 LIMIT 1", point_id):
            raise PreconditionFailed(f"a cash register stands in trade point {point_id}")
        try:
            await conn.execute("DELETE FROM trade_points WHERE id = $1", point_id)
        except asyncpg.ForeignKeyViolationError as err:  # e.g. a control key narrowed to it
            raise PreconditionFailed(
                f"trade point {point_id} is still referred to: {err.detail}"
            ) from err


async def device_by_kgd_number(conn: Conn, kgd_registration_number: str) -> Device | None:
    """The device with this KGD registration number (printed on its receipts), if any."""
    row = await conn.fetchrow(
        f"SELECT {DEVICE_COLUMNS} FROM devices WHERE kgd_registration_number = $1",
        kgd_registration_number,
    )
    return None if row is None else _device(row)


async def seller_of_receipt(
    conn: Conn, organization_id: int, trade_point_id: int
) -> tuple[Organization | None, TradePoint | None]:
    """The organization and trade point a receipt names, as the public check shows them, in
    one round trip; either is None when it is gone (a point may be deleted after its
    registers moved)."""
    row = await conn.fetchrow(
        f"SELECT (SELECT ROW({ORGANIZATION_COLUMNS}) FROM organizations WHERE id = $1) AS seller,"
        f" (SELECT ROW({TRADE_POINT_COLUMNS}) FROM trade_points WHERE id = $2) AS point",
        organization_id,
        trade_point_id,
    )
    assert row is not None  # a SELECT without FROM has its one row
    seller, point = row["seller"], row["point"]
    return (
        None if seller is None else Organization(*seller),
        None if point is None else TradePoint(*point),
    )
