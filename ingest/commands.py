"""What each command does once the session rules let it through: the answer and what changes.

Handlers are synchronous and do no I/O: they take the device's state and the parsed request and
return an Outcome that the pipeline makes durable. A handler refuses by raising Refusal.

Documents (TICKET, MONEY_PLACEMENT, CLOSE_SHIFT) go through the shift rules (`ledger.shifts`)
and into the OFD's tally (`ledger.tally`); CLOSE_SHIFT answers with the OFD's Z report and
stores both reports; REPORT and INFO answer from the tally. The new tally is encoded here, so a
tally that outgrew its storage is one refused request, never a failed batch.
"""

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Any

from ledger.device_state import DeviceState, ShiftReport
from ledger.errors import Refusal
from ledger.fiscal import DocumentIdentity, fiscal_sign, qr_url, ticket_identity
from ledger.results import Command, ResultCode
from ledger.shifts import enter_shift
from ledger.tally import WITHDRAWAL, Tally, add_placement, add_receipt, close_shift
from ledger.tally_codec import to_bytes
from ledger.ticket_checks import refuse, summarize_ticket, tiyn
from ledger.zx_report import REPORT_X, REPORT_Z, compare, read_date_time, render

KZ_TIME = timezone(timedelta(hours=5), "UTC+05")


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
    tally: Tally | None = None  # the device's new tally; None: unchanged
    tally_blob: bytes | None = None  # its stored form (set with `tally`)
    shift_report: ShiftReport | None = None  # a shift this request closed


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
    del request  # INFO carries nothing the answer depends on
    response = _ok(ctx, Command.INFO)
    _fill_reg_info(ctx, state, response.service.reg_info)
    last = response.service.last_document_info
    last.fr_shift_number = state.last_document_shift
    last.printed_document_number = state.last_document_number
    # The OFD's X counters: the open shift so far (or the next one, empty, with what carries).
    response.report.report = REPORT_X
    zx = render(state.tally, ctx.schema, ctx.version, report_time=_now())
    response.report.zx_report.CopyFrom(zx)
    return Outcome(response, rotates_token=False)


def _now() -> datetime:
    """Kazakh local time (UTC+5 all over since March 2024), as the protocol's times are."""
    return datetime.now(KZ_TIME).replace(tzinfo=None, microsecond=0)


def _moment(message: Any, field: str) -> datetime:
    try:
        return read_date_time(message)
    except ValueError as err:
        raise refuse(f"{field}: not a valid date and time ({err})") from err


def _ticket_time(ticket: Any) -> datetime:
    return _moment(ticket.date_time, "date_time")


def _encode(tally: Tally) -> bytes:
    try:
        return to_bytes(tally)
    except struct.error as err:  # a 64-bit running sum would overflow: absurd amounts
        raise refuse(
            f"amounts: the device's running sums outgrow what the OFD holds ({err})"
        ) from err


def _closing_report(
    ctx: RequestContext,
    closed: Tally,
    close_time: datetime,
    *,
    device_z: Any,
    is_offline: bool,
) -> tuple[ShiftReport, Any]:
    """The stored record of a closed shift, and the OFD's Z report of it."""
    ofd_z = render(closed, ctx.schema, ctx.version, report_time=close_time, close_time=close_time)
    if device_z is None:
        differences: tuple[str, ...] = ()
        device_bytes = None
    else:
        differences = tuple(compare(device_z, ofd_z))
        device_bytes = device_z.SerializePartialToString()
    report = ShiftReport(
        shift_number=closed.shift_number,
        closed_at=close_time,
        is_offline=is_offline,
        protocol_version=ctx.version,
        device_z=device_bytes,
        ofd_z=ofd_z.SerializeToString(),
        differences=differences,
    )
    return report, ofd_z


def _implicit_close(ctx: RequestContext, closed: Tally, when: datetime) -> ShiftReport:
    """The record of a shift the device left without a close: the OFD's report alone, flagged."""
    report, _ = _closing_report(ctx, closed, when, device_z=None, is_offline=False)
    note = (
        f"z_report: shift {closed.shift_number} was never closed by the device; its next"
        " shift's first document closed it"
    )
    return replace(report, differences=(note,))


def handle_ticket(ctx: RequestContext, state: DeviceState, request: Any) -> Outcome:
    if not request.HasField("ticket"):
        raise refuse("ticket: TICKET command without a ticket")
    ticket = request.ticket
    receipt = summarize_ticket(ticket)
    total = receipt.total
    when = _ticket_time(ticket)
    tally, closed = enter_shift(
        state.tally, ticket.fr_shift_number, when, offline=receipt.offline, field="fr_shift_number"
    )
    cash_in = receipt.cash_in
    if cash_in < 0 and tally.cash + cash_in < 0:
        raise Refusal(
            ResultCode.NOT_ENOUGH_CASH,
            f"payments: {-cash_in} tiyn paid out in cash, the drawer holds {tally.cash}",
        )
    tally = add_receipt(tally, receipt)
    blob = _encode(tally)
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
    document = Document(str(identity), sign, tally.shift_number, ticket.printed_document_number)
    return Outcome(
        response,
        rotates_token=True,
        document=document,
        tally=tally,
        tally_blob=blob,
        shift_report=None if closed is None else _implicit_close(ctx, closed, when),
    )


def _document(
    ctx: RequestContext, state: DeviceState, key: str, shift_number: int, number: int
) -> Document:
    identity = DocumentIdentity(state.system_id, key)
    return Document(str(identity), fiscal_sign(ctx.fiscal.secret, identity), shift_number, number)


def handle_money_placement(ctx: RequestContext, state: DeviceState, request: Any) -> Outcome:
    if not request.HasField("money_placement"):
        raise refuse("money_placement: MONEY_PLACEMENT command without money_placement")
    placement = request.money_placement
    # The one field 2.0.4 renamed: 2.0.3's `datetime` is `date_time` there.
    time_field = "datetime" if ctx.version == 203 else "date_time"
    when = _moment(getattr(placement, time_field), f"money_placement.{time_field}")
    amount = tiyn(placement.sum, "money_placement.sum")
    if amount == 0:
        raise refuse("money_placement.sum: a placement of zero")
    offline = placement.is_offline
    tally, closed = enter_shift(
        state.tally,
        placement.fr_shift_number,
        when,
        offline=offline,
        field="money_placement.fr_shift_number",
    )
    kind: int = placement.operation
    if kind == WITHDRAWAL and amount > tally.cash:
        raise Refusal(
            ResultCode.NOT_ENOUGH_CASH,
            f"money_placement.sum: withdrawal of {amount} tiyn, the drawer holds {tally.cash}",
        )
    tally = add_placement(tally, kind, amount, offline=offline)
    blob = _encode(tally)
    number = placement.printed_document_number
    shift = tally.shift_number
    # "m": a device that numbers placements apart from receipts cannot make two documents one.
    key = f"s{shift}/m{number}" if number else f"t{ctx.token}/r{ctx.request_number}"
    return Outcome(
        _ok(ctx, Command.MONEY_PLACEMENT),
        rotates_token=True,
        document=_document(ctx, state, key, shift, number),
        tally=tally,
        tally_blob=blob,
        shift_report=None if closed is None else _implicit_close(ctx, closed, when),
    )


def handle_close_shift(ctx: RequestContext, state: DeviceState, request: Any) -> Outcome:
    if not request.HasField("close_shift"):
        raise refuse("close_shift: CLOSE_SHIFT command without close_shift")
    close = request.close_shift
    close_time = _moment(close.close_time, "close_shift.close_time")
    tally = state.tally
    number = close.fr_shift_number
    field = "close_shift.fr_shift_number"
    if tally.is_open:
        if number not in (0, tally.shift_number):
            raise refuse(f"{field}: shift {number} is not the open shift {tally.shift_number}")
    elif number == 0:
        raise refuse(f"{field}: no shift is open and none is named")
    elif number == tally.shift_number:
        raise refuse(f"{field}: shift {number} is already closed")
    else:  # a close is the whole of an empty shift
        tally, _ = enter_shift(tally, number, close_time, offline=True, field=field)
    device_z = close.z_report if close.HasField("z_report") else None
    report, ofd_z = _closing_report(
        ctx, tally, close_time, device_z=device_z, is_offline=close.is_offline
    )
    following = close_shift(tally, withdraw_money=close.withdraw_money)
    response = _ok(ctx, Command.CLOSE_SHIFT)
    response.report.report = REPORT_Z
    response.report.zx_report.CopyFrom(ofd_z)
    shift = tally.shift_number
    return Outcome(
        response,
        rotates_token=True,
        document=_document(ctx, state, f"z{shift}", shift, close.printed_document_number),
        tally=following,
        tally_blob=_encode(following),
        shift_report=report,
    )


def handle_report(ctx: RequestContext, state: DeviceState, request: Any) -> Outcome:
    """X or Z: the OFD's tally as it stands (a Z report through REPORT closes nothing)."""
    if not request.HasField("report"):
        raise refuse("report: REPORT command without report")
    asked = request.report
    when = _moment(asked.date_time, "report.date_time")
    response = _ok(ctx, Command.REPORT)
    response.report.report = asked.report
    response.report.zx_report.CopyFrom(
        render(state.tally, ctx.schema, ctx.version, report_time=when)
    )
    return Outcome(response, rotates_token=False)


Handler = Callable[[RequestContext, DeviceState, Any], Outcome]

HANDLERS: dict[int, Handler] = {
    Command.SYSTEM: handle_system,
    Command.TICKET: handle_ticket,
    Command.CLOSE_SHIFT: handle_close_shift,
    Command.REPORT: handle_report,
    Command.INFO: handle_info,
    Command.MONEY_PLACEMENT: handle_money_placement,
}


def handler_for(command: int) -> Handler:
    handler = HANDLERS.get(command)
    if handler is None:
        raise Refusal(ResultCode.UNSUPPORTED_COMMAND, f"command {command} is not served yet")
    return handler
