"""Journal records decoded into `documents` rows: the raw frames and what an analyst reads.

One row per record. Receipts carry their lines, payments and taxes as parallel arrays (the
materialized views spread them into tables), money in tiyn, revenue signed by direction. A shift
close carries the device's Z report and the OFD's (from the response) flattened to named numbers,
and their differences. A record whose body cannot be decoded still becomes a row with its raw
frames, so nothing acknowledged is ever left out of the warehouse.

No row holds a device token (tokens live in PostgreSQL only). Records of envelope version 2 carry
none; older ones do, and lose them here: both frames' header token zeroed, and a fallback document
id that spells the token out ("t<token>/r<n>") renamed by its fiscal sign, so an old journal
loaded into a new warehouse leaks nothing.
"""

import json
import re
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import DecodeError

from ledger.errors import Refusal
from ledger.schemas import SCHEMAS
from ledger.tally import DIRECTION
from ledger.ticket_checks import ITEM_FIELDS, summarize_ticket
from ledger.wire import HEADER_SIZE, KNOWN_ENVELOPE_VERSIONS, without_token
from ledger.zx_report import compare, flatten, read_date_time
from ofdproto.journal.v1.record_pb2 import JournalRecord

NO_VALUE = -1  # operation, report type, placement kind of a document that has none
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MICRO_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

Row = dict[str, Any]

# Envelope versions whose fallback document id holds the raw token; from 2 it is a keyed MAC.
_RAW_TOKEN_IDS = frozenset({0, 1})
# The fallback document id of those versions: "<system id>/t<token>/r<request number>".
_RAW_TOKEN_ID = re.compile(r"(\d+)/t\d+/r(\d+)")


def _tiyn(money: Any) -> int:
    return int(money.bills) * 100 + int(money.coins)


def format_micros(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1_000_000, UTC).strftime(MICRO_FORMAT)


def _moment(message: Any, fallback: datetime) -> str:
    try:
        return read_date_time(message).strftime(TIME_FORMAT)
    except ValueError:
        return fallback.strftime(TIME_FORMAT)  # a device clock that is not a real moment


def document_id(record: JournalRecord) -> str:
    """The record's document id, without the token an old record's fallback id spells out: the
    fiscal sign (a keyed MAC of that id, so as deterministic, and printed on the receipt anyway)
    stands in for it, and the copies of one document still collapse into one row."""
    if record.envelope_version in _RAW_TOKEN_IDS:
        match = _RAW_TOKEN_ID.fullmatch(record.document_id)
        if match is not None:
            system_id, request_number = match.groups()
            return f"{system_id}/f{record.fiscal_sign}/r{request_number}"
    return record.document_id


def _empty_row(record: JournalRecord, loaded_at_us: int) -> Row:
    return {
        "device_id": record.device_id,
        "document_id": document_id(record),
        "organization_id": record.organization_id,
        "trade_point_id": record.trade_point_id,
        "command": record.command,
        "protocol_version": record.protocol_version,
        "gateway_id": record.gateway_id,
        "received_at": format_micros(record.received_at_us),
        "loaded_at": format_micros(loaded_at_us),
        "document_time": datetime.fromtimestamp(record.received_at_us / 1e6, UTC).strftime(
            TIME_FORMAT
        ),
        "shift_number": 0,
        "request_number": record.request_number,
        "fiscal_sign": record.fiscal_sign,
        "offline": 0,
        "printed_number": 0,
        "offline_number": 0,
        "operation": NO_VALUE,
        "total": 0,
        "revenue": 0,
        "item_type": [],
        "item_name": [],
        "item_section": [],
        "item_quantity": [],
        "item_price": [],
        "item_sum": [],
        "payment_type": [],
        "payment_sum": [],
        "tax_type": [],
        "tax_percent": [],
        "tax_turnover": [],
        "tax_sum": [],
        "report_type": NO_VALUE,
        "withdraw_money": 0,
        "device_report": "",
        "ofd_report": "",
        "differences": [],
        "placement_kind": NO_VALUE,
        "placement_sum": 0,
        # Hex keeps the JSONEachRow insert plain text; unhex() gives the bytes back. Zeroing the
        # token is a no-op from envelope version 2 on, and cleans what older records hold.
        "request_frame": without_token(record.request_frame).hex(),
        "response_frame": without_token(record.response_frame).hex(),
    }


def _fill_ticket(row: Row, ticket: Any, received: datetime) -> None:
    row["document_time"] = _moment(ticket.date_time, received)
    row["shift_number"] = int(ticket.fr_shift_number)
    row["printed_number"] = int(ticket.printed_document_number)
    row["offline_number"] = int(ticket.offline_ticket_number)
    row["offline"] = int(bool(ticket.offline_ticket_number))
    operation = int(ticket.operation)
    total = _tiyn(ticket.amounts.total)
    row["operation"], row["total"] = operation, total
    row["revenue"] = DIRECTION[operation] * total if 0 <= operation < len(DIRECTION) else 0
    for item in ticket.items:
        kind = int(item.type)
        line = getattr(item, ITEM_FIELDS.get(kind, "commodity"))
        row["item_type"].append(kind)
        row["item_name"].append(getattr(line, "name", ""))
        row["item_section"].append(getattr(line, "section_code", ""))
        row["item_quantity"].append(int(getattr(line, "quantity", 0)))
        row["item_price"].append(_tiyn(line.price) if hasattr(line, "price") else 0)
        row["item_sum"].append(_tiyn(line.sum))
    for payment in ticket.payments:
        row["payment_type"].append(int(payment.type))
        row["payment_sum"].append(_tiyn(payment.sum))
    try:
        taxes = summarize_ticket(ticket).taxes
    except Refusal:
        taxes = {}  # accepted under older rules; the lines above are still there
    for (tax_type, percent), (turnover, tax, _) in sorted(taxes.items()):
        row["tax_type"].append(tax_type)
        row["tax_percent"].append(percent)
        row["tax_turnover"].append(turnover)
        row["tax_sum"].append(tax)


def _fill_close(row: Row, close: Any, response: Any, received: datetime) -> None:
    row["document_time"] = _moment(close.close_time, received)
    row["shift_number"] = int(close.fr_shift_number or close.z_report.shift_number)
    row["printed_number"] = int(close.printed_document_number)
    row["offline"] = int(close.is_offline)
    row["withdraw_money"] = int(close.withdraw_money)
    row["report_type"] = 0
    device_z = close.z_report if close.HasField("z_report") else None  # optional in 2.0.3
    if device_z is not None:
        row["device_report"] = json.dumps(flatten(device_z), sort_keys=True)
    if response is not None and response.HasField("report"):
        ofd = response.report.zx_report
        row["ofd_report"] = json.dumps(flatten(ofd), sort_keys=True)
        if device_z is None:
            row["differences"] = ["z_report: the device sent none"]
        else:
            row["differences"] = compare(device_z, ofd)


def _fill_report(row: Row, report: Any, response: Any, received: datetime) -> None:
    row["document_time"] = _moment(report.date_time, received)
    row["report_type"] = int(report.report)
    row["offline"] = int(report.is_offline)
    row["shift_number"] = int(report.zx_report.shift_number)
    if report.HasField("zx_report"):
        row["device_report"] = json.dumps(flatten(report.zx_report), sort_keys=True)
    if response is not None and response.HasField("report"):
        ofd = response.report.zx_report
        row["ofd_report"] = json.dumps(flatten(ofd), sort_keys=True)
        row["shift_number"] = row["shift_number"] or int(ofd.shift_number)


def _fill_placement(row: Row, placement: Any, received: datetime) -> None:
    # 2.0.3 names the field `datetime`, 2.0.4 `date_time`.
    when = placement.datetime if hasattr(placement, "datetime") else placement.date_time
    row["document_time"] = _moment(when, received)
    row["shift_number"] = int(placement.fr_shift_number)
    row["printed_number"] = int(placement.printed_document_number)
    row["offline"] = int(placement.is_offline)
    row["placement_kind"] = int(placement.operation)
    row["placement_sum"] = _tiyn(placement.sum)


def document_row(record: JournalRecord, loaded_at_us: int) -> Row:
    """The `documents` row of one journal record."""
    row = _empty_row(record, loaded_at_us)
    schema = SCHEMAS.get(record.protocol_version)
    if schema is None:
        return row
    received = datetime.fromtimestamp(record.received_at_us / 1e6, UTC)
    try:
        request = schema.Request.FromString(record.request_frame[HEADER_SIZE:])
        response = None
        if len(record.response_frame) > HEADER_SIZE:
            response = schema.Response.FromString(record.response_frame[HEADER_SIZE:])
    except DecodeError:
        return row
    if request.HasField("ticket"):
        _fill_ticket(row, request.ticket, received)
    elif request.HasField("close_shift"):
        _fill_close(row, request.close_shift, response, received)
    elif request.HasField("report"):
        _fill_report(row, request.report, response, received)
    elif request.HasField("money_placement"):
        _fill_placement(row, request.money_placement, received)
    # The envelope's flag (newer gateways) and the document's own fields say the same; either.
    row["offline"] = int(bool(row["offline"]) or record.is_offline)
    return row


def decode_record(payload: bytes) -> JournalRecord:
    record = JournalRecord.FromString(payload)
    if record.envelope_version not in KNOWN_ENVELOPE_VERSIONS:
        raise ValueError(f"journal envelope version {record.envelope_version} is not known")
    return record
