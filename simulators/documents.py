"""Every document a KKM sends, for either protocol version: receipts with any kind of line,
money placements, shift closes and report requests; and the other requests a till makes: the
offline period it reports, catalogue (NOMENCLATURE) and operator login (AUTH) requests, and the
2.0.4 payment QRs.

Pure functions, no I/O, like `simulators.receipts` (whose simple receipt builder stays as it
is): give them the generated module of a version and plain data, get a Request every required
field of which is set. Money is in tiyn. These builders check nothing: a spec that breaks the
receipt rules gives a request the gateway refuses, which is what tests of the rules want.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any, cast

from ledger.wire import Command
from simulators.receipts import (
    PIECE,
    STS_TAXATION_TYPE,
    VAT_TAX_TYPE,
    Request,
    build_system,
    date_time,
    money,
    version_of,
)

# ItemTypeEnum values and the field each one fills (the same in 2.0.3 and 2.0.4).
COMMODITY, STORNO_COMMODITY, MARKUP, STORNO_MARKUP, DISCOUNT, STORNO_DISCOUNT = range(1, 7)
ITEM_FIELDS = {
    COMMODITY: "commodity",
    STORNO_COMMODITY: "storno_commodity",
    MARKUP: "markup",
    STORNO_MARKUP: "storno_markup",
    DISCOUNT: "discount",
    STORNO_DISCOUNT: "storno_discount",
}
DEPOSIT, WITHDRAWAL = 0, 1  # MoneyPlacementEnum
REPORT_Z, REPORT_X = 0, 1  # ReportTypeEnum


@dataclass(frozen=True, slots=True)
class TaxSpec:
    percent: int  # hundredths of a percent
    sum: int  # tiyn
    included: bool = True
    tax_type: int = VAT_TAX_TYPE


@dataclass(frozen=True, slots=True)
class ItemSpec:
    """One receipt line. Commodity kinds use section, quantity and price; modifiers only sum."""

    kind: int
    sum: int
    name: str = ""
    section_code: str = "1"
    quantity_milli: int = 1000
    price: int = 0
    measure_unit_code: str = PIECE
    taxes: tuple[TaxSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class ModifierSpec:
    sum: int
    taxes: tuple[TaxSpec, ...] = ()
    name: str = ""


@dataclass(frozen=True, slots=True)
class ParentSpec:
    number: str
    when: datetime
    kgd_kkm_id: str
    total: int
    offline: bool = False


@dataclass(frozen=True, slots=True)
class ReceiptSpec:
    operation: int
    when: datetime
    items: tuple[ItemSpec, ...]
    total: int
    payments: tuple[tuple[int, int], ...]  # (PaymentTypeEnum value, tiyn)
    shift_number: int = 0  # 0: left out
    document_number: int = 0
    taken: int | None = None
    change: int | None = None
    markup: ModifierSpec | None = None
    discount: ModifierSpec | None = None
    taxes: tuple[TaxSpec, ...] = ()  # on the ticket
    parent: ParentSpec | None = None
    offline_number: int | None = None
    operator_code: int = 1


def _fill_tax(schema: ModuleType, version: int, tax: Any, spec: TaxSpec) -> None:
    if version == 203:
        tax.tax_type = spec.tax_type
    else:
        tax.type = spec.tax_type
    tax.taxation_type = STS_TAXATION_TYPE
    tax.percent = spec.percent
    tax.sum.CopyFrom(money(schema, spec.sum))
    tax.is_in_total_sum = spec.included


def _fill_taxes(schema: ModuleType, version: int, target: Any, taxes: Sequence[TaxSpec]) -> None:
    for spec in taxes:
        _fill_tax(schema, version, target.add(), spec)


def _fill_modifier(schema: ModuleType, version: int, target: Any, spec: ModifierSpec) -> None:
    if spec.name:
        target.name = spec.name
    target.sum.CopyFrom(money(schema, spec.sum))
    _fill_taxes(schema, version, target.taxes, spec.taxes)


def _fill_item(schema: ModuleType, version: int, item: Any, spec: ItemSpec) -> None:
    item.type = spec.kind
    line = getattr(item, ITEM_FIELDS[spec.kind])
    if spec.kind in (COMMODITY, STORNO_COMMODITY):
        if spec.name:
            line.name = spec.name
        line.section_code = spec.section_code
        line.quantity = spec.quantity_milli
        line.price.CopyFrom(money(schema, spec.price))
        line.sum.CopyFrom(money(schema, spec.sum))
        line.measure_unit_code = spec.measure_unit_code  # required in 2.0.4
        _fill_taxes(schema, version, line.taxes, spec.taxes)
    else:
        _fill_modifier(schema, version, line, ModifierSpec(spec.sum, spec.taxes, spec.name))


def build_receipt(schema: ModuleType, spec: ReceiptSpec) -> Request:
    """A TICKET request exactly as `spec` says."""
    version = version_of(schema)
    request: Any = schema.Request(command=Command.TICKET)
    ticket = request.ticket
    ticket.operation = spec.operation
    ticket.date_time.CopyFrom(date_time(schema, spec.when))
    ticket.operator.code = spec.operator_code
    ticket.domain.type = schema.DOMAIN_TRADING
    for item_spec in spec.items:
        _fill_item(schema, version, ticket.items.add(), item_spec)
    for kind, amount in spec.payments:
        payment = ticket.payments.add()
        payment.type = kind
        payment.sum.CopyFrom(money(schema, amount))
    _fill_taxes(schema, version, ticket.taxes, spec.taxes)
    amounts = ticket.amounts
    amounts.total.CopyFrom(money(schema, spec.total))
    if spec.taken is not None:
        amounts.taken.CopyFrom(money(schema, spec.taken))
    if spec.change is not None:
        amounts.change.CopyFrom(money(schema, spec.change))
    if spec.markup is not None:
        _fill_modifier(schema, version, amounts.markup, spec.markup)
    if spec.discount is not None:
        _fill_modifier(schema, version, amounts.discount, spec.discount)
    if spec.shift_number:
        ticket.fr_shift_number = spec.shift_number
    if spec.document_number:
        ticket.printed_document_number = spec.document_number
        if version == 203:
            ticket.shift_document_number = spec.document_number
    if spec.offline_number is not None:
        ticket.offline_ticket_number = spec.offline_number
    if spec.parent is not None:
        parent = ticket.parent_ticket
        parent.parent_ticket_number = spec.parent.number
        parent.parent_ticket_data_time.CopyFrom(date_time(schema, spec.parent.when))
        parent.kgd_kkm_id = spec.parent.kgd_kkm_id
        parent.parent_ticket_total.CopyFrom(money(schema, spec.parent.total))
        parent.parent_ticket_is_offline = spec.parent.offline
    return cast(Request, request)


def build_money_placement(
    schema: ModuleType,
    *,
    when: datetime,
    operation: int,
    amount: int,
    shift_number: int = 0,
    document_number: int = 0,
    offline: bool = False,
    operator_code: int = 1,
) -> Request:
    """A MONEY_PLACEMENT: a deposit (0) or withdrawal (1) of `amount` tiyn."""
    request: Any = schema.Request(command=Command.MONEY_PLACEMENT)
    placement = request.money_placement
    # The one field 2.0.4 renamed.
    time_field = "datetime" if version_of(schema) == 203 else "date_time"
    getattr(placement, time_field).CopyFrom(date_time(schema, when))
    placement.operation = operation
    placement.sum.CopyFrom(money(schema, amount))
    if offline:
        placement.is_offline = True
    if shift_number:
        placement.fr_shift_number = shift_number
    if document_number:
        placement.printed_document_number = document_number
    placement.operator.code = operator_code  # required in 2.0.4
    return cast(Request, request)


def minimal_zx_report(schema: ModuleType, *, when: datetime, shift_number: int) -> Any:
    """A ZXReport with only its required fields, all zero: what a 2.0.4 REPORT must carry."""
    zx = schema.ZXReport()
    zx.date_time.CopyFrom(date_time(schema, when))
    zx.shift_number = shift_number
    zx.cash_sum.CopyFrom(money(schema, 0))
    zx.revenue.sum.CopyFrom(money(schema, 0))
    zx.revenue.is_negative = False
    zx.open_shift_time.CopyFrom(date_time(schema, when))
    return zx


def build_close_shift(
    schema: ModuleType,
    *,
    when: datetime,
    shift_number: int = 0,
    document_number: int = 0,
    z_report: Any = None,
    offline: bool = False,
    withdraw_money: bool = False,
    operator_code: int = 1,
) -> Request:
    """A CLOSE_SHIFT carrying the device's Z report (2.0.4 requires one: a zero report is sent
    when none is given)."""
    request: Any = schema.Request(command=Command.CLOSE_SHIFT)
    close = request.close_shift
    close.close_time.CopyFrom(date_time(schema, when))
    if offline:
        close.is_offline = True
    if shift_number:
        close.fr_shift_number = shift_number
    if withdraw_money:
        close.withdraw_money = True
    if z_report is None and version_of(schema) >= 204:
        z_report = minimal_zx_report(schema, when=when, shift_number=shift_number)
    if z_report is not None:
        close.z_report.CopyFrom(z_report)
    close.operator.code = operator_code
    if document_number:
        close.printed_document_number = document_number
    return cast(Request, request)


def build_report(
    schema: ModuleType,
    *,
    kind: int,
    when: datetime,
    zx_report: Any = None,
    shift_number: int = 0,
    offline: bool = False,
) -> Request:
    """A REPORT request (X or Z). 2.0.4 requires the device's own report: a zero one is sent
    when none is given."""
    request: Any = schema.Request(command=Command.REPORT)
    report = request.report
    report.report = kind
    report.date_time.CopyFrom(date_time(schema, when))
    if offline:
        report.is_offline = True
    if zx_report is None and version_of(schema) >= 204:
        zx_report = minimal_zx_report(schema, when=when, shift_number=shift_number)
    if zx_report is not None:
        report.zx_report.CopyFrom(zx_report)
    return cast(Request, request)


def build_offline_system(schema: ModuleType, *, begin: datetime, end: datetime) -> Request:
    """A SYSTEM reporting the device's offline period, as an idle offline device sends it."""
    request: Any = build_system(schema)
    period = request.service.offline_period
    period.begin_time.CopyFrom(date_time(schema, begin))
    period.end_time.CopyFrom(date_time(schema, end))
    return cast(Request, request)


def build_nomenclature(
    schema: ModuleType, *, current_version: int = 0, barcode: str = ""
) -> Request:
    """A NOMENCLATURE request: the catalogue newer than `current_version`, or one barcode."""
    request: Any = schema.Request(command=Command.NOMENCLATURE)
    request.nomenclature.SetInParent()
    if current_version:
        request.nomenclature.current_version = current_version
    if barcode:
        request.nomenclature.barcode = barcode
    return cast(Request, request)


def build_auth(schema: ModuleType, *, login: str, password: str) -> Request:
    """An AUTH request: an operator logging in at the device."""
    request: Any = schema.Request(command=Command.AUTH)
    request.auth.login = login
    request.auth.password = password
    return cast(Request, request)


def build_qr(
    schema: ModuleType, command: int, *, invoice_id: int, amount: int | None = None
) -> Request:
    """QR_GENERATE or QR_GET_STATUS (2.0.4 only: the 2.0.3 module has no QRRequest)."""
    request: Any = schema.Request(command=command)
    request.qr.invoice_id = invoice_id
    if amount is not None:
        request.qr.amount.CopyFrom(money(schema, amount))
    return cast(Request, request)
