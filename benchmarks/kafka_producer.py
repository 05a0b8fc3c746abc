"""Producer throughput with acknowledgement: the Kafka journal against a real broker, beside floors.

    python -m benchmarks.kafka_producer [--seconds 1.5] [--out bench-results/kafka_producer.json]

| case                               | what one operation is                                       |
|------------------------------------|-------------------------------------------------------------|
| KafkaJournal.append (acks=all)     | the production journal (idempotent, lz4, linger 0): produce |
|                                    | the batch and wait until the broker acknowledged all of it  |
| floor: producer acks=0, flush      | a plain confluent-kafka producer on the same broker, lz4,   |
|                                    | no idempotence, acks=0: produce the batch, flush() it out   |
| floor: LocalJournal.append         | the embedded journal: one write and one fdatasync per batch |

Batches of 1, 64 and 1024 records, the envelopes the gateway journals (benchmarks.layers'
`journal_payloads`: a JournalRecord with a TICKET frame and its answer). Only the envelopes of
at least MIN_RECORD_BYTES are kept, the larger receipts of the load generator's 1-5 lines: about
670 bytes on average, near the 712-byte records ledger.journal.kafka's settings were tuned on
(all of the generator's receipts average 500). Each
case reports records per second and the latency of one append (a whole batch) at p50 and p99;
the Kafka journal's ratio is to the acks=0 producer of the same batch size.

The broker is one Apache Kafka node (KRaft, simulators.stage.kafka, its log in the benchmark's
scratch directory) started by the benchmark on a free port in simulators.stage.kafka.BENCH_PORTS
and always stopped before it returns; each case produces to a topic of its own with PARTITIONS
partitions, deleted afterwards. Broker and client share the machine, so the numbers include the
broker's CPU.
"""

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from benchmarks.bodies import build_pool
from benchmarks.layers import (
    Case,
    CaseResult,
    journal_payloads,
    table,
    time_each,
    time_each_async,
    with_ratios,
)
from benchmarks.report import finished_at, machine, write_json
from ledger.journal import JournalEntry
from ledger.journal.kafka import (
    ADMIN_TIMEOUT,
    DEFAULT_COMPRESSION,
    KafkaJournal,
    KafkaSettings,
    encode_key,
    ensure_topic,
)
from ledger.journal.local import LocalJournal
from simulators.stage.kafka import BENCH_PORTS, KAFKA_VERSION, KafkaCluster
from simulators.stage.processes import unwind_on_sigterm

DEFAULT_OUT = Path("bench-results/kafka_producer.json")
DEFAULT_SECONDS = 1.5  # per case; nine cases and a broker start stay well under a minute
BATCHES = (1, 64, 1024)
PARTITIONS = 4
VERSION = 203
MIN_RECORD_BYTES = 640
POOL_SIZE = 8192  # receipts generated to find max(BATCHES) of at least MIN_RECORD_BYTES
FLUSH_TIMEOUT = 10.0  # bounds one batch of the acks=0 floor
TEMP_ROOT = "/tmp"  # noqa: S108  # the same file system benchmarks.layers journals to
KAFKA_LAYER = "kafka append"
LOCAL_LAYER = "local journal"


# --- the broker ---


@contextlib.contextmanager
def kafka_broker(work_dir: Path) -> Iterator[str]:
    """One Kafka node on a free benchmark port, its files in `work_dir`; yields host:port and
    stops the node on the way out, whatever happened."""
    with KafkaCluster(work_dir, ports=BENCH_PORTS) as broker:
        yield broker.bootstrap


@contextlib.contextmanager
def scratch_topic(bootstrap: str, label: str) -> Iterator[KafkaSettings]:
    """A new topic for one case (production journal settings), deleted afterwards."""
    settings = KafkaSettings(bootstrap, topic=f"bench.{label}.{uuid.uuid4().hex[:8]}")
    ensure_topic(settings, PARTITIONS)
    try:
        yield settings
    finally:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        futures = admin.delete_topics([settings.topic], operation_timeout=ADMIN_TIMEOUT)
        with contextlib.suppress(KafkaException, TimeoutError):
            futures[settings.topic].result(ADMIN_TIMEOUT)


# --- the cases ---


def kafka_journal_case(bootstrap: str, chunk: Sequence[JournalEntry], seconds: float) -> CaseResult:
    case = Case(KAFKA_LAYER, "KafkaJournal.append (acks=all)", len(chunk))
    with scratch_topic(bootstrap, "journal") as settings:

        async def measure() -> CaseResult:
            journal = KafkaJournal(settings)
            try:

                async def append() -> float:
                    started = time.perf_counter_ns()
                    await journal.append(chunk)
                    return time.perf_counter_ns() - started

                return await time_each_async(case, append, seconds)
            finally:
                await journal.close()

        return asyncio.run(measure())


def producer_floor_case(
    bootstrap: str, chunk: Sequence[JournalEntry], seconds: float
) -> CaseResult:
    case = Case(KAFKA_LAYER, "producer acks=0, flush", len(chunk), floor=True)
    keyed = [(encode_key(entry.key), entry.payload) for entry in chunk]
    with scratch_topic(bootstrap, "floor") as settings:
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": "ofd-bench-floor",
                "acks": 0,
                "enable.idempotence": False,
                "compression.type": DEFAULT_COMPRESSION,
                "linger.ms": 0,
                "partitioner": "murmur2_random",
                "log_level": 0,
            }
        )
        topic = settings.topic

        def append() -> float:
            started = time.perf_counter_ns()
            for key, payload in keyed:
                producer.produce(topic, payload, key)
            left = producer.flush(FLUSH_TIMEOUT)
            elapsed = time.perf_counter_ns() - started
            if left:
                raise RuntimeError(f"acks=0 floor: {left} records not sent in {FLUSH_TIMEOUT} s")
            return elapsed

        try:
            return time_each(case, append, seconds)
        finally:
            producer.flush(FLUSH_TIMEOUT)


def local_journal_case(work_dir: Path, chunk: Sequence[JournalEntry], seconds: float) -> CaseResult:
    case = Case(LOCAL_LAYER, "LocalJournal.append (fdatasync)", len(chunk), floor=True)
    directory = work_dir / f"journal-{len(chunk)}-{uuid.uuid4().hex[:8]}"

    async def measure() -> CaseResult:
        journal = LocalJournal(directory)
        try:

            async def append() -> float:
                started = time.perf_counter_ns()
                await journal.append(chunk)
                return time.perf_counter_ns() - started

            return await time_each_async(case, append, seconds)
        finally:
            await journal.close()

    try:
        return asyncio.run(measure())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_cases(
    bootstrap: str, seconds: float, work_dir: Path, batches: Sequence[int] = BATCHES
) -> list[CaseResult]:
    """Every case against the broker at `bootstrap`; the Kafka journal's ratio is to the
    acks=0 producer of its batch size."""
    entries = records(max(batches))
    results: list[CaseResult] = []
    for batch in batches:
        chunk = entries[:batch]
        results.append(kafka_journal_case(bootstrap, chunk, seconds))
        results.append(producer_floor_case(bootstrap, chunk, seconds))
        results.append(local_journal_case(work_dir, chunk, seconds))
    return with_ratios(results)


def run(seconds: float) -> list[CaseResult]:
    work_dir = Path(tempfile.mkdtemp(prefix="ofdk-", dir=TEMP_ROOT))
    try:
        with kafka_broker(work_dir / "kafka") as bootstrap:
            return run_cases(bootstrap, seconds, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def records(count: int) -> list[JournalEntry]:
    """`count` journal envelopes of at least MIN_RECORD_BYTES, each with a key of its own."""
    entries = journal_payloads(build_pool(VERSION, size=POOL_SIZE), POOL_SIZE)
    large = [entry for entry in entries if len(entry.payload) >= MIN_RECORD_BYTES][:count]
    if len(large) < count:
        raise ValueError(f"only {len(large)} records of {MIN_RECORD_BYTES} bytes, {count} wanted")
    return large


def mean_record_bytes(entries: Sequence[JournalEntry]) -> float:
    return sum(len(entry.payload) for entry in entries) / len(entries)


def document(results: list[CaseResult], seconds: float) -> dict[str, Any]:
    return {
        "benchmark": "kafka_producer",
        "finished_at": finished_at(),
        "machine": machine(),
        "config": {
            "seconds_per_case": seconds,
            "batches": list(BATCHES),
            "partitions": PARTITIONS,
            "broker": f"Apache Kafka {KAFKA_VERSION}, one KRaft node, same machine",
            "journal": "KafkaJournal: acks=all, idempotent, lz4, linger 0",
            "floor": "confluent-kafka producer: acks=0, no idempotence, lz4, flush per batch",
            "min_record_bytes": MIN_RECORD_BYTES,
            "mean_record_bytes": round(mean_record_bytes(records(max(BATCHES))), 1),
            "protocol_version": VERSION,
        },
        "cases": [asdict(r) for r in results],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kafka_producer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="per case")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    # SystemExit unwinds through the finally blocks that stop the broker and remove temp files.
    unwind_on_sigterm()
    print(f"kafka_producer: {args.seconds:g} s per case", flush=True)
    results = run(args.seconds)
    print(table(results))
    write_json(args.out, document(results, args.seconds))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
