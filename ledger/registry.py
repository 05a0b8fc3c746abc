"""The device registry: organizations, trade points, devices, registration state and tokens.

Plain functions over a connection; the control API calls them and turns RegistryError into a
gRPC status. Every change to device_state bumps its version, so a gateway that cached the old
state loses its next conditional update and re-reads.
"""

import secrets
from dataclasses import dataclass

import asyncpg

from ledger.errors import OfdError
from ledger.state_store import Conn

DEVICE_STATUSES = (
    "awaiting_registration",
    "registered",
    "awaiting_deregistration",
    "deregistered",
)
MAX_SYSTEM_ID = 0xFFFFFFFF


class RegistryError(OfdError):
    """A control request that cannot be carried out; `kind` picks the gRPC status."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "not_found" | "invalid" | "exists"


@dataclass(frozen=True, slots=True)
class Organization:
    id: int
    iin: str
    title: str
    address: str
    address_kz: str
    oked: str


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
    status: str


def _translate(err: asyncpg.PostgresError) -> RegistryError:
    if isinstance(err, asyncpg.UniqueViolationError):
        return RegistryError("exists", f"already registered: {err.detail or err}")
    if isinstance(err, asyncpg.ForeignKeyViolationError):
        return RegistryError("not_found", f"refers to something that does not exist: {err.detail}")
    if isinstance(err, asyncpg.CheckViolationError | asyncpg.NotNullViolationError):
        return RegistryError("invalid", f"invalid value ({err.constraint_name or err})")
    return RegistryError("invalid", str(err))


async def add_organization(conn: Conn, org: Organization) -> Organization:
    try:
        row = await conn.fetchrow(
            "INSERT INTO organizations (iin, title, address, address_kz, oked)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            org.iin,
            org.title,
            org.address,
            org.address_kz,
            org.oked,
        )
    except asyncpg.PostgresError as err:
        raise _translate(err) from err
    assert row is not None
    return Organization(row["id"], org.iin, org.title, org.address, org.address_kz, org.oked)


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
        raise RegistryError("invalid", f"system id {device.system_id} is not a u32")
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
    except asyncpg.PostgresError as err:
        raise _translate(err) from err
    return Device(
        system_id,
        device.kgd_registration_number,
        device.serial_number,
        device.model,
        device.year,
        device.trade_point_id,
        "awaiting_registration",
    )


async def get_device(conn: Conn, system_id: int) -> Device:
    row = await conn.fetchrow(
        "SELECT system_id, kgd_registration_number, serial_number, model, year,"
        " trade_point_id, status FROM devices WHERE system_id = $1",
        system_id,
    )
    if row is None:
        raise RegistryError("not_found", f"no device with system id {system_id}")
    return Device(*row)


async def set_status(conn: Conn, system_id: int, status: str) -> Device:
    if status not in DEVICE_STATUSES:
        raise RegistryError("invalid", f"unknown status {status!r}")
    async with conn.transaction():
        done = await conn.fetchval(
            "UPDATE devices SET status = $2 WHERE system_id = $1 RETURNING system_id",
            system_id,
            status,
        )
        if done is None:
            raise RegistryError("not_found", f"no device with system id {system_id}")
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
        raise RegistryError("not_found", f"no device with system id {system_id}")
    return token
