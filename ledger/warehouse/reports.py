"""Analysts' reads: read-only SQL and the named reports of an operator's cabinet.

Read-only SQL is enforced twice: the statement must be one query of a reading kind (SELECT,
WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS), and SELECTs run with `readonly = 2` so that ClickHouse
itself refuses any write hidden inside one. Named reports take typed parameters and bound
ranges; their limits are settings, not constants in SQL.
"""

import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from ledger.warehouse.backends import Row, Warehouse

READING = ("select", "with", "show", "describe", "desc", "explain", "exists")
MAX_SQL_CHARS = 100_000
MAX_RESULT_ROWS = 100_000  # an analyst who needs more exports from ClickHouse directly
OFFLINE_MARK = "А"  # Cyrillic A: how a cabinet marks a receipt sent offline
OPERATION_NAMES = ("BUY", "BUY_RETURN", "SELL", "SELL_RETURN")


class QueryRefused(ValueError):
    """The SQL is not a single read-only query, or a report's parameters are out of bounds."""


@dataclass(frozen=True, slots=True)
class ReportLimits:
    one_device_days: int = 31
    many_devices: int = 20
    many_devices_days: int = 7


def readonly_sql(sql: str) -> str:
    """The statement as it will run, or QueryRefused."""
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise QueryRefused("empty query")
    if len(text) > MAX_SQL_CHARS:
        raise QueryRefused(f"query longer than {MAX_SQL_CHARS} characters")
    if ";" in _without_literals(text):
        raise QueryRefused("one statement at a time")
    first = text.split(None, 1)[0].lower()
    if first not in READING:
        raise QueryRefused(f"only reading queries ({', '.join(READING)}); got {first.upper()}")
    bare = _without_literals(text).lower()
    if "into outfile" in bare or re.search(r"\breadonly\b", bare):
        raise QueryRefused("INTO OUTFILE and the readonly setting are not allowed")
    if first in ("select", "with"):
        joiner = ", " if re.search(r"\bsettings\b", bare) else " SETTINGS "
        text = f"{text}{joiner}readonly = 2, max_result_rows = {MAX_RESULT_ROWS}"
    return text


def _without_literals(text: str) -> str:
    return re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)


def run_query(warehouse: Warehouse, sql: str) -> list[Row]:
    return warehouse.select(readonly_sql(sql))


def _day(value: Any, name: str) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError as err:
        raise QueryRefused(f"{name}: {value!r} is not a date (YYYY-MM-DD)") from err


def _period(params: dict[str, Any], max_days: int) -> tuple[date, date]:
    start = _day(params.get("from"), "from")
    end = _day(params.get("to", params.get("from")), "to")
    if end < start:
        raise QueryRefused("to is before from")
    if (end - start).days + 1 > max_days:
        raise QueryRefused(f"period of {(end - start).days + 1} days exceeds {max_days}")
    return start, end


def _device(params: dict[str, Any]) -> int:
    try:
        return int(params["device"])
    except (KeyError, TypeError, ValueError) as err:
        raise QueryRefused("device: a system id is required") from err


def receipts_report(
    warehouse: Warehouse, params: dict[str, Any], limits: ReportLimits
) -> list[Row]:
    """A device's receipts for one shift (`shift`) or a period (`from`, `to`); offline ones marked
    OFFLINE_MARK."""
    device = _device(params)
    where = f"device_id = {device}"
    if params.get("shift") is not None:
        where += f" AND shift_number = {int(params['shift'])}"
    else:
        start, end = _period(params, limits.one_device_days)
        where += f" AND document_time >= '{start}' AND document_time < '{end + timedelta(days=1)}'"
    rows = warehouse.select(
        "SELECT document_time AS time, shift_number AS shift, printed_number AS number,"
        " operation, total, fiscal_sign, offline"
        f" FROM {warehouse.database}.receipts WHERE {where}"
        f" ORDER BY document_time, printed_number LIMIT {MAX_RESULT_ROWS}"
    )
    out: list[Row] = []
    for row in rows:
        op = int(row.pop("operation"))
        row["operation"] = OPERATION_NAMES[op] if 0 <= op < len(OPERATION_NAMES) else str(op)
        row["total"] = f"{int(row['total']) / 100:.2f}"
        row["mark"] = OFFLINE_MARK if int(row.pop("offline")) else ""
        out.append(row)
    return out


def zx_report(warehouse: Warehouse, params: dict[str, Any], limits: ReportLimits) -> list[Row]:
    """A device's X and Z reports in a period: shift closes (with reconciliation) and REPORTs."""
    device = _device(params)
    start, end = _period(params, limits.one_device_days)
    db = warehouse.database
    after, before = f"'{start}'", f"'{end + timedelta(days=1)}'"
    return warehouse.select(
        "SELECT time, kind, shift, offline, reconciled, differences FROM ("
        " SELECT close_time AS time, 'Z' AS kind, shift_number AS shift, offline,"
        "  toString(reconciled) AS reconciled, arrayStringConcat(differences, '; ') AS differences"
        f"  FROM {db}.shifts WHERE device_id = {device}"
        f"  AND close_time >= {after} AND close_time < {before}"
        " UNION ALL"
        " SELECT report_time AS time, if(report_type = 0, 'Z (request)', 'X') AS kind,"
        "  shift_number AS shift, 0 AS offline, '' AS reconciled, '' AS differences"
        f"  FROM {db}.reports WHERE device_id = {device}"
        f"  AND report_time >= {after} AND report_time < {before}"
        ") ORDER BY time"
    )


def summary_report(warehouse: Warehouse, params: dict[str, Any], limits: ReportLimits) -> list[Row]:
    """Per device and day: receipts, offline ones, revenue. One device over up to
    `one_device_days`, or up to `many_devices` devices over up to `many_devices_days`."""
    raw = params.get("devices") or [params.get("device")]
    try:
        devices = sorted({int(d) for d in raw})
    except (TypeError, ValueError) as err:
        raise QueryRefused("devices: system ids are required") from err
    if len(devices) > limits.many_devices:
        raise QueryRefused(f"{len(devices)} devices exceed {limits.many_devices}")
    max_days = limits.one_device_days if len(devices) == 1 else limits.many_devices_days
    start, end = _period(params, max_days)
    listed = ",".join(map(str, devices))
    return warehouse.select(
        "SELECT device_id, day, sum(receipts) AS receipts,"
        " sum(offline_receipts) AS offline_receipts,"
        " toDecimal64(sum(revenue) / 100, 2) AS revenue"
        f" FROM {warehouse.database}.daily_device"
        f" WHERE device_id IN ({listed}) AND day BETWEEN '{start}' AND '{end}'"
        " GROUP BY device_id, day ORDER BY device_id, day"
    )


REPORTS = {"receipts": receipts_report, "zx": zx_report, "summary": summary_report}


def run_report(
    warehouse: Warehouse, name: str, params: dict[str, Any], limits: ReportLimits | None = None
) -> list[Row]:
    report = REPORTS.get(name)
    if report is None:
        raise QueryRefused(f"no report {name!r}; known: {', '.join(sorted(REPORTS))}")
    return report(warehouse, params, limits or ReportLimits())
