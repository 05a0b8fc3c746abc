"""The cabinet's reads of one receipt (in full for its owner, and the public check behind the QR
code), a period's receipts in full a batch at a time (archives), a period's X/Z reports beside
the OFD's, and a period's breakdown for its analytics. Lists of receipts, X/Z reports and the
daily summary are reports.receipts_report, zx_report and summary_report, the same reports
`ofd report` prints.

Values enter the SQL as integers or as strings checked against a strict pattern first (a fiscal
sign is digits only), never as text a caller chose; the reader is an analyst's restricted one
either way (readonly, limits), so a mistake here could read but never write.
"""

import calendar
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from ledger.warehouse.backends import Reader, Row
from ledger.warehouse.reports import FISCAL_SIGN, OFFLINE_MARK, OPERATION_NAMES, REPORT_KIND
from ledger.zx_report import FieldPair, Value, side_by_side

COMMAND_TICKET = 1
MAX_LINES = 10_000  # items per receipt (ledger/ticket_checks.py)
DOCUMENT_ID = re.compile(r"[0-9A-Za-z/_.:-]{1,200}")  # ledger/warehouse/rows.document_id


@dataclass(frozen=True, slots=True)
class ReceiptLine:
    name: str
    quantity: int  # thousandths of a unit, as the protocol carries it
    price: int  # tiyn
    sum: int  # tiyn
    item_type: int


@dataclass(frozen=True, slots=True)
class ReceiptTax:
    tax_type: int
    percent: int  # hundredths of a percent (12% is 1200), as ledger/ticket_checks.py
    turnover: int
    tax: int


@dataclass(frozen=True, slots=True)
class Receipt:
    device_id: int
    document_id: str
    time: str  # the device's wall clock (UTC+5), as printed: YYYY-MM-DD HH:MM:SS
    shift_number: int
    printed_number: int
    offline_number: int
    operation: str  # OPERATION_NAMES
    total: int  # tiyn
    fiscal_sign: str
    organization_id: int  # where the device stood when the receipt arrived
    trade_point_id: int
    lines: tuple[ReceiptLine, ...]
    taxes: tuple[ReceiptTax, ...]
    payments: tuple[tuple[int, int], ...]  # (payment type, tiyn)

    @property
    def mark(self) -> str:
        """OFFLINE_MARK for a receipt made offline, as every list of receipts marks it."""
        return OFFLINE_MARK if self.offline_number else ""


COLUMNS = (
    "device_id, document_id, toString(document_time) AS time, shift_number, printed_number,"
    " offline_number, operation, total, fiscal_sign, organization_id, trade_point_id,"
    " item_name, item_quantity, item_price, item_sum, item_type,"
    " tax_type, tax_percent, tax_turnover, tax_sum, payment_type, payment_sum"
)


def _ints(values: Any) -> list[int]:
    # ClickHouse's JSON quotes 64-bit integers: they arrive as strings.
    return [int(v) for v in values or []]


def _receipt(row: Row) -> Receipt:
    operation = int(row["operation"])
    quantities, prices, sums, kinds = (
        _ints(row["item_quantity"]),
        _ints(row["item_price"]),
        _ints(row["item_sum"]),
        _ints(row["item_type"]),
    )
    names = [str(n) for n in row["item_name"] or []]
    lines = tuple(
        ReceiptLine(names[i], quantities[i], prices[i], sums[i], kinds[i])
        for i in range(min(len(names), MAX_LINES))
    )
    taxes = tuple(
        ReceiptTax(*values)
        for values in zip(
            _ints(row["tax_type"]),
            _ints(row["tax_percent"]),
            _ints(row["tax_turnover"]),
            _ints(row["tax_sum"]),
            strict=True,
        )
    )
    payments = tuple(zip(_ints(row["payment_type"]), _ints(row["payment_sum"]), strict=True))
    return Receipt(
        device_id=int(row["device_id"]),
        document_id=str(row["document_id"]),
        time=str(row["time"]),
        shift_number=int(row["shift_number"]),
        printed_number=int(row["printed_number"]),
        offline_number=int(row["offline_number"]),
        operation=(
            OPERATION_NAMES[operation] if 0 <= operation < len(OPERATION_NAMES) else str(operation)
        ),
        total=int(row["total"]),
        fiscal_sign=str(row["fiscal_sign"]),
        organization_id=int(row["organization_id"]),
        trade_point_id=int(row["trade_point_id"]),
        lines=lines,
        taxes=taxes,
        payments=payments,
    )


def _one(reader: Reader, where: str) -> Receipt | None:
    rows = reader.select(
        f"SELECT {COLUMNS} FROM {reader.database}.documents"
        f" WHERE command = {COMMAND_TICKET} AND {where} LIMIT 1"
    )
    return _receipt(rows[0]) if rows else None


def receipt(reader: Reader, device_id: int, fiscal_sign: str) -> Receipt | None:
    """A device's receipt by its fiscal sign (unique: a MAC of the document's identity)."""
    if not FISCAL_SIGN.fullmatch(fiscal_sign):
        return None
    return _one(reader, f"device_id = {int(device_id)} AND fiscal_sign = '{fiscal_sign}'")


def check_params(device_id: int, fiscal_sign: str, total: int, when: datetime) -> dict[str, Any]:
    """The parameters of reports.receipt_check_report for what a QR code names (its device found
    by the KGD number): `when` is the device's naive wall clock, stored as if UTC."""
    return {
        "device": device_id,
        "sign": fiscal_sign,
        "total": total,
        "time": calendar.timegm(when.timetuple()),
    }


def checked_receipt(rows: list[Row]) -> Receipt | None:
    """The receipt reports.receipt_check_report found, or None: the public check (a near miss
    is no match; nothing is said of what else the device sent)."""
    return _receipt(rows[0]) if rows else None


def receipts_by_sign(
    reader: Reader, device_id: int, signs: list[str], first: str, last: str
) -> list[Receipt]:
    """A device's receipts with these fiscal signs, made between the times `first` and `last`
    (inclusive; a list's rows, so the read touches that slice of the device's documents only),
    in order of time: a period's receipts in full, a batch at a time. Signs that are not digits
    are skipped; a time that is not one is ValueError."""
    listed = ",".join(f"'{sign}'" for sign in signs if FISCAL_SIGN.fullmatch(sign)) or "''"
    rows = reader.select(
        f"SELECT {COLUMNS} FROM {reader.database}.documents"
        f" WHERE command = {COMMAND_TICKET} AND device_id = {int(device_id)}"
        f" AND document_time BETWEEN {_moment(first)} AND {_moment(last)}"
        f" AND fiscal_sign IN ({listed})"
        " ORDER BY document_time, printed_number LIMIT 1 BY fiscal_sign"
    )
    return [_receipt(row) for row in rows]


def _moment(text: str) -> str:
    """A warehouse time as SQL, once it is shown to be one."""
    when = datetime.fromisoformat(str(text)).replace(microsecond=0, tzinfo=None)
    return f"toDateTime('{when.strftime('%Y-%m-%d %H:%M:%S')}', 'UTC')"


@dataclass(frozen=True, slots=True)
class ReportBeside:
    """A Z or X report: the register's beside the OFD's, field by field."""

    document_id: str
    time: str  # the device's wall clock (UTC+5), as printed
    kind: str  # as reports.zx_report names it: "Z" (a shift closed), "Z (request)" or "X"
    shift_number: int
    offline: bool
    device_sent: bool  # a 2.0.3 register may close a shift without a Z of its own
    fields: tuple[FieldPair, ...]

    @property
    def differs(self) -> bool:
        return any(pair.differs for pair in self.fields)


def _flattened(text: Any) -> dict[str, Value]:
    loaded = json.loads(str(text)) if text else {}
    return loaded if isinstance(loaded, dict) else {}


def reports_beside(
    reader: Reader,
    device_id: int,
    start: date,
    end: date,
    *,
    limit: int,
    after: tuple[str, str] | None = None,
) -> list[ReportBeside]:
    """A device's X and Z reports of a period the caller has already bounded (the reports
    list's limits), in order of time, at most `limit`, after `after` (the previous batch's last
    (time, document_id)). Integers, dates and checked values only enter the SQL."""
    db, device = reader.database, int(device_id)
    since, before = f"'{start.isoformat()}'", f"'{(end + timedelta(days=1)).isoformat()}'"
    following = ""
    if after is not None:
        if not DOCUMENT_ID.fullmatch(after[1]):
            raise ValueError(f"{after[1]!r} is not a document id")
        following = f" WHERE (time, document_id) > ({_moment(after[0])}, '{after[1]}')"
    rows = reader.select(
        "SELECT document_id, toString(time) AS time, kind, shift, offline, device_z, ofd_z FROM ("
        " SELECT document_id, close_time AS time, 'Z' AS kind, shift_number AS shift, offline,"
        "  device_z, ofd_z"
        f"  FROM {db}.shifts WHERE device_id = {device}"
        f"  AND close_time >= {since} AND close_time < {before}"
        " UNION ALL"
        f" SELECT document_id, report_time AS time, {REPORT_KIND} AS kind,"
        "  shift_number AS shift, toUInt8(0) AS offline,"
        "  device_report AS device_z, ofd_report AS ofd_z"
        f"  FROM {db}.reports WHERE device_id = {device}"
        f"  AND report_time >= {since} AND report_time < {before}"
        f"){following} ORDER BY time, document_id LIMIT {int(limit)}"
    )
    return [
        ReportBeside(
            document_id=str(row["document_id"]),
            time=str(row["time"]),
            kind=str(row["kind"]),
            shift_number=int(row["shift"]),
            offline=bool(int(row["offline"])),
            device_sent=bool(row["device_z"]),
            fields=tuple(side_by_side(_flattened(row["device_z"]), _flattened(row["ofd_z"]))),
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class Breakdown:
    """What a period's receipts of some registers add up to, beyond the daily summary
    (reports.summary_report): money by payment type, taxes, and returns. Sums are signed by
    direction (ledger.tally.DIRECTION): a sale's money counts in, a return's out."""

    payments: tuple[tuple[int, int], ...]  # (payment type, tiyn)
    taxes: tuple[ReceiptTax, ...]
    returns: int  # sale returns: how many
    returned: int  # and their total, tiyn


def breakdown(reader: Reader, devices: list[int], start: date, end: date) -> Breakdown:
    """For registers and days the caller has already bounded (reports.summary_report's
    limits): integers and dates only enter the SQL."""
    listed = ",".join(str(int(d)) for d in devices) or "0"
    after, before = f"'{start.isoformat()}'", f"'{(end + timedelta(days=1)).isoformat()}'"
    db = reader.database
    where = f"device_id IN ({listed}) AND document_time >= {after} AND document_time < {before}"
    payments = reader.select(
        "SELECT payment_type, sum(paid * multiIf(operation IN (1, 2), 1, -1)) AS total"
        f" FROM {db}.documents ARRAY JOIN payment_type AS payment_type, payment_sum AS paid"
        f" WHERE command = {COMMAND_TICKET} AND {where}"
        " GROUP BY payment_type ORDER BY payment_type"
    )
    taxes = reader.select(
        "SELECT tax_type, percent, sum(turnover) AS turnover, sum(tax) AS tax"
        f" FROM {db}.daily_tax WHERE device_id IN ({listed})"
        f" AND day BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'"
        " GROUP BY tax_type, percent ORDER BY tax_type, percent"
    )
    returns = reader.select(
        f"SELECT count() AS n, sum(total) AS total FROM {db}.receipts"
        f" WHERE operation = {OPERATION_NAMES.index('SELL_RETURN')} AND {where}"
    )
    back = returns[0] if returns else {"n": 0, "total": 0}
    return Breakdown(
        payments=tuple((int(p["payment_type"]), int(p["total"])) for p in payments),
        taxes=tuple(
            ReceiptTax(int(t["tax_type"]), int(t["percent"]), int(t["turnover"]), int(t["tax"]))
            for t in taxes
        ),
        returns=int(back["n"] or 0),
        returned=int(back["total"] or 0),
    )
