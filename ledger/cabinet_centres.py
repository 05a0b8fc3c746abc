"""Service centres (ЦТО) in the cabinet: the grants a taxpayer gives a centre, and what a centre
reaches through them.

A service centre is an organization of the registry like any other (its own BIN, its own cabinet
users). A taxpayer grants it, by its BIN, chosen sections (GRANTABLE) on chosen registers of the
taxpayer's; edits the grant; stops it (kept for the record). One grant per taxpayer and centre is
active at a time. A grant reaches a register only while the register stands in a point of the
granting taxpayer. Every change is audited under the caller's actor.

This module keeps the grants; who may manage them, and the centres' reach over a register, are
ledger.cabinet_scope's rules (it checks the user's sections, then calls here).
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ledger import registry
from ledger.errors import AlreadyExists, InvalidRequest, NotFound, PreconditionFailed
from ledger.lifecycle import DeviceStatus
from ledger.state_store import Conn

CENTRES_SECTION = "centres"  # a taxpayer's users: grant, edit and stop centres' access
CLIENTS_SECTION = "clients"  # a centre's users: the registers granted to their organization
# What a taxpayer may grant, in the order the cabinet shows it: the register's card, its
# token, its receipts, its X/Z reports. Never the taxpayer's organization, points or users.
GRANTABLE = ("devices", "token", "transactions", "reports")
BIN = re.compile(r"[0-9]{12}")

GRANT_SELECT = (
    "SELECT g.id, g.organization_id, g.centre_id, o.iin, o.title, g.sections,"
    " array(SELECT system_id FROM cabinet_centre_grant_devices WHERE grant_id = g.id) AS devices,"
    " g.created_at, g.changed_at, g.stopped_at"
    " FROM cabinet_centre_grants g JOIN organizations o ON o.id = g.centre_id"
)


@dataclass(frozen=True, slots=True)
class Grant:
    id: int
    organization_id: int  # the taxpayer
    centre_id: int
    centre_iin: str
    centre_title: str
    sections: frozenset[str]
    system_ids: frozenset[int]
    created_at: datetime
    changed_at: datetime
    stopped_at: datetime | None

    @property
    def active(self) -> bool:
        return self.stopped_at is None


@dataclass(frozen=True, slots=True)
class ClientDevice:
    """A register granted to a centre, as the centre's "clients" page lists it."""

    system_id: int
    taxpayer_iin: str
    taxpayer_title: str
    point_title: str
    point_address: str
    serial_number: str
    model: str
    status: DeviceStatus
    sections: frozenset[str]


def _grant(row: asyncpg.Record) -> Grant:
    return Grant(
        row["id"], row["organization_id"], row["centre_id"], row["iin"], row["title"],
        frozenset(row["sections"]), frozenset(row["devices"]), row["created_at"],
        row["changed_at"], row["stopped_at"],
    )  # fmt: skip


def _check(sections: set[str], system_ids: set[int]) -> None:
    unknown = sections - set(GRANTABLE)
    if unknown:
        raise InvalidRequest(f"a centre is granted none of: {', '.join(sorted(unknown))}")
    if not sections:
        raise InvalidRequest("choose at least one section to grant")
    if "token" in sections and "devices" not in sections:
        # The token is got on the register's card, which "devices" opens.
        raise InvalidRequest("the token section needs the register's card (devices) too")
    if not system_ids:
        raise InvalidRequest("choose at least one register to grant")
    if len(system_ids) > registry.MAX_LIST:
        raise InvalidRequest(f"at most {registry.MAX_LIST} registers per grant")


async def _devices_of_organization(conn: Conn, organization_id: int, system_ids: set[int]) -> None:
    found = await conn.fetchval(
        "SELECT count(*) FROM devices d JOIN trade_points p ON p.id = d.trade_point_id"
        " WHERE d.system_id = ANY($1) AND p.organization_id = $2",
        sorted(system_ids),
        organization_id,
    )
    if found != len(system_ids):
        raise NotFound("some of the registers are not this organization's")


async def _set_devices(conn: Conn, grant_id: int, system_ids: Iterable[int]) -> None:
    await conn.execute("DELETE FROM cabinet_centre_grant_devices WHERE grant_id = $1", grant_id)
    await conn.executemany(
        "INSERT INTO cabinet_centre_grant_devices (grant_id, system_id) VALUES ($1, $2)",
        [(grant_id, system_id) for system_id in sorted(system_ids)],
    )


async def centre_by_bin(conn: Conn, organization_id: int, centre_bin: str) -> registry.Organization:
    """The registered organization with this BIN, other than the taxpayer itself."""
    if not BIN.fullmatch(centre_bin):
        raise InvalidRequest("a service centre's BIN is 12 digits")
    found = await registry.list_organizations(conn, iin=centre_bin)
    if not found:
        raise InvalidRequest(f"no organization with BIN {centre_bin} is registered")
    if found[0].id == organization_id:
        raise InvalidRequest("this is your own organization's BIN")
    return found[0]


async def grant(
    conn: Conn,
    organization_id: int,
    actor: str,
    *,
    centre_bin: str,
    sections: set[str],
    system_ids: set[int],
) -> Grant:
    """Grants the centre with `centre_bin` `sections` on the taxpayer's registers `system_ids`."""
    _check(sections, system_ids)
    async with conn.transaction():
        centre = await centre_by_bin(conn, organization_id, centre_bin)
        await _devices_of_organization(conn, organization_id, system_ids)
        try:
            grant_id: int = await conn.fetchval(
                "INSERT INTO cabinet_centre_grants (organization_id, centre_id, sections)"
                " VALUES ($1, $2, $3) RETURNING id",
                organization_id,
                centre.id,
                sorted(sections),
            )
        except asyncpg.UniqueViolationError as err:
            raise AlreadyExists("this centre already has access: edit it instead") from err
        await _set_devices(conn, grant_id, system_ids)
        await registry.audit(
            conn, actor, "GrantServiceCentre", None, grant=grant_id, centre=centre.id,
            sections=sorted(sections), devices=sorted(system_ids),
        )  # fmt: skip
        return await get_grant(conn, organization_id, grant_id)


async def get_grant(conn: Conn, organization_id: int, grant_id: int) -> Grant:
    row = await conn.fetchrow(
        f"{GRANT_SELECT} WHERE g.id = $1 AND g.organization_id = $2", grant_id, organization_id
    )
    if row is None:
        raise NotFound(f"no grant {grant_id}")
    return _grant(row)


async def _active_grant(conn: Conn, organization_id: int, grant_id: int) -> None:
    """Locks the taxpayer's grant, refusing one that is stopped."""
    stopped = await conn.fetchrow(
        "SELECT stopped_at FROM cabinet_centre_grants"
        " WHERE id = $1 AND organization_id = $2 FOR UPDATE",
        grant_id,
        organization_id,
    )
    if stopped is None:
        raise NotFound(f"no grant {grant_id}")
    if stopped["stopped_at"] is not None:
        raise PreconditionFailed("this grant is stopped: grant the centre anew")


async def change(
    conn: Conn,
    organization_id: int,
    actor: str,
    grant_id: int,
    *,
    sections: set[str],
    system_ids: set[int],
) -> Grant:
    """Replaces an active grant's sections and registers."""
    _check(sections, system_ids)
    async with conn.transaction():
        await _active_grant(conn, organization_id, grant_id)
        await _devices_of_organization(conn, organization_id, system_ids)
        await conn.execute(
            "UPDATE cabinet_centre_grants SET sections = $2, changed_at = now() WHERE id = $1",
            grant_id,
            sorted(sections),
        )
        await _set_devices(conn, grant_id, system_ids)
        await registry.audit(
            conn, actor, "ChangeServiceCentreGrant", None, grant=grant_id,
            sections=sorted(sections), devices=sorted(system_ids),
        )  # fmt: skip
        return await get_grant(conn, organization_id, grant_id)


async def stop(conn: Conn, organization_id: int, actor: str, grant_id: int) -> Grant:
    """Ends a grant at once (the centre's next request is refused); the grant stays listed."""
    async with conn.transaction():
        await _active_grant(conn, organization_id, grant_id)
        await conn.execute(
            "UPDATE cabinet_centre_grants SET stopped_at = now() WHERE id = $1", grant_id
        )
        await registry.audit(conn, actor, "StopServiceCentreGrant", None, grant=grant_id)
        return await get_grant(conn, organization_id, grant_id)


async def grants_of(conn: Conn, organization_id: int) -> list[Grant]:
    """The taxpayer's grants: active ones first, then the stopped, newest first."""
    rows = await conn.fetch(
        f"{GRANT_SELECT} WHERE g.organization_id = $1"
        " ORDER BY g.stopped_at IS NOT NULL, g.stopped_at DESC, g.id",
        organization_id,
    )
    return [_grant(row) for row in rows]


# A granted register counts while it stands in a point of the granting taxpayer.
CLIENT_JOIN = (
    " FROM cabinet_centre_grants g"
    " JOIN organizations o ON o.id = g.organization_id"
    " JOIN cabinet_centre_grant_devices gd ON gd.grant_id = g.id"
    " JOIN devices d ON d.system_id = gd.system_id"
    " JOIN trade_points p ON p.id = d.trade_point_id AND p.organization_id = g.organization_id"
    " WHERE g.stopped_at IS NULL AND g.centre_id = $1"
)


async def granted_sections(conn: Conn, centre_id: int, system_id: int) -> frozenset[str] | None:
    """The sections an active grant gives the centre on this register; None: no grant."""
    sections: list[str] | None = await conn.fetchval(
        f"SELECT g.sections {CLIENT_JOIN} AND d.system_id = $2", centre_id, system_id
    )
    return None if sections is None else frozenset(sections)


async def clients(conn: Conn, centre_id: int) -> list[ClientDevice]:
    """Every register granted to the centre now, by taxpayer and system id."""
    rows = await conn.fetch(
        "SELECT d.system_id, o.iin, o.title, p.title AS point_title, p.address,"
        f" d.serial_number, d.model, d.status, g.sections {CLIENT_JOIN}"
        " ORDER BY o.title, o.id, d.system_id",
        centre_id,
    )
    return [
        ClientDevice(r["system_id"], r["iin"], r["title"], r["point_title"], r["address"],
                     r["serial_number"], r["model"], DeviceStatus(r["status"]),
                     frozenset(r["sections"]))
        for r in rows
    ]  # fmt: skip
