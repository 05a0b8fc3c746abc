"""`ofd load --once` says how far it is, and `ofd query` says when the journal holds documents the
warehouse has not loaded (an answer of 0 rows before the first load is no answer)."""

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from warehouse_journal import receipt_record, write_journal

from ingest.progress import Progress
from ledger.journal import JournalEntry
from ledger.warehouse.service import service_address
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


def test_export_streams_past_the_row_cap(tmp_path: Path) -> None:
    """Through a running `ofd load` whose queries may answer 10 rows: a query of 200,000 rows is
    refused, its export is written whole (several blocks: one header); a write is refused."""
    big = "SELECT number AS n, toString(number) AS s FROM numbers(200000)"
    direct = tmp_path / "direct.csv"
    done = ofd("export", "--data-dir", str(tmp_path), big, "-o", str(direct))
    assert done.returncode == 0, done.stderr
    lines = direct.read_text().splitlines()
    assert lines[0] == '"n","s"'
    assert len(lines) == 200_001
    assert lines[-1] == '199999,"199999"'

    loader = subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "load", "--data-dir", str(tmp_path),
         "--query-max-rows", "10"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while service_address(tmp_path) is None:
            assert loader.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.1)
        capped = ofd("query", "--data-dir", str(tmp_path), big)
        assert capped.returncode == 1
        served = tmp_path / "served.csv"
        done = ofd("export", "--data-dir", str(tmp_path), big, "-o", str(served))
        assert done.returncode == 0, done.stderr
        assert served.read_bytes() == direct.read_bytes()
        assert (
            done.stderr.splitlines()[-1]
            == f"exported {direct.stat().st_size:,} bytes of CSV to {served}"
        )
        refused = ofd("export", "--data-dir", str(tmp_path), "DROP TABLE ofd.receipts", "-o",
                      str(tmp_path / "no.csv"))  # fmt: skip
        assert refused.returncode == 1
        assert list(tmp_path.glob("no.csv*")) == []  # nothing half-written left behind
        assert refused.stderr == (
            "error: only reading queries (SELECT, SHOW, DESCRIBE, EXISTS, EXPLAIN); got DropQuery\n"
        )
    finally:
        loader.terminate()
        loader.wait(60)
