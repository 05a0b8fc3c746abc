"""What a cabinet user may do to the registry, checked here and carried out by ledger.registry,
so that the cabinet's rules sit beside the control API's and each is written once.

Every function takes the user's Access and the section the act belongs to: a section the user's
groups do not grant is PermissionDenied (403); a trade point or device out of the user's reach,
of another organization or of no one, is NotFound (404) alike, so an id in a URL tells nothing
of what exists elsewhere. Every change is audited (control_audit) as "cabinet:<login>".

A service centre's user (CLIENTS_SECTION) also reaches another organization's register that an
active grant gives its organization, in the grant's sections only (ledger.cabinet_centres);
never its owner's organization, points or lifecycle.
"""

from dataclasses import dataclass, replace

from ledger import cabinet_centres as centres
from ledger import registry
from ledger.cabinet_users import Access
from ledger.errors import NotFound, PermissionDenied, PreconditionFailed
from ledger.kgd import filing
from ledger.lifecycle import Action
from ledger.state_store import Conn

# The lifecycle actions a taxpayer starts; activation and deregistration are the KGD's
# confirmations (the operator's `ofd kkm activate|deregister` until a KGD link exists).
TAXPAYER_ACTIONS = frozenset(
    {Action.REQUEST_DEREGISTRATION, Action.CANCEL_DEREGISTRATION, Action.REREGISTER}
)


def actor(access: Access) -> str:
    return f"cabinet:{access.user.login}"


def require(access: Access, section: str, *, whole: bool = False) -> None:
    """Refuses a section the user is not granted, and (`whole`) an act on the organization as a
    whole to a user who reaches some of its trade points only."""
    if not access.may(section):
        raise PermissionDenied(f"the section {section!r} is not granted to {access.user.login}")
    if whole and not access.whole_organization:
        raise PermissionDenied(f"{access.user.login} reaches some trade points only")


async def organization(conn: Conn, access: Access) -> registry.Organization:
    require(access, "organization")
    found = await registry.list_organizations(conn, organization_id=access.organization_id)
    if not found:
        raise NotFound(f"no organization {access.organization_id}")
    return found[0]


async def update_organization(
    conn: Conn,
    access: Access,
    *,
    title: str,
    address: str,
    address_kz: str,
    oked: str,
    head: str,
) -> registry.Organization:
    """The organization's title, addresses, OKED and head; its IIN never changes."""
    require(access, "organization", whole=True)
    async with conn.transaction():
        current = await organization(conn, access)
        updated = await registry.update_organization(
            conn,
            replace(
                current,
                title=title,
                address=address,
                address_kz=address_kz,
                oked=oked,
                head=head,
            ),
        )
        await registry.audit(
            conn, actor(access), "UpdateOrganization", None, id=current.id, title=title
        )
    return updated


async def points(conn: Conn, access: Access, section: str = "points") -> list[registry.TradePoint]:
    require(access, section)
    return await registry.list_trade_points(
        conn, organization_id=access.organization_id, point_ids=access.point_ids
    )


async def point(conn: Conn, access: Access, point_id: int, section: str) -> registry.TradePoint:
    require(access, section)
    organization_id = await registry.organization_of_point(conn, point_id)
    if not access.reaches(organization_id, point_id):
        raise NotFound(f"no trade point {point_id}")
    return await registry.get_trade_point(conn, point_id)


async def add_point(conn: Conn, access: Access, new: registry.TradePoint) -> registry.TradePoint:
    require(access, "points", whole=True)
    async with conn.transaction():
        added = await registry.add_trade_point(
            conn, replace(new, organization_id=access.organization_id)
        )
        await registry.audit(conn, actor(access), "AddTradePoint", None, id=added.id)
    return added


async def update_point(
    conn: Conn, access: Access, changed: registry.TradePoint
) -> registry.TradePoint:
    """Title, addresses and coordinates (these at most once a day: registry's rule)."""
    async with conn.transaction():
        current = await point(conn, access, changed.id, "points")
        updated = await registry.update_trade_point(
            conn, replace(changed, organization_id=current.organization_id)
        )
        await registry.audit(
            conn,
            actor(access),
            "UpdateTradePoint",
            None,
            id=changed.id,
            latitude=changed.latitude,
            longitude=changed.longitude,
        )
    return updated


async def delete_point(conn: Conn, access: Access, point_id: int) -> None:
    require(access, "points", whole=True)
    async with conn.transaction():
        await point(conn, access, point_id, "points")
        await registry.delete_trade_point(conn, point_id)
        await registry.audit(conn, actor(access), "DeleteTradePoint", None, id=point_id)


async def devices(
    conn: Conn, access: Access, section: str = "devices", *, point_id: int = 0
) -> list[registry.Device]:
    require(access, section)
    return await registry.list_devices(
        conn,
        organization_id=access.organization_id,
        trade_point_id=point_id,
        point_ids=access.point_ids,
    )


@dataclass(frozen=True, slots=True)
class Reached:
    """A register within a user's reach, and the sections the user has on it."""

    device: registry.Device
    sections: frozenset[str]
    own: bool  # of the user's organization; else a client's, through a centre's grant


async def reach(conn: Conn, access: Access, system_id: int, section: str) -> Reached:
    """The register, when `section` of it is within the user's reach: its own organization's
    through its groups, another's through a grant to its organization as a service centre (a
    section the grant leaves out is 403; without a grant, it is out of reach as any other)."""
    placement = await registry.placement_of_device(conn, system_id)
    if (
        placement is not None
        and placement[0] != access.organization_id
        and access.may(centres.CLIENTS_SECTION)
    ):
        granted = await centres.granted_sections(conn, access.organization_id, system_id)
        if granted is not None:
            if section not in granted:
                raise PermissionDenied(f"the section {section!r} is not granted to the centre")
            return Reached(await registry.get_device(conn, system_id), granted, own=False)
    require(access, section)
    if placement is None or not access.reaches(*placement):
        raise NotFound(f"no cash register {system_id}")
    return Reached(await registry.get_device(conn, system_id), access.sections, own=True)


async def device(conn: Conn, access: Access, system_id: int, section: str) -> registry.Device:
    return (await reach(conn, access, system_id, section)).device


async def application(conn: Conn, access: Access, system_id: int) -> filing.ApplicationRow | None:
    """The register's newest application to the KGD (registration, deregistration,
    re-registration) and what the KGD said of it."""
    await device(conn, access, system_id, "devices")
    return await filing.latest_application(conn, system_id)


async def register_device(
    conn: Conn, access: Access, new: registry.Device
) -> tuple[registry.Device, int]:
    """The registration application: the device awaits registration at the KGD, with its first
    token issued (the one to type into it). System ids are the registry's to choose."""
    async with conn.transaction():
        await point(conn, access, new.trade_point_id, "devices")
        added = await registry.add_device(conn, replace(new, system_id=0))
        token = await registry.issue_token(conn, added.system_id)
        await registry.audit(
            conn, actor(access), "AddDevice", added.system_id, point=new.trade_point_id
        )
    return added, token


async def lifecycle(
    conn: Conn, access: Access, system_id: int, action: Action, *, trade_point_id: int = 0
) -> registry.Device:
    """A taxpayer's lifecycle action. Deregistration is asked for only after the shift is
    closed (its Z report sent): the KGD deregisters a register with its counters final."""
    if action not in TAXPAYER_ACTIONS:
        raise PermissionDenied(f"{action} is the KGD's confirmation, not the taxpayer's")
    async with conn.transaction():
        if not (await reach(conn, access, system_id, "devices")).own:
            raise PermissionDenied("lifecycle actions are the taxpayer's, not a service centre's")
        if trade_point_id:
            await point(conn, access, trade_point_id, "devices")
        if action is Action.REQUEST_DEREGISTRATION:
            # The state row's lock keeps a shift from opening between this check and the move.
            shift_open = await conn.fetchval(
                "SELECT shift_open FROM device_state WHERE system_id = $1 FOR UPDATE", system_id
            )
            if shift_open:
                raise PreconditionFailed(
                    "the shift is open: close it (Z report) before asking for deregistration"
                )
        moved = await registry.transition(conn, system_id, action, trade_point_id=trade_point_id)
        await registry.audit(
            conn,
            actor(access),
            str(action),
            system_id,
            status=moved.status.value,
            point=moved.trade_point_id,
        )
    return moved


async def get_token(conn: Conn, access: Access, system_id: int) -> int:
    """The current token, unchanged; who looked is audited."""
    async with conn.transaction():
        await device(conn, access, system_id, "token")
        token = await registry.current_token(conn, system_id)
        await registry.audit(conn, actor(access), "GetToken", system_id)
    return token


async def new_token(conn: Conn, access: Access, system_id: int) -> int:
    """A new token: the old one stops working at once, so the register must be re-keyed."""
    async with conn.transaction():
        await device(conn, access, system_id, "token")
        token = await registry.issue_token(conn, system_id)
        # The token itself stays out of the log: the log is read by more people.
        await registry.audit(conn, actor(access), "IssueToken", system_id)
    return token


# --- service centres ---


async def centre_grants(conn: Conn, access: Access) -> list[centres.Grant]:
    require(access, centres.CENTRES_SECTION, whole=True)
    return await centres.grants_of(conn, access.organization_id)


async def grant_centre(
    conn: Conn, access: Access, *, centre_bin: str, sections: set[str], system_ids: set[int]
) -> centres.Grant:
    """Grants a service centre sections on some of the organization's registers: an act on the
    organization as a whole, as its registers may stand in any of its points."""
    require(access, centres.CENTRES_SECTION, whole=True)
    return await centres.grant(
        conn, access.organization_id, actor(access),
        centre_bin=centre_bin, sections=sections, system_ids=system_ids,
    )  # fmt: skip


async def change_centre_grant(
    conn: Conn, access: Access, grant_id: int, *, sections: set[str], system_ids: set[int]
) -> centres.Grant:
    require(access, centres.CENTRES_SECTION, whole=True)
    return await centres.change(
        conn, access.organization_id, actor(access), grant_id,
        sections=sections, system_ids=system_ids,
    )  # fmt: skip


async def stop_centre_grant(conn: Conn, access: Access, grant_id: int) -> centres.Grant:
    require(access, centres.CENTRES_SECTION, whole=True)
    return await centres.stop(conn, access.organization_id, actor(access), grant_id)


async def clients(conn: Conn, access: Access) -> list[centres.ClientDevice]:
    """The registers other organizations granted the user's organization, as a centre."""
    require(access, centres.CLIENTS_SECTION)
    return await centres.clients(conn, access.organization_id)
