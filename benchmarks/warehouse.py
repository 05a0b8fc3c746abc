"""The warehouse loader: rows per second against a plain-insert floor, and freshness p50/p99.

    python -m benchmarks.warehouse [--documents 20000] [--batch 5000] [--seconds 5]
                                   [--rate 2000] [--out bench-results/warehouse.json]

| case       | measured                                              | floor (same run, same rows) |
|------------|-------------------------------------------------------|-----------------------------|
| throughput | Loader.drain over a local journal of receipts: read,  | the same rows, already      |
|            | decode, identity check, INSERT into `documents` (and  | decoded, inserted into a    |
|            | its materialized views), position write               | plain MergeTree, no views   |
| freshness  | a writer appends receipts to the journal at --rate    |                             |
|            | per second in 10 ms batches while the loader runs     |                             |
|            | (default poll interval); per document: visible in     |                             |
|            | chDB minus received_at_us (set at append time)        |                             |

Everything runs in this process on chDB in a temporary directory (the embedded default); the
receipts are the simulators' (two lines, VAT, card payment), spread over 32 devices.
"""

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.report import write_json
from ingest.codec import encode
from ledger.journal import JournalEntry
from ledger.journal.local import LocalJournal
from ledger.schemas import SCHEMAS
from ledger.warehouse.backends import ChdbWarehouse, apply_schema
from ledger.warehouse.loader import Loader, LoaderSettings, local_sources
from ledger.warehouse.rows import decode_record, document_row
from ledger.wire import ENVELOPE_VERSION
from ofdproto.journal.v1.record_pb2 import JournalRecord
from simulators.receipts import Line, build_ticket

DEVICES = 32
VERSION = 204
DAY0 = datetime(2026, 11, 2, 8, 0, 0)
WRITE_INTERVAL = 0.01  # the freshness writer appends a batch this often


def receipts(start: int, count: int, *, now_us: int | None = None) -> Iterator[JournalEntry]:
    schema = SCHEMAS[VERSION]
    for number in range(start, start + count):
        device = 200_000 + number % DEVICES
        request = build_ticket(
            schema,
            when=DAY0 + timedelta(seconds=number),
            shift_number=1,
            document_number=number,
            lines=[Line("Нан", "1", 1000, 1000 + number % 997), Line("Сүт", "2", 2000, 550)],
            payment="card",
        )
        record = JournalRecord(
            envelope_version=ENVELOPE_VERSION,
            device_id=device,
            protocol_version=VERSION,
            received_at_us=now_us if now_us is not None else time.time_ns() // 1000,
            gateway_id="bench",
            command=1,
            request_number=number % 65535,
            document_id=f"{device}/s1/d{number}",
            fiscal_sign=str(10**9 + number),
            request_frame=encode(VERSION, device, 0, number % 65535, request.SerializeToString()),
        )
        yield JournalEntry(device, record.SerializeToString())


def _throughput(root: Path, documents: int, batch: int) -> dict[str, Any]:
    journal_dir = root / "journal" / "bench"
    journal = LocalJournal(journal_dir)
    entries = list(receipts(0, documents, now_us=0))
    journal.append_sync(entries)
    journal._close()
    warehouse = ChdbWarehouse(root / "warehouse")
    try:
        apply_schema(warehouse)
        loader = Loader(
            warehouse, lambda: local_sources(root / "journal"), LoaderSettings(batch_records=batch)
        )
        started = time.perf_counter()
        loaded = sum(loader.drain())
        loader_s = time.perf_counter() - started
        assert loaded == documents, loaded
        # Floor: the same rows, decoded beforehand, into a table without views or checks.
        rows = [document_row(decode_record(e.payload), 0) for e in entries]
        warehouse.execute(
            "CREATE TABLE ofd.floor AS ofd.documents ENGINE = MergeTree"
            " PARTITION BY toYYYYMM(document_time) ORDER BY (device_id, document_time, document_id)"
        )
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            warehouse.insert("floor", rows[i : i + batch], token=f"floor-{i}")
        floor_s = time.perf_counter() - started
    finally:
        warehouse.close()
    return {
        "documents": documents,
        "batch": batch,
        "loader_rows_per_s": round(documents / loader_s),
        "floor_rows_per_s": round(documents / floor_s),
        "ratio_to_floor": round(floor_s / loader_s, 3),
    }


def _freshness(root: Path, seconds: float, rate: int) -> dict[str, Any]:
    journal = LocalJournal(root / "journal" / "live")
    warehouse = ChdbWarehouse(root / "warehouse")
    stop = threading.Event()
    try:
        apply_schema(warehouse)
        loader = Loader(warehouse, lambda: local_sources(root / "journal"))
        thread = threading.Thread(target=loader.run, args=(stop,), name="loader")
        thread.start()
        per_batch = max(1, round(rate * WRITE_INTERVAL))
        number, deadline = 1_000_000, time.monotonic() + seconds
        while time.monotonic() < deadline:
            journal.append_sync(list(receipts(number, per_batch)))
            number += per_batch
            time.sleep(WRITE_INTERVAL)
        written = number - 1_000_000
        settle = time.monotonic() + 30
        while loader.loaded < written and time.monotonic() < settle:
            time.sleep(0.05)
        stop.set()
        thread.join()
    finally:
        journal._close()
        warehouse.close()
    samples = sorted(loader.freshness)
    quantiles = statistics.quantiles(samples, n=100) if len(samples) > 1 else samples * 99
    return {
        "rate_per_s": rate,
        "achieved_rate_per_s": round(written / seconds),
        "documents": written,
        "loaded": loader.loaded,
        "freshness_p50_s": round(quantiles[49], 4),
        "freshness_p99_s": round(quantiles[98], 4),
        "freshness_max_s": round(samples[-1], 4) if samples else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.warehouse")
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=Path("bench-results/warehouse.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ofd-bench-wh-") as tmp:
        root = Path(tmp)
        throughput = _throughput(root / "t", args.documents, args.batch)
        print(json.dumps(throughput))
        shutil.rmtree(root / "t")
        freshness = _freshness(root / "f", args.seconds, args.rate)
        print(json.dumps(freshness))
    write_json(args.out, {"throughput": throughput, "freshness": freshness})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
