"""What each command does once the session rules let it through: the answer and what changes.

Handlers are synchronous and do no I/O: they take the device's state and the parsed request and
return an Outcome that the pipeline makes durable. A handler refuses by raising Refusal.

Documents (TICKET, MONEY_PLACEMENT, CLOSE_SHIFT) go through the shift rules (`ledger.shifts`)
and into the OFD's tally (`ledger.tally`); CLOSE_SHIFT answers with the OFD's Z report and
stores both reports; REPORT and INFO answer from the tally. The new tally is encoded here, so a
tally that outgrew its storage is one refused request, never a failed batch.

Offline documents (`ledger.offline`) widen the device's open offline window and the first online
one closes it; an offline receipt whose number is already held is the same document again
(answered as before, counted once) or, with other content, refused. NOMENCLATURE, AUTH,
QR_GENERATE and QR_GET_STATUS answer from what `ledger.prepare` read for them
(`RequestContext.prepared`), and like SYSTEM, REPORT and INFO never rotate the token.
"""

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from types import ModuleType
from typing import Any, TypeVar

from ledger.device_state import DeviceState, ShiftReport
from ledger.errors import Refusal
from ledger.fiscal import (
    DocumentIdentity,
    FiscalSettings,
    fiscal_sign,
    qr_url,
    request_key,
    ticket_identity,
)
from ledger.nomenclature import NOT_FOUND_BY_BARCODE, CatalogueAnswer
from ledger.nomenclature import fill as fill_catalogue
from ledger.offline import CLOSE, OfflineTicket, OfflineWrite, digest_of, widen
from ledger.operators import Operator
from ledger.qr_payments import QrPayment
from ledger.shifts import enter_shift
from ledger.tally import WITHDRAWAL, Tally, add_placement, add_receipt, close_shift
from ledger.tally_codec import to_bytes
from ledger.ticket_checks import refuse, summarize_ticket, tiyn
from ledger.wire import KZ_TIME, Command, ResultCode
from ledger.zx_report import REPORT_X, REPORT_Z, compare, read_date_time, render

AUTH_OK, AUTH_INVALID_LOGIN_PASSWORD = 0, 1  # AuthResponse.ResultTypeEnum


_T = TypeVar("_T")

# What ledger.prepare may have read for a request: the stored offline receipt of the same number,
# the catalogue, the operator (None: no such login), the payment QR.
Prepared = OfflineTicket | CatalogueAnswer | Operator | QrPayment | None


# RequestContext, Document and Outcome are made on every request: not frozen, because a frozen
# dataclass's __init__ (object.__setattr__ per field) costs about 0.1 µs a field more. Nothing
# changes one once it is made.
@dataclass(slots=True)
class RequestContext:
    schema: ModuleType
    version: int
    token: int
    request_number: int
    fiscal: FiscalSettings
    # What the pipeline read for this request before the handler (handlers do no I/O).
    prepared: Prepared = None


@dataclass(slots=True)
class Document:
    """A fiscal document accepted for the journal."""

    document_id: str
    fiscal_sign: str
    shift_number: int
    document_number: int
    offline: bool = False  # made offline: journaled as such


@dataclass(slots=True)
class Outcome:
    response: Any  # the Response message, OK
    rotates_token: bool
    document: Document | None = None
    tally: Tally | None = None  # the device's new tally; None: unchanged
    tally_blob: bytes | None = None  # its stored form (set with `tally`)
    shift_report: ShiftReport | None = None  # a shift this request closed
    offline_write: OfflineWrite | None = None  # what it changes in the offline record


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
    service = request.service
    # 2.0.4 makes reg_info a required part of every service answer; 2.0.3 sends it on request.
    if ctx.version == 204 or service.get_reg_info:
        _fill_reg_info(ctx, state, response.service.reg_info)
    offline: OfflineWrite | None = None
    if service.HasField("offline_period"):
        period = service.offline_period
        begin = _moment(period.begin_time, "service.offline_period.begin_time")
        end = _moment(period.end_time, "service.offline_period.end_time")
        if end < begin:
            raise refuse("service.offline_period.end_time: before its begin_time")
        offline = OfflineWrite(since=begin, until=end, reported=True)
    elif state.offline_since is not None:
        offline = CLOSE  # talking to us without a period: online again
    return Outcome(response, rotates_token=False, offline_write=offline)


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
    offline_number: int = ticket.offline_ticket_number
    digest = b""
    if offline_number:
        digest = digest_of(ticket)
        seen = ctx.prepared
        if isinstance(seen, OfflineTicket):
            return _offline_again(ctx, state, seen, digest, total=total, when=when)
    # Each read of a protobuf field costs a lookup by name: read once.
    shift_number: int = ticket.fr_shift_number
    document_number: int = ticket.printed_document_number
    tally, closed = enter_shift(
        state.tally, shift_number, when, offline=receipt.offline, field="fr_shift_number"
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
        shift_number=shift_number,
        document_number=document_number,
        offline_number=offline_number,
        token=ctx.token,
        request_number=ctx.request_number,
        secret=ctx.fiscal.secret,
    )
    sign = fiscal_sign(ctx.fiscal.secret, identity)
    response = _ok(ctx, Command.TICKET)
    answer = response.ticket
    answer.ticket_number = sign
    answer.qr_code = qr_url(
        ctx.fiscal.qr_base_url, sign, state.reg.kgd_registration_number, total, when
    ).encode()
    document = Document(str(identity), sign, tally.shift_number, document_number, receipt.offline)
    offline: OfflineWrite | None = None
    if offline_number:
        stored = OfflineTicket(
            offline_number, document.document_id, sign, digest, tally.shift_number, when
        )
        offline = OfflineWrite(ticket=stored, since=when, until=when)
    elif state.offline_since is not None:
        offline = CLOSE
    return Outcome(
        response,
        rotates_token=True,
        document=document,
        tally=tally,
        tally_blob=blob,
        shift_report=None if closed is None else _implicit_close(ctx, closed, when),
        offline_write=offline,
    )


def _offline_again(
    ctx: RequestContext,
    state: DeviceState,
    seen: OfflineTicket,
    digest: bytes,
    *,
    total: int,
    when: datetime,
) -> Outcome:
    """An offline number already held: the identical receipt is the same document (its
    ticket number again, nothing counted twice); another document under it is refused."""
    if seen.digest != digest:
        raise refuse(
            f"offline_ticket_number: {seen.offline_number} already numbers another receipt"
            f" of this device (ticket number {seen.fiscal_sign}, made {seen.made_at.isoformat()})"
        )
    response = _ok(ctx, Command.TICKET)
    response.ticket.ticket_number = seen.fiscal_sign
    response.ticket.qr_code = qr_url(
        ctx.fiscal.qr_base_url, seen.fiscal_sign, state.reg.kgd_registration_number, total, when
    ).encode()
    return Outcome(response, rotates_token=True)


def _offline_change(state: DeviceState, offline: bool, when: datetime) -> OfflineWrite | None:
    """An offline document widens the open window; the first online one closes it."""
    if offline:
        return widen(when)
    return None if state.offline_since is None else CLOSE


def _document(
    ctx: RequestContext, state: DeviceState, key: str, where: tuple[int, int], *, offline: bool
) -> Document:
    """`where`: (shift number, printed document number)."""
    identity = DocumentIdentity(state.system_id, key)
    sign = fiscal_sign(ctx.fiscal.secret, identity)
    return Document(str(identity), sign, *where, offline=offline)


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
    key = (
        f"s{shift}/m{number}"
        if number
        else request_key(ctx.fiscal.secret, state.system_id, ctx.token, ctx.request_number)
    )
    return Outcome(
        _ok(ctx, Command.MONEY_PLACEMENT),
        rotates_token=True,
        document=_document(ctx, state, key, (shift, number), offline=offline),
        tally=tally,
        tally_blob=blob,
        shift_report=None if closed is None else _implicit_close(ctx, closed, when),
        offline_write=_offline_change(state, offline, when),
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
        document=_document(
            ctx,
            state,
            f"z{shift}",
            (shift, close.printed_document_number),
            offline=close.is_offline,
        ),
        tally=following,
        tally_blob=_encode(following),
        shift_report=report,
        offline_write=_offline_change(state, close.is_offline, close_time),
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


def _unprepared(ctx: RequestContext, kind: type) -> TypeError:
    return TypeError(f"the pipeline prepared {type(ctx.prepared).__name__}, not {kind.__name__}")


def _prepared(ctx: RequestContext, kind: type[_T]) -> _T:
    """What ledger.prepare read for this command; anything else is a wiring bug."""
    value = ctx.prepared
    if not isinstance(value, kind):
        raise _unprepared(ctx, kind)
    return value


def handle_nomenclature(ctx: RequestContext, state: DeviceState, request: Any) -> Outcome:
    """The catalogue as `ledger.prepare` read it (ledger/nomenclature.py says the results)."""
    del state, request
    answer = _prepared(ctx, CatalogueAnswer)
    response = _ok(ctx, Command.NOMENCLATURE)
    fill_catalogue(response.nomenclature, answer)
    if answer.result == NOT_FOUND_BY_BARCODE and ctx.version == 203:
        response.result.result_code = ResultCode.CODE_18  # ELEMENT_NOT_FOUND_BY_BARCODE in 2.0.3
        response.result.result_text = "no item with this barcode"
    return Outcome(response, rotates_token=False)


def handle_auth(ctx: RequestContext, state: DeviceState, request: Any) -> Outcome:
    """The operator the login and password are (ledger/operators.py), or code 12."""
    del state, request
    operator = ctx.prepared
    if not isinstance(operator, Operator | None):
        raise _unprepared(ctx, Operator)
    response = _ok(ctx, Command.AUTH)
    auth = response.auth
    if operator is None:
        auth.result = AUTH_INVALID_LOGIN_PASSWORD
        response.result.result_code = ResultCode.INVALID_LOGIN_PASSWORD
        response.result.result_text = "invalid login or password"
    else:
        auth.result = AUTH_OK
        auth.operator_code = operator.code
        if operator.name:
            auth.operator_name = operator.name
        auth.roles.extend(operator.roles)
    return Outcome(response, rotates_token=False)


def handle_qr(ctx: RequestContext, state: DeviceState, request: Any) -> Outcome:
    """QR_GENERATE and QR_GET_STATUS (2.0.4): the payment as `ledger.prepare` stored or read it."""
    del state
    payment = _prepared(ctx, QrPayment)
    response = _ok(ctx, request.command)
    response.qr.qr_code = payment.qr_code
    response.qr.status = payment.status
    return Outcome(response, rotates_token=False)


Handler = Callable[[RequestContext, DeviceState, Any], Outcome]

HANDLERS: dict[int, Handler] = {
    Command.SYSTEM: handle_system,
    Command.TICKET: handle_ticket,
    Command.CLOSE_SHIFT: handle_close_shift,
    Command.REPORT: handle_report,
    Command.INFO: handle_info,
    Command.MONEY_PLACEMENT: handle_money_placement,
    Command.NOMENCLATURE: handle_nomenclature,
    Command.AUTH: handle_auth,
    # Only 2.0.4 defines them: a 2.0.3 body naming them does not parse (UNKNOWN_COMMAND).
    Command.QR_GENERATE: handle_qr,
    Command.QR_GET_STATUS: handle_qr,
}


def handler_for(command: int) -> Handler:
    handler = HANDLERS.get(command)
    if handler is None:
        raise Refusal(ResultCode.UNSUPPORTED_COMMAND, f"command {command} is not served yet")
    return handler
