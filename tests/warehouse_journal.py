"""Journals of known documents for the warehouse tests, written without a gateway.

Records are built the way the gateway's pipeline builds them (the request frame re-encoded with
its header, the document identity from `ledger.fiscal`), so the loader reads what it would read
in production; the end-to-end test sends real traffic through a gateway instead.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from conftest import TEST_SECRET

from ingest.codec import encode
from ledger.fiscal import ticket_identity
from ledger.journal import JournalEntry
from ledger.journal.local import LocalJournal
from ledger.schemas import SCHEMAS
from ledger.warehouse.backends import Warehouse, open_warehouse
from ledger.warehouse.loader import Loader, local_sources
from ledger.warehouse.service import warehouse_dir
from ledger.wire import ENVELOPE_VERSION
from ofdproto.journal.v1.record_pb2 import JournalRecord
from simulators.receipts import Line, Operation, build_ticket

START = datetime(2026, 11, 2, 9, 0, 0)


@dataclass(frozen=True, slots=True)
class Sent:
    device_id: int
    document_id: str
    day: str
    revenue: int
    offline: bool


def receipt_record(
    device_id: int,
    number: int,
    *,
    version: int = 204,
    offline: bool = False,
    operation: Operation = Operation.SELL,
) -> tuple[JournalEntry, Sent]:
    schema = SCHEMAS[version]
    when = START + timedelta(hours=number)  # spreads receipts over days (and one month edge)
    price = 1000 + 137 * number
    request = build_ticket(
        schema,
        operation=operation,
        when=when,
        shift_number=1 + number // 24,
        document_number=number,
        lines=[Line("Нан", "1", 1000, price), Line("Сүт", "2", 2000, 550)],
        payment="card",
        offline_number=number if offline else None,
    )
    body = request.SerializeToString()
    identity = ticket_identity(
        device_id,
        shift_number=1 + number // 24,
        document_number=number,
        offline_number=0,
        token=7,
        request_number=number,
        secret=TEST_SECRET,
    )
    record = JournalRecord(
        envelope_version=ENVELOPE_VERSION,
        device_id=device_id,
        protocol_version=version,
        received_at_us=1_790_000_000_000_000 + number,
        gateway_id="gw-test",
        command=1,
        request_number=number,
        document_id=str(identity),
        fiscal_sign=str(10**9 + number),
        request_frame=encode(version, device_id, 0, number, body),  # as journaled: no token
        response_frame=b"",
    )
    total = price + 1100
    sign = 1 if operation in (Operation.SELL, Operation.BUY_RETURN) else -1
    sent = Sent(device_id, str(identity), when.date().isoformat(), sign * total, offline)
    return JournalEntry(device_id, record.SerializeToString()), sent


def write_journal(directory: Path, entries: list[JournalEntry], batch: int = 50) -> None:
    journal = LocalJournal(directory)
    try:
        for i in range(0, len(entries), batch):
            journal.append_sync(entries[i : i + batch])
    finally:
        journal._close()


def load_journals(warehouse: Warehouse, data_dir: Path) -> int:
    """Loads what is new in the journals of `data_dir` (as `ofd load --once`); how many."""
    return sum(Loader(warehouse, lambda: local_sources(data_dir / "journal")).drain())


@contextmanager
def loaded_warehouse(data_dir: Path) -> Iterator[Warehouse]:
    """The chDB warehouse of `data_dir`, where `ofd load` keeps it, with its journals loaded."""
    warehouse = open_warehouse(path=warehouse_dir(data_dir))
    try:
        load_journals(warehouse, data_dir)
        yield warehouse
    finally:
        warehouse.close()
