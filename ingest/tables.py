"""Rows as a terminal table, CSV or JSON: the one formatter of the CLI's lists and queries.

A formatter of our own rather than rich or tabulate: left-aligned columns, a rule under the
header, long cells cut with an ellipsis, no colours, the same bytes on a terminal and in a pipe
(so tests compare it as text). CSV and JSON carry every cell whole.
"""

import csv
import io
import json
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

FORMATS = ("table", "csv", "json")
MAX_CELL = 60  # characters of a cell a table shows; csv and json show everything
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def render(
    rows: Sequence[dict[str, Any]],
    fmt: str,
    *,
    columns: Sequence[str] | None = None,
    empty: str = "(no rows)",
) -> str:
    """`rows` as `fmt`; `columns` (default: the first row's keys) picks and orders them."""
    if fmt == "json":
        return json.dumps(list(rows), ensure_ascii=False, default=str, indent=1)
    names = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _csv_cell(row.get(k)) for k in names} for row in rows)
        return out.getvalue().rstrip("\n")
    if not rows:
        return empty
    cells = [[_cell(row.get(c)) for c in names] for row in rows]
    widths = [max(_width(c), *(_width(r[i]) for r in cells)) for i, c in enumerate(names)]
    lines = ["  ".join(_pad(c, w) for c, w in zip(names, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(_pad(v, w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def render_record(record: dict[str, Any]) -> str:
    """One record as `key  value` lines (nested records as dotted keys)."""
    pairs = list(_flatten(record))
    width = max((_width(k) for k, _ in pairs), default=0)
    return "\n".join(f"{_pad(k, width)}  {_cell(v, limit=None)}".rstrip() for k, v in pairs)


def _flatten(record: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for key, value in record.items():
        if isinstance(value, dict) and value and prefix.count(".") < 1:
            pairs += _flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def _cell(value: Any, limit: int | None = MAX_CELL) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, list) and all(isinstance(v, str | int) for v in value):
        text = ",".join(map(str, value))  # ids, names: 1,2 (and nothing for none)
    elif isinstance(value, list | dict):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    text = " ".join(text.split())  # a newline in a cell would break the table's rows
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return "" if value is None else value


def _width(text: str) -> int:
    """Columns `text` takes on a terminal: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def iso_from_us(micros: int, *, seconds: bool = False) -> str | None:
    """Microseconds since the epoch as ISO 8601 in UTC (`Z`); 0 (never) as None."""
    if not micros:
        return None
    moment = EPOCH + timedelta(microseconds=micros)  # exact: no float on the way
    text = moment.isoformat(timespec="seconds" if seconds else "microseconds")
    return text.replace("+00:00", "Z")
