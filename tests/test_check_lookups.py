"""The public check's gathered reads (cabinet/check_lookups.py over
reports.receipt_checks_report), on chDB: checks waiting together are read in one engine call,
each handed its own receipt or nothing (a tampered one beside a real one learns nothing of it),
batches bounded, and a failing warehouse fails each check of its batch."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from warehouse_journal import loaded_warehouse, receipt_record, write_journal

from cabinet.check_lookups import CheckLookups
from cabinet.warehouse import Documents, WarehouseUnavailable
from ledger.warehouse.backends import QueryLimits, Row, Warehouse
from ledger.warehouse.reports import MAX_CHECKS, QueryRefused, run_report

DB = "ofd"
RECEIPTS = 12


class CountedReader:
    """An analyst's reader counting its engine calls, the first `failing` of them failing."""

    def __init__(self, warehouse: Warehouse, *, failing: int = 0) -> None:
        self._analyst = warehouse.analyst(QueryLimits())
        self.database = self._analyst.database
        self.calls = 0
        self._failing = failing

    def select(self, sql: str) -> list[Row]:
        self.calls += 1
        if self.calls <= self._failing:
            raise RuntimeError("the engine stopped")
        return self._analyst.select(sql)


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    journal = tmp_path / "journal" / "gw-a"
    write_journal(journal, [receipt_record(100 + n % 3, n)[0] for n in range(1, RECEIPTS)])
    with loaded_warehouse(tmp_path) as opened:
        yield opened


def _printed(warehouse: Warehouse) -> list[dict[str, Any]]:
    rows = warehouse.select(
        "SELECT device_id AS device, fiscal_sign AS sign, total,"
        f" toUnixTimestamp(document_time) AS time FROM {DB}.receipts ORDER BY fiscal_sign"
    )
    return [{key: row[key] if key == "sign" else int(row[key]) for key in row} for row in rows]


@contextlib.asynccontextmanager
async def _reading(lookups: CheckLookups) -> AsyncIterator[None]:
    task = asyncio.create_task(lookups.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _waiting(lookups: CheckLookups, checks: list[dict[str, Any]]) -> list[asyncio.Task[Any]]:
    """The checks queued, none read yet (no reader runs)."""
    tasks = [asyncio.create_task(lookups.receipt(check)) for check in checks]
    await asyncio.sleep(0)
    return tasks


async def test_checks_waiting_together_are_one_read_each_answered_alone(
    warehouse: Warehouse,
) -> None:
    reader = CountedReader(warehouse)
    lookups = CheckLookups(Documents(reader, 4))
    printed = _printed(warehouse)[:5]
    tampered = [{**check, "total": check["total"] + 1} for check in printed]
    tasks = await _waiting(
        lookups, [c for pair in zip(printed, tampered, strict=True) for c in pair]
    )
    async with _reading(lookups):
        answers = await asyncio.gather(*tasks)
    assert reader.calls == 1
    for n, check in enumerate(printed):
        mine, near = answers[2 * n], answers[2 * n + 1]
        assert [(r["fiscal_sign"], r["total"]) for r in mine] == [(check["sign"], check["total"])]
        assert near == []  # beside its real receipt in the same read, and told nothing of it


async def test_batches_are_bounded(warehouse: Warehouse) -> None:
    reader = CountedReader(warehouse)
    lookups = CheckLookups(Documents(reader, 4), max_batch=2)
    printed = _printed(warehouse)[:5]
    tasks = await _waiting(lookups, printed)
    async with _reading(lookups):
        answers = await asyncio.gather(*tasks)
    assert reader.calls == 3
    assert all(len(answer) == 1 for answer in answers)


async def test_a_failing_warehouse_fails_each_check_of_its_batch(warehouse: Warehouse) -> None:
    lookups = CheckLookups(Documents(CountedReader(warehouse, failing=1), 4))
    printed = _printed(warehouse)
    tasks = await _waiting(lookups, printed[:3])
    async with _reading(lookups):
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(answer, WarehouseUnavailable) for answer in answers)
        assert len(await lookups.receipt(printed[0])) == 1  # the next batch is read again


def test_the_batched_report_is_bounded_and_checks_every_key(warehouse: Warehouse) -> None:
    analyst = warehouse.analyst(QueryLimits())
    printed = _printed(warehouse)[0]
    for checks in ([], [printed] * (MAX_CHECKS + 1), "1' OR '1", [{**printed, "sign": "1' OR '1"}]):
        with pytest.raises(QueryRefused):
            run_report(analyst, "receipt_checks", {"checks": checks})
