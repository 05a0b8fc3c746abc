"""`ofd load --once` says how far it is, and `ofd query` says when the journal holds documents the
warehouse has not loaded (an answer of 0 rows before the first load is no answer)."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

from warehouse_journal import receipt_record, write_journal

from ingest.progress import Progress
from ledger.journal import JournalEntry
from ofdproto.journal.v1.record_pb2 import JournalRecord

RECEIPTS = 30


def ofd(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_query_warns_until_the_journal_is_loaded_and_load_reports_progress(
    tmp_path: Path,
) -> None:
    entries = [receipt_record(100001, number)[0] for number in range(1, RECEIPTS + 1)]
    write_journal(tmp_path / "journal" / "gw1", entries)
    sql = "SELECT count() AS n FROM ofd.receipts"

    before = ofd("query", "--data-dir", str(tmp_path), sql)
    assert before.returncode == 0, before.stderr
    assert before.stdout.split() == ["n", "-", "0"]
    assert before.stderr == (
        f"warning: the journal holds {RECEIPTS} records the warehouse has not loaded yet: run"
        f" `ofd load --once --data-dir {tmp_path}`, or keep `ofd load` running\n"
    )

    loaded = ofd("load", "--once", "--data-dir", str(tmp_path), "--batch", "7")
    assert loaded.returncode == 0, loaded.stderr
    *logs, last = loaded.stderr.splitlines()
    assert last == f"loaded {RECEIPTS} documents"
    records = [json.loads(line) for line in logs]  # not a terminal: JSON lines, like the logs
    assert records[-1]["event"] == "load done"
    assert records[-1]["documents"] == RECEIPTS

    after = ofd("query", "--data-dir", str(tmp_path), sql)
    assert after.stdout.split() == ["n", "--", str(RECEIPTS)]
    assert after.stderr == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_and_in_a_log() -> None:
    now = [0.0]
    shown = Terminal()
    progress = Progress("load", "documents", shown, clock=lambda: now[0])
    for step in range(1, 4):
        now[0] = step * 1.0
        progress(step * 1000)
    progress.finish()
    assert shown.getvalue().split("\r")[1:] == [
        "load: 1,000 documents (1,000/s, 1 s)",
        "load: 2,000 documents (1,000/s, 2 s)",
        "load: 3,000 documents (1,000/s, 3 s)",
        "load: 3,000 documents (1,000/s, 3 s)\n",
    ]

    logged = io.StringIO()
    now[0] = 10.0
    progress = Progress("export", "rows", logged, clock=lambda: now[0])
    for step in range(10):
        now[0] = 10 + step * 0.5
        progress(step)
    progress.finish()
    lines = [json.loads(line) for line in logged.getvalue().splitlines()]
    assert [(r["event"], r["rows"]) for r in lines] == [
        ("export progress", 4),  # every 2 s
        ("export progress", 8),
        ("export done", 9),
    ]


def test_a_report_too_long_names_the_option_that_lifts_the_limit(tmp_path: Path) -> None:
    done = ofd("report", "summary", "--data-dir", str(tmp_path), "--device", "1", "--device",
               "2", "--from", "2026-11-01", "--to", "2026-11-30")  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == (
        "error: period of 30 days exceeds 7: ask for less, or lift the limit with"
        " --one-device-days (one device) or --many-devices-days (several) (on `ofd load` when it"
        " answers the queries)\n"
    )


def test_query_schema_gives_units_and_aggregation() -> None:
    done = ofd("query", "--schema")
    assert done.returncode == 0, done.stderr
    assert "money is in tiyn" in done.stdout
    assert "read them with sum(...) GROUP BY" in done.stdout
    tables = re.findall(r"CREATE (?:TABLE|VIEW) IF NOT EXISTS ofd\.(\w+)", done.stdout)
    assert {"documents", "receipts", "daily_device", "daily_trade_point"} <= set(tables)
    assert "MATERIALIZED VIEW" not in done.stdout


def test_reports_per_organization_and_trade_point(tmp_path: Path) -> None:
    """Receipts of two devices at two trade points of organization 7, one at another's."""
    entries = []
    for number in range(1, 25):  # one day: 09:00 to 08:00 the next, 24 receipts an hour apart
        device, point, organization = [(100001, 1, 7), (100002, 2, 7), (100003, 3, 8)][number % 3]
        entry, _ = receipt_record(device, number)
        record = JournalRecord.FromString(entry.payload)
        record.organization_id, record.trade_point_id = organization, point
        entries.append(JournalEntry(device, record.SerializeToString()))
    write_journal(tmp_path / "journal" / "gw1", entries)
    assert ofd("load", "--once", "--data-dir", str(tmp_path)).returncode == 0

    points = ofd("report", "points", "--data-dir", str(tmp_path), "--org", "7", "--from",
                 "2026-11-02", "--to", "2026-11-03", "--format", "json")  # fmt: skip
    assert points.returncode == 0, points.stderr
    rows = json.loads(points.stdout)
    assert {int(r["trade_point_id"]) for r in rows} == {1, 2}
    assert sum(int(r["receipts"]) for r in rows) == 16

    one = ofd("report", "points", "--data-dir", str(tmp_path), "--org", "7", "--point", "2",
              "--from", "2026-11-02", "--to", "2026-11-03", "--format", "json")  # fmt: skip
    assert {int(r["trade_point_id"]) for r in json.loads(one.stdout)} == {2}

    whole = ofd("report", "organization", "--data-dir", str(tmp_path), "--org", "7", "--from",
                "2026-11-02", "--to", "2026-11-03", "--format", "json")  # fmt: skip
    days = json.loads(whole.stdout)
    assert sum(int(r["receipts"]) for r in days) == 16
    assert {int(r["trade_points"]) for r in days} == {2}
