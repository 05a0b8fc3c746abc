"""Forwarding to the KGD: documents per second against a floor, and receipt-to-KGD delay p50/p99.

    python -m benchmarks.kgd_forwarding [--documents 20000] [--batch 500] [--seconds 10]
                                        [--rate 7600] [--out bench-results/kgd_forwarding.json]

- throughput: the Forwarder draining a local journal of receipts (read, decode, batch, POST to
  the simulated KGD, wait for its acknowledgements, write the position to PostgreSQL), against a
  floor measured in the same run: the same number of documents, built beforehand, POSTed by the
  same client in batches of the same size (the simulated KGD's raw rate, no journal);
- delay: a writer appends receipts to the journal at --rate per second (the gateway's measured
  benchmark rate, README) in 10 ms batches while the forwarder runs; per document, the KGD's
  acknowledgement minus its received_at; p50 and p99.

The simulated KGD (simulators/kgd.py) runs as a process of its own, as a real KGD would be
elsewhere; the forwarder and the writer run in this process, PostgreSQL is the embedded one in a
temporary directory. received_at is set when the writer appends, a few milliseconds after a
gateway would have received the document, so the delay is slightly under-stated by the group
commit's wait (ofd_commit_queue_seconds measures that).
"""

import argparse
import asyncio
import dataclasses
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from benchmarks.report import write_json
from benchmarks.warehouse import receipts
from ledger.embedded_pg import start_embedded_postgres
from ledger.journal import JournalEntry
from ledger.journal.local import LocalJournal
from ledger.kgd.forwarder import Forwarder, ForwarderSettings, document_of
from ledger.kgd.http import HttpKgd, KgdSettings
from ledger.migrate import migrate
from ledger.warehouse.loader import local_sources
from ofdproto.journal.v1.record_pb2 import JournalRecord
from simulators.stage.kgd import kgd_state, start_kgd
from simulators.stage.processes import stop

WRITE_INTERVAL = 0.01  # the delay writer appends a batch this often
SETTLE = 60.0  # seconds the forwarder gets to catch up after the writer stops


async def _drain(forwarder: Forwarder, total: int) -> None:
    forwarded = 0
    while forwarded < total:
        forwarded += await forwarder.step()


async def _throughput(root: Path, dsn: str, url: str, documents: int, batch: int) -> dict[str, Any]:
    journal = LocalJournal(root / "journal" / "bench")
    entries = list(receipts(0, documents))
    journal.append_sync(entries)
    journal._close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    client = HttpKgd(KgdSettings(url))
    try:
        forwarder = Forwarder(
            pool,
            client,
            lambda: local_sources(root / "journal"),
            ForwarderSettings(batch_documents=batch),
        )
        started = time.perf_counter()
        await _drain(forwarder, documents)
        forwarder_s = time.perf_counter() - started
        await forwarder.close()
        # Floor: the same documents, built beforehand under other identities, POSTed alone.
        built = [
            dataclasses.replace(document_of(e.payload), document_id=f"floor/{n}")
            for n, e in enumerate(entries)
        ]
        started = time.perf_counter()
        for i in range(0, len(built), batch):
            await client.forward_documents(built[i : i + batch])
        floor_s = time.perf_counter() - started
    finally:
        await client.close()
        await pool.close()
    return {
        "documents": documents,
        "batch": batch,
        "forwarder_documents_per_s": round(documents / forwarder_s),
        "floor_documents_per_s": round(documents / floor_s),
        "ratio_to_floor": round(floor_s / forwarder_s, 3),
    }


async def _delay(root: Path, dsn: str, url: str, seconds: float, rate: int) -> dict[str, Any]:
    journal = LocalJournal(root / "journal" / "live")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    client = HttpKgd(KgdSettings(url))
    forwarder = Forwarder(
        pool, client, lambda: local_sources(root / "journal"), ForwarderSettings()
    )
    forwarder.stats.keep_delays = True
    written = 0

    # Built beforehand (building a receipt costs more than journaling it): the writer only
    # stamps each record's receive time as it appends.
    per_batch = max(1, round(rate * WRITE_INTERVAL))
    batches = max(1, round(seconds / WRITE_INTERVAL))
    prepared = [
        JournalRecord.FromString(e.payload) for e in receipts(2_000_000, per_batch * batches)
    ]

    def write() -> None:
        nonlocal written
        deadline = time.monotonic() + seconds
        for i in range(0, len(prepared), per_batch):
            if time.monotonic() >= deadline:
                break
            now_us = time.time_ns() // 1000
            entries = []
            for record in prepared[i : i + per_batch]:
                record.received_at_us = now_us
                entries.append(JournalEntry(record.device_id, record.SerializeToString()))
            journal.append_sync(entries)
            written += len(entries)
            time.sleep(max(0.0, WRITE_INTERVAL - (time.time_ns() // 1000 - now_us) / 1e6))

    stop_event = asyncio.Event()
    running = asyncio.create_task(forwarder.run(stop_event), name="forwarder")
    writer = threading.Thread(target=write, name="writer")
    writer.start()
    try:
        await asyncio.to_thread(writer.join)
        settle = time.monotonic() + SETTLE
        # Polled: the figure to wait for is a list's length, bounded by SETTLE.
        while len(forwarder.stats.delays) < written and time.monotonic() < settle:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        stop_event.set()
        await running
        await client.close()
        await pool.close()
        journal._close()
    samples = sorted(forwarder.stats.delays)
    quantiles = statistics.quantiles(samples, n=100) if len(samples) > 1 else samples * 99
    return {
        "rate_per_s": rate,
        "achieved_rate_per_s": round(written / seconds),
        "documents": written,
        "forwarded": len(samples),
        "delay_p50_s": round(quantiles[49], 4),
        "delay_p99_s": round(quantiles[98], 4),
        "delay_max_s": round(samples[-1], 4) if samples else None,
    }


async def _run(args: argparse.Namespace, root: Path, url: str) -> dict[str, Any]:
    dsn = await asyncio.to_thread(start_embedded_postgres, root / "pg")
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    throughput = await _throughput(root / "t", dsn, url, args.documents, args.batch)
    print(json.dumps(throughput), flush=True)
    delay = await _delay(root / "d", dsn, url, args.seconds, args.rate)
    print(json.dumps(delay), flush=True)
    return {"throughput": throughput, "delay": delay}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.kgd_forwarding")
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=7_600, help="the gateway's benchmark rate")
    parser.add_argument("--out", type=Path, default=Path("bench-results/kgd_forwarding.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ofd-bench-kgd-") as tmp:
        root = Path(tmp)
        kgd, url = start_kgd(root / "kgd.log")
        try:
            results = uvloop.run(_run(args, root, url))
            results["kgd"] = kgd_state(url)
        finally:
            stop(kgd)
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
