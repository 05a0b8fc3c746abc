"""A register's registration application, confirmed with a one-time code sent to the
organization's main user (the reference cabinet's SMS option; its digital signature is out of
scope). Whoever files it (a user with the "devices" section) must enter the code the main user
received, so no application leaves without the main user knowing.

`hold` checks what the user may do (the section, the trade point) and keeps the application
under a code (ledger/cabinet_codes); `confirm` files it through ledger.cabinet_scope, the one
place registrations are made, for the user who held it only.
"""

from dataclasses import asdict, dataclass, replace
from datetime import timedelta

from ledger import cabinet_codes, cabinet_scope, cabinet_users, registry
from ledger.cabinet_users import Access
from ledger.errors import NotFound, PreconditionFailed
from ledger.lifecycle import DeviceStatus
from ledger.state_store import Conn

PURPOSE = "registration"
CODE_LIFETIME = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class Held:
    ticket: str  # back to the browser
    code: str  # to the main user only
    phone: str  # the main user's, where the code goes
    email: str


async def hold(conn: Conn, access: Access, new: registry.Device) -> Held:
    await cabinet_scope.point(conn, access, new.trade_point_id, "devices")
    main = await cabinet_users.main_user(conn, access.organization_id)
    if not main.phone and not main.email:
        raise PreconditionFailed(
            "the main user has neither a phone nor an e-mail to send the confirmation code to"
        )
    device = asdict(replace(new, system_id=0))
    issued = await cabinet_codes.issue(
        conn, PURPOSE, {"user_id": access.user.id, "device": device}, CODE_LIFETIME
    )
    return Held(issued.ticket, issued.code, main.phone, main.email)


async def confirm(
    conn: Conn, access: Access, ticket: str, code: str
) -> tuple[registry.Device, int]:
    """The application filed, for the right code, by the user who held it."""
    held = await cabinet_codes.redeem(conn, PURPOSE, ticket, code)
    if held["user_id"] != access.user.id:
        raise NotFound("the code has expired or was used: start again")
    fields = held["device"]
    fields["status"] = DeviceStatus(fields["status"])
    return await cabinet_scope.register_device(conn, access, registry.Device(**fields))
