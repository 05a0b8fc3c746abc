"""What each command does once the session rules let it through: the answer and what changes.

Handlers are synchronous and do no I/O: they take the device's state and the parsed request and
return an Outcome that the pipeline makes durable. A handler refuses by raising Refusal.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any

from ledger.device_state import DeviceState
from ledger.errors import Refusal
from ledger.fiscal import fiscal_sign, qr_url, ticket_identity
from ledger.results import Command, ResultCode
from ledger.ticket_checks import check_ticket, refuse


@dataclass(frozen=True, slots=True)
class FiscalSettings:
    secret: bytes
    qr_base_url: str = "http://consumer.oofd.kz"
    ofd_title: str = "OFD Gateway"
    ofd_title_kz: str = "OFD Gateway"
    ofd_url: str = "http://consumer.oofd.kz"


@dataclass(frozen=True, slots=True)
class RequestContext:
    schema: ModuleType
    version: int
    token: int
    request_number: int
    fiscal: FiscalSettings


@dataclass(frozen=True, slots=True)
class Document:
    """A fiscal document accepted for the journal."""

    document_id: str
    fiscal_sign: str
    shift_number: int
    document_number: int


@dataclass(frozen=True, slots=True)
class Outcome:
    response: Any  # the Response message, OK
    rotates_token: bool
    document: Document | None = None


def _ok(ctx: RequestContext, command: int) -> Any:
    response = ctx.schema.Response(command=command)
    response.result.result_code = ResultCode.OK
    return response


def _fill_reg_info(ctx: RequestContext, state: DeviceState, reg_info: Any) -> None:
    reg = state.reg
    kkm = reg_info.kkm
    kkm.fns_kkm_id = reg.kgd_registration_number
    kkm.serial_number = reg.serial_number
    kkm.kkm_id = str(state.system_id)
    org = reg_info.org
    org.title = reg.org_title
    org.address = reg.org_address
    org.address_kz = reg.org_address_kz
    if ctx.version == 203:
        org.inn = reg.org_iin
        org.okved = reg.org_oked
    else:
        org.iin = reg.org_iin
        org.oked = reg.org_oked
        ofd = reg_info.ofd
        ofd.title = ctx.fiscal.ofd_title
        ofd.title_kz = ctx.fiscal.ofd_title_kz
        ofd.url = ctx.fiscal.ofd_url
    pos = reg_info.pos
    pos.title = reg.point_title
    pos.address = reg.point_address
    pos.address_kz = reg.point_address_kz
    pos.latitude = reg.latitude
    pos.longitude = reg.longitude


def handle_system(ctx: RequestContext, state: DeviceState, request: Any) -> Outcome:
    response = _ok(ctx, Command.SYSTEM)
    # 2.0.4 makes reg_info a required part of every service answer; 2.0.3 sends it on request.
    if ctx.version == 204 or request.service.get_reg_info:
        _fill_reg_info(ctx, state, response.service.reg_info)
    return Outcome(response, rotates_token=False)


def handle_info(ctx: RequestContext, state: DeviceState, request: Any) -> Outcome:
    del request  # INFO carries nothing the answer depends on yet
    response = _ok(ctx, Command.INFO)
    _fill_reg_info(ctx, state, response.service.reg_info)
    last = response.service.last_document_info
    last.fr_shift_number = state.last_document_shift
    last.printed_document_number = state.last_document_number
    return Outcome(response, rotates_token=False)


def _ticket_time(ticket: Any) -> datetime:
    date, time = ticket.date_time.date, ticket.date_time.time
    try:
        return datetime(date.year, date.month, date.day, time.hour, time.minute, time.second)
    except ValueError as err:
        raise refuse(f"date_time: not a valid date and time ({err})") from err


def handle_ticket(ctx: RequestContext, state: DeviceState, request: Any) -> Outcome:
    if not request.HasField("ticket"):
        raise refuse("ticket: TICKET command without a ticket")
    ticket = request.ticket
    total = check_ticket(ticket)
    when = _ticket_time(ticket)
    identity = ticket_identity(
        state.system_id,
        shift_number=ticket.fr_shift_number,
        document_number=ticket.printed_document_number,
        offline_number=ticket.offline_ticket_number,
        token=ctx.token,
        request_number=ctx.request_number,
    )
    sign = fiscal_sign(ctx.fiscal.secret, identity)
    response = _ok(ctx, Command.TICKET)
    response.ticket.ticket_number = sign
    response.ticket.qr_code = qr_url(
        ctx.fiscal.qr_base_url, sign, state.reg.kgd_registration_number, total, when
    ).encode()
    document = Document(str(identity), sign, ticket.fr_shift_number, ticket.printed_document_number)
    return Outcome(response, rotates_token=True, document=document)


Handler = Callable[[RequestContext, DeviceState, Any], Outcome]

HANDLERS: dict[int, Handler] = {
    Command.SYSTEM: handle_system,
    Command.TICKET: handle_ticket,
    Command.INFO: handle_info,
}


def handler_for(command: int) -> Handler:
    handler = HANDLERS.get(command)
    if handler is None:
        raise Refusal(ResultCode.UNSUPPORTED_COMMAND, f"command {command} is not served yet")
    return handler
