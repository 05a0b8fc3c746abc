"""The public check's lookup (receipt_checks, reports.receipt_check_report): one point read by
what a QR code names, filled by the loader's insert, backfilled for a warehouse that held
receipts before the table existed, and answered by `ofd load`'s query service as a named report
(one engine call, no SQL to vet), all on chDB."""

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from warehouse_journal import loaded_warehouse, receipt_record, write_journal

from cabinet.warehouse import ServiceReader, named_report
from ledger.warehouse.backends import QueryLimits, Warehouse, apply_schema
from ledger.warehouse.cabinet_reads import checked_receipt
from ledger.warehouse.reports import QueryRefused, run_report
from ledger.warehouse.service import ServiceSettings, run_service, service_address

DB = "ofd"
RECEIPTS = 30
SERVICE_WAIT = 60.0  # seconds the service may take to start and load (a bound, not a timing)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    entries = [receipt_record(100 + n % 3, n, offline=n % 5 == 0)[0] for n in range(1, RECEIPTS)]
    entries.append(entries[3])  # journaled twice (answered 254, then resent): one receipt
    write_journal(directory / "journal" / "gw-a", entries)
    return directory


@pytest.fixture
def warehouse(data_dir: Path) -> Iterator[Warehouse]:
    with loaded_warehouse(data_dir) as wh:
        yield wh


def _printed(warehouse: Warehouse, number: int) -> dict[str, Any]:
    """What the QR code of the `number`-th receipt names, as the check's parameters."""
    row = warehouse.select(
        "SELECT device_id AS device, fiscal_sign AS sign, total,"
        f" toUnixTimestamp(document_time) AS time FROM {DB}.documents"
        f" WHERE command = 1 AND fiscal_sign = '{10**9 + number}'"
    )[0]
    return {key: row[key] if key == "sign" else int(row[key]) for key in row}


def _lookups(warehouse: Warehouse) -> int:
    return int(warehouse.select(f"SELECT count() AS n FROM {DB}.receipt_checks FINAL")[0]["n"])


def test_the_check_finds_the_printed_receipt_and_nothing_near_it(warehouse: Warehouse) -> None:
    analyst = warehouse.analyst(QueryLimits())
    printed = _printed(warehouse, 5)
    receipt = checked_receipt(run_report(analyst, "receipt_check", printed))
    assert receipt is not None
    assert (receipt.device_id, receipt.fiscal_sign, receipt.total) == (
        printed["device"], printed["sign"], printed["total"],
    )  # fmt: skip
    assert [line.name for line in receipt.lines] == ["Нан", "Сүт"]
    assert receipt.payments
    assert receipt.taxes
    assert receipt.mark == "А"  # the fifth was sent offline
    near = [{"total": printed["total"] + 1}, {"time": printed["time"] - 1},
            {"sign": str(int(printed["sign"]) + 1)}, {"device": printed["device"] + 1}]  # fmt: skip
    for tampered in near:
        assert run_report(analyst, "receipt_check", {**printed, **tampered}) == [], tampered
    for bad in ({"sign": "1' OR '1"}, {"total": "1 OR 1"}, {"device": None}):
        with pytest.raises(QueryRefused):
            run_report(analyst, "receipt_check", {**printed, **bad})
    # The resent receipt is one lookup row, as it is one receipt.
    assert _lookups(warehouse) == RECEIPTS - 1


def test_a_warehouse_from_before_the_lookup_is_filled_once_on_start(warehouse: Warehouse) -> None:
    analyst = warehouse.analyst(QueryLimits())
    printed = _printed(warehouse, 7)
    warehouse.execute(f"TRUNCATE TABLE {DB}.receipt_checks")  # as a warehouse made before it
    assert run_report(analyst, "receipt_check", printed) == []
    apply_schema(warehouse)
    assert checked_receipt(run_report(analyst, "receipt_check", printed)) is not None
    assert _lookups(warehouse) == RECEIPTS - 1
    apply_schema(warehouse)  # every start runs it: a filled table is left as it is
    assert int(warehouse.select(f"SELECT count() AS n FROM {DB}.receipt_checks")[0]["n"]) == (
        RECEIPTS - 1
    )


def test_the_query_service_answers_the_check_as_a_named_report(data_dir: Path) -> None:
    stop = threading.Event()
    service = threading.Thread(
        target=run_service, args=(ServiceSettings(data_dir=data_dir), stop), name="service"
    )
    service.start()
    try:
        reader = ServiceReader(data_dir)
        deadline = time.monotonic() + SERVICE_WAIT
        while service_address(data_dir) is None:
            assert time.monotonic() < deadline
            assert service.is_alive()
            time.sleep(0.05)
        # Both tables read below: a load's views fill their tables one after another, so one
        # holding every receipt says nothing of the other.
        for table in ("receipt_checks", "receipts"):
            count = f"SELECT count() AS n FROM {DB}.{table}"
            while int(reader.select(count)[0]["n"]) < RECEIPTS - 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        sign = str(10**9 + 9)
        row = reader.select(
            "SELECT device_id, total, toUnixTimestamp(document_time) AS time"
            f" FROM {DB}.receipts WHERE fiscal_sign = '{sign}'"
        )[0]
        printed: dict[str, Any] = {
            "device": int(row["device_id"]),
            "sign": sign,
            "total": int(row["total"]),
            "time": int(row["time"]),
        }
        receipt = checked_receipt(named_report(reader, "receipt_check", printed))
        assert receipt is not None
        assert receipt.fiscal_sign == sign
        tampered = {**printed, "total": printed["total"] - 1}
        assert named_report(reader, "receipt_check", tampered) == []
    finally:
        stop.set()
        service.join(SERVICE_WAIT)
