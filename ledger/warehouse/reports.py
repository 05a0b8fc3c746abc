"""Analysts' reads: SQL under the engine's restrictions, and the named reports of an operator's
cabinet.

Who enforces what for an analyst's SQL (tests/test_query_boundary.py probes each):
- The engine's session settings (backends.QueryLimits.settings, set when the session opens):
  readonly=1 refuses INSERT, DDL (CREATE, DROP, ATTACH...), OPTIMIZE, SET and SETTINGS (so the
  limits and readonly itself stay), and every table function that reaches files, URLs, other
  servers or processes (file, url, s3, remote, mysql, postgresql, executable, python...);
  max_execution_time, max_memory_usage and max_result_rows/bytes cut a query at its limit.
- The engine's own parser, asked before the query runs (`analyst_statement`):
  formatQuerySingleLine refuses more than one statement ("Multi-statements are not allowed")
  and yields the one statement without its comments; that canonical text is what runs, so a
  comment or a quote in one cannot change what was checked. EXPLAIN AST then shows the
  statement's tree, and the rules the settings do not cover are checked on it:
  - its kind: SELECT, SHOW, DESCRIBE, EXISTS or EXPLAIN of a SELECT. chDB runs KILL QUERY and
    SYSTEM STOP MERGES under readonly=1 (measured), so kinds are allowed, not forbidden.
  - INTO OUTFILE (a Literal right under the statement): chDB writes the file itself, on the
    client side of the engine, whatever readonly says (measured).
  - the functions: the scalar file() reads any path in chDB under readonly=1 (clickhouse-local
    does not confine it to user_files_path; measured), and every table function of the engine
    but a few generators is refused by name here too, before readonly refuses it at execution:
    sqlite() creates its file before the readonly check (measured).
  - no SETTINGS in a subquery (readonly=1 refuses one on the statement itself).
Named reports take typed parameters and bound ranges, and run through the same restricted
reader; their limits are settings, not constants in SQL.
"""

import json
import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from ledger.errors import OfdError
from ledger.warehouse.backends import Analyst, Reader, Row

MAX_SQL_CHARS = 100_000
MAX_RESULT_ROWS = 100_000  # a report's rows; an analyst's SQL has QueryLimits.max_rows
MAX_CHECKS = 64  # public checks answered by one engine call
OFFLINE_MARK = "А"  # Cyrillic A: how a cabinet marks a receipt sent offline
OPERATION_NAMES = ("BUY", "BUY_RETURN", "SELL", "SELL_RETURN")
FISCAL_SIGN = re.compile(r"[0-9]{1,20}")  # digits only: safe to quote into SQL as it is
# A REPORT's kind as every list of X/Z reports names it (a closed shift's Z is 'Z').
REPORT_KIND = "if(report_type = 0, 'Z (request)', 'X')"
# Statement kinds as EXPLAIN AST names them (its first line's first word).
READING_STATEMENTS = frozenset(
    {"SelectWithUnionQuery", "ShowTables", "ShowColumns", "DescribeQuery", "Explain"}
)
READING_PREFIXES = ("ShowCreate", "Exists")  # ShowCreateTableQuery, ExistsTableQuery, ...
# Table functions that only generate rows or read the warehouse's own tables; every other one
# the engine knows (system.table_functions) is refused. Compared in lower case.
GENERATORS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateseries", "primes",
     "values", "null", "view", "merge", "generaterandom", "sqlstandardvalues", "format"}
)  # fmt: skip
SCALAR_FUNCTIONS_REFUSED = frozenset({"file"})  # reads any path in chDB, readonly or not


class QueryRefused(OfdError):
    """The SQL is not a single reading statement, or a report's parameters are out of bounds."""


@dataclass(frozen=True, slots=True)
class ReportLimits:
    one_device_days: int = 31
    many_devices: int = 20
    many_devices_days: int = 7


def _reading(kind: str) -> bool:
    return kind in READING_STATEMENTS or kind.startswith(READING_PREFIXES)


def _table_functions(analyst: Analyst) -> frozenset[str]:
    rows = analyst.select("SELECT name FROM system.table_functions", answer_limits=False)
    return frozenset(str(r["name"]).lower() for r in rows) - GENERATORS


def analyst_statement(analyst: Analyst, sql: str) -> str:
    """The one statement `sql` holds, as the engine writes it back (comments gone), once the
    engine's parser shows it is a reading one; QueryRefused otherwise."""
    if not sql.strip():
        raise QueryRefused("empty query")
    if len(sql) > MAX_SQL_CHARS:
        raise QueryRefused(f"query longer than {MAX_SQL_CHARS} characters")
    try:
        # The SQL travels as a bound parameter: it is a value here, never text of this query.
        rows = analyst.select(
            "SELECT formatQuerySingleLine({sql:String}) AS statement",
            {"sql": sql},
            answer_limits=False,
        )
    except Exception as err:  # the engine's parser: a syntax error or several statements
        raise QueryRefused(_engine_message(err)) from err
    statement = str(rows[0]["statement"])
    try:
        # One statement as the engine wrote it: EXPLAIN AST parses it again and dumps its tree
        # (a SETTINGS clause is refused here already: readonly=1 forbids changing a setting).
        explained = analyst.select(f"EXPLAIN AST {statement}", answer_limits=False)
    except Exception as err:
        raise QueryRefused(_engine_message(err)) from err
    tree = [str(r["explain"]) for r in explained]
    if not tree:
        raise QueryRefused("the engine returned no syntax tree for the query")
    kind = tree[0].split()[0]
    if not _reading(kind):
        raise QueryRefused(
            f"only reading queries (SELECT, SHOW, DESCRIBE, EXISTS, EXPLAIN); got {kind}"
        )
    if kind == "Explain" and (len(tree) < 2 or tree[1].split()[0] != "SelectWithUnionQuery"):
        raise QueryRefused("EXPLAIN explains a SELECT only")
    refused_tables = _table_functions(analyst)
    for line in tree[1:]:
        depth = len(line) - len(line.lstrip(" "))
        words = line.split()
        if depth == 1 and words[0] == "Literal":
            raise QueryRefused("INTO OUTFILE is not allowed")
        if depth == 1 and words[0] == "Identifier" and kind in ("SelectWithUnionQuery", "Explain"):
            raise QueryRefused("FORMAT is not allowed: the client chooses the output format")
        if words[0] == "Set":
            # A subquery's SETTINGS: chDB ignores it (measured: readonly, time and memory held),
            # an engine that applied one would meet readonly=1; refused here in plain words.
            raise QueryRefused("SETTINGS is not allowed: the service sets the query's limits")
        if words[0] == "Function" and len(words) > 1:
            name = words[1].lower()
            if name in SCALAR_FUNCTIONS_REFUSED or name in refused_tables:
                raise QueryRefused(f"function {words[1]}() is not allowed: it reaches outside")
    return statement


def _engine_message(err: Exception) -> str:
    """ClickHouse's message without its stack trace and the echo of the wrapping query."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split(": In scope SELECT formatQuerySingleLine(")[0]


def run_query(analyst: Analyst, sql: str) -> list[Row]:
    """An analyst's SQL: checked by the engine's parser, run under the engine's restrictions."""
    return analyst.select(analyst_statement(analyst, sql))


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


def receipts_report(warehouse: Reader, params: dict[str, Any], limits: ReportLimits) -> list[Row]:
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


def zx_report(warehouse: Reader, params: dict[str, Any], limits: ReportLimits) -> list[Row]:
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
        f" SELECT report_time AS time, {REPORT_KIND} AS kind,"
        "  shift_number AS shift, 0 AS offline, '' AS reconciled, '' AS differences"
        f"  FROM {db}.reports WHERE device_id = {device}"
        f"  AND report_time >= {after} AND report_time < {before}"
        ") ORDER BY time"
    )


def summary_report(warehouse: Reader, params: dict[str, Any], limits: ReportLimits) -> list[Row]:
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


def _organization(params: dict[str, Any]) -> int:
    try:
        return int(params["organization"])
    except (KeyError, TypeError, ValueError) as err:
        raise QueryRefused("organization: an organization id is required") from err


def points_report(warehouse: Reader, params: dict[str, Any], limits: ReportLimits) -> list[Row]:
    """Per trade point and day, of one organization (all its points, or those in `points`):
    receipts, offline ones, revenue and sales, over up to `one_device_days`. A device counts
    where it stood when each receipt arrived (daily_trade_point)."""
    organization = _organization(params)
    start, end = _period(params, limits.one_device_days)
    try:
        points = sorted({int(p) for p in params.get("points") or []})
    except (TypeError, ValueError) as err:
        raise QueryRefused("points: trade point ids are numbers") from err
    only = f" AND trade_point_id IN ({','.join(map(str, points))})" if points else ""
    return warehouse.select(
        "SELECT trade_point_id, day, sum(receipts) AS receipts,"
        " sum(offline_receipts) AS offline_receipts,"
        " toDecimal64(sum(revenue) / 100, 2) AS revenue, toDecimal64(sum(sales) / 100, 2) AS sales"
        f" FROM {warehouse.database}.daily_trade_point"
        f" WHERE organization_id = {organization}{only} AND day BETWEEN '{start}' AND '{end}'"
        " GROUP BY trade_point_id, day ORDER BY trade_point_id, day"
    )


def organization_report(
    warehouse: Reader, params: dict[str, Any], limits: ReportLimits
) -> list[Row]:
    """Per day, one organization's receipts, offline ones, revenue and sales, all its trade
    points together, over up to `one_device_days`."""
    organization = _organization(params)
    start, end = _period(params, limits.one_device_days)
    return warehouse.select(
        "SELECT day, uniqExact(trade_point_id) AS trade_points, sum(receipts) AS receipts,"
        " sum(offline_receipts) AS offline_receipts,"
        " toDecimal64(sum(revenue) / 100, 2) AS revenue, toDecimal64(sum(sales) / 100, 2) AS sales"
        f" FROM {warehouse.database}.daily_trade_point"
        f" WHERE organization_id = {organization} AND day BETWEEN '{start}' AND '{end}'"
        " GROUP BY day ORDER BY day"
    )


def _whole(params: dict[str, Any], name: str) -> int:
    try:
        return int(params[name])
    except (KeyError, TypeError, ValueError) as err:
        raise QueryRefused(f"{name}: a whole number is required") from err


def check_key(params: dict[str, Any]) -> str:
    """The key receipt_checks holds for what a QR code names: device `device`, sign `sign`,
    total `total` (tiyn) and time `time` (the device's wall clock as Unix seconds)."""
    sign = str(params.get("sign", ""))
    if not FISCAL_SIGN.fullmatch(sign):
        raise QueryRefused("sign: digits only")
    return f"{_whole(params, 'device')}:{sign}:{_whole(params, 'total')}:{_whole(params, 'time')}"


def receipt_checks_report(
    warehouse: Reader,
    params: dict[str, Any],
    limits: ReportLimits,  # noqa: ARG001 (MAX_CHECKS rows at most)
) -> list[Row]:
    """Several checks in one engine call (`checks`: up to MAX_CHECKS of receipt_check_report's
    parameters): a row for each that matches, its `key` (check_key) and its `receipt`. The
    engine's cost per query dwarfs a point read's, and the cabinet gathers the checks that
    arrive together; each caller is handed the row of its own key only."""
    checks = params.get("checks")
    if not isinstance(checks, list) or not 1 <= len(checks) <= MAX_CHECKS:
        raise QueryRefused(f"checks: a list of 1 to {MAX_CHECKS}")
    # Digits and colons only (check_key): safe to quote into SQL as they are.
    keys = ",".join(f"'{check_key(check)}'" for check in checks)
    rows = warehouse.select(
        f"SELECT check_key, receipt FROM {warehouse.database}.receipt_checks"
        f" WHERE check_key IN ({keys}) LIMIT 1 BY check_key"
    )
    return [{"key": row["check_key"], "receipt": json.loads(row["receipt"])} for row in rows]


def receipt_check_report(
    warehouse: Reader, params: dict[str, Any], limits: ReportLimits
) -> list[Row]:
    """The receipt whose QR code names exactly `params` (check_key), as the object
    receipt_checks holds; no row when nothing matches. One point read on receipt_checks."""
    return [
        row["receipt"] for row in receipt_checks_report(warehouse, {"checks": [params]}, limits)
    ]


# Reports that read a few rows by their key: one engine thread each, as more would only be
# started to read a granule or two (measured: a batch of 8 to 16 checks took a third less CPU).
KEY_READS = frozenset({"receipt_check", "receipt_checks"})
REPORTS = {
    "receipts": receipts_report,
    "zx": zx_report,
    "summary": summary_report,
    "points": points_report,
    "organization": organization_report,
    "receipt_check": receipt_check_report,
    "receipt_checks": receipt_checks_report,
}


def run_report(
    warehouse: Reader, name: str, params: dict[str, Any], limits: ReportLimits | None = None
) -> list[Row]:
    report = REPORTS.get(name)
    if report is None:
        raise QueryRefused(f"no report {name!r}; known: {', '.join(sorted(REPORTS))}")
    return report(warehouse, params, limits or ReportLimits())
