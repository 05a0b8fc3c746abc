"""Per-layer microbenchmarks of the ingest path, each beside a floor measured in the same run.

    python -m benchmarks.layers [--seconds 0.5] [--pg-server URL] [--out bench-results/layers.json]

| layer          | measured                                        | floor (same inputs)        |
|----------------|-------------------------------------------------|----------------------------|
| codec          | FrameDecoder feed + frames() of a request frame, | slicing the frame into     |
|                | then encode() of its answer                      | header and body, joining   |
|                |                                                  | the answer header and body |
| validation     | parse_request (parse, required fields) +         | parse_request alone        |
|                | ledger.ticket_checks.check_ticket                |                            |
| journal append | LocalJournal.append_sync of 1, 16 or 256         | the same records written   |
|                | records: one write and one fdatasync per batch   | to a buffered file         |
| state commit   | ledger.state_store.write_states of 1, 16 or 256  | SELECT 1: one round trip   |
|                | device rows, in a transaction                    |                            |

Each case reports throughput in items per second (an item is a frame, a receipt, a journal record
or a device row), latency percentiles per operation (one call: a whole batch for the journal and
the state) and µs per item, and the ratio of its throughput to its floor's. For the state commit
that ratio can exceed 1: the floor is one round trip per item, which group commit exists to beat.
Codec and validation operations take a few microseconds, too short to time one by one: they are
timed in runs of INNER operations and their percentiles are of those runs' means.

Inputs are the load generator's receipts (benchmarks.bodies): TICKET frames of 1-5 lines, the
gateway's own answer, and the journal envelope the gateway writes. The journal is written under
/tmp, on the same file system the gateway benchmark uses. The state database is PostgreSQL from
pgserver in a temporary directory (the embedded default, as `benchmarks.run` measures the
gateway), or a fresh database created on --pg-server (and dropped afterwards).
"""

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.bodies import RequestPool, build_pool, ticket_ok_body
from benchmarks.report import finished_at, machine, write_json
from ingest.body import parse_request
from ingest.codec import FrameDecoder, encode
from ledger.device_state import DeviceState
from ledger.embedded_pg import start_embedded_postgres
from ledger.journal import JournalEntry
from ledger.journal.local import HEADER as RECORD_HEADER
from ledger.journal.local import LocalJournal
from ledger.lifecycle import DeviceStatus
from ledger.migrate import migrate
from ledger.schemas import SCHEMAS
from ledger.state_store import load_state, write_states
from ledger.ticket_checks import check_ticket
from ledger.wire import ENVELOPE_VERSION, HEADER_SIZE
from ofdproto.journal.v1.record_pb2 import JournalRecord
from simulators.stage.processes import postmaster_pids, unwind_on_sigterm

DEFAULT_OUT = Path("bench-results/layers.json")
DEFAULT_SECONDS = 0.5  # per case
WARMUP_FRACTION = 0.1  # of a case's time, run first and not counted
MAX_OPS = 2_000_000  # per case, whatever the time
INNER = 64  # operations per timed run, for cases too short to time one by one
BATCHES = (1, 16, 256)
STATE_ROWS = 1024  # device rows the state commit cycles through
FLOOR_FILE_LIMIT = 64 * 1024 * 1024  # the floor's file is rewound past this
DB_TIMEOUT = 10.0
PG_STOP_GRACE = 10.0
TEMP_ROOT = "/tmp"  # noqa: S108  # pgserver's socket path must stay short
VERSION = 203


@dataclass(frozen=True, slots=True)
class Case:
    """What is measured: a layer's operation, or the floor beside it."""

    layer: str
    name: str
    batch: int = 1
    floor: bool = False


@dataclass(frozen=True, slots=True)
class CaseResult:
    layer: str
    case: str
    batch: int
    floor: bool
    ops: int
    items: int
    seconds: float  # timed seconds (preparation between operations excluded)
    items_per_s: float
    op_p50_us: float
    op_p99_us: float
    item_us: float
    ratio_to_floor: float | None = None


# --- timing ---


def _percentile(ordered: Sequence[float], pct: float) -> float:
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def _result(case: Case, op_ns: list[float], per_sample: int) -> CaseResult:
    """`op_ns`: nanoseconds per operation, each sample the mean of `per_sample` operations."""
    ops = len(op_ns) * per_sample
    timed_s = sum(op_ns) * per_sample / 1e9
    ordered = sorted(op_ns)
    items = ops * case.batch
    return CaseResult(
        layer=case.layer,
        case=case.name,
        batch=case.batch,
        floor=case.floor,
        ops=ops,
        items=items,
        seconds=timed_s,
        items_per_s=items / timed_s if timed_s else 0.0,
        op_p50_us=_percentile(ordered, 50) / 1000,
        op_p99_us=_percentile(ordered, 99) / 1000,
        item_us=timed_s * 1e6 / items if items else 0.0,
    )


def time_short(case: Case, op: Callable[[], object], seconds: float) -> CaseResult:
    """Runs of INNER calls of `op` for `seconds`; the samples are the runs' means per call."""
    warm_until = time.perf_counter() + seconds * WARMUP_FRACTION
    while time.perf_counter() < warm_until:
        op()
    means: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and len(means) * INNER < MAX_OPS:
        started = time.perf_counter_ns()
        for _ in range(INNER):
            op()
        means.append((time.perf_counter_ns() - started) / INNER)
    return _result(case, means, INNER)


def time_each(case: Case, op: Callable[[], float], seconds: float) -> CaseResult:
    """`op` returns the nanoseconds of its own timed part (preparation left out)."""
    warm_until = time.perf_counter() + seconds * WARMUP_FRACTION
    while time.perf_counter() < warm_until:
        op()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and len(samples) < MAX_OPS:
        samples.append(op())
    return _result(case, samples, 1)


async def time_each_async(
    case: Case, op: Callable[[], Awaitable[float]], seconds: float
) -> CaseResult:
    loop = asyncio.get_running_loop()
    warm_until = loop.time() + seconds * WARMUP_FRACTION
    while loop.time() < warm_until:
        await op()
    samples: list[float] = []
    deadline = loop.time() + seconds
    while loop.time() < deadline and len(samples) < MAX_OPS:
        samples.append(await op())
    return _result(case, samples, 1)


def _cycle(items: Sequence[Any]) -> Iterator[Any]:
    while True:  # consumers are bounded by their case's time and MAX_OPS
        yield from items


# --- codec and validation ---


def codec_cases(pool: RequestPool, seconds: float) -> list[CaseResult]:
    frames = _cycle(
        [encode(VERSION, n + 1, 7, n + 1, body) for n, body in enumerate(pool.bodies[:256])]
    )
    answer = ticket_ok_body(pool)

    def decode_encode() -> None:
        decoder = FrameDecoder()
        decoder.feed(next(frames))
        (frame,), _ = decoder.frames()
        header = frame.header
        encode(header.version, header.device_id, 8, header.request_number, answer)

    def slice_join() -> None:
        data = next(frames)
        head, body = data[:HEADER_SIZE], data[HEADER_SIZE:]
        _ = head + answer, body  # the bytes an answer frame is made of

    return [
        time_short(Case("codec", "decode + encode"), decode_encode, seconds),
        time_short(Case("codec", "bytes slice + join", floor=True), slice_join, seconds),
    ]


def validation_cases(pool: RequestPool, seconds: float) -> list[CaseResult]:
    schema = SCHEMAS[pool.version]
    bodies = _cycle(pool.bodies)

    def parse_and_check() -> None:
        check_ticket(parse_request(schema, next(bodies)).ticket)

    def parse_only() -> None:
        parse_request(schema, next(bodies))

    return [
        time_short(Case("validation", "parse + check_ticket"), parse_and_check, seconds),
        time_short(Case("validation", "parse only", floor=True), parse_only, seconds),
    ]


# --- journal ---


def journal_payloads(pool: RequestPool, count: int) -> list[JournalEntry]:
    """Envelopes as the gateway journals them: the request frame and its answer inside."""
    answer = encode(pool.version, 1, 0, 1, ticket_ok_body(pool))
    entries = []
    for n in range(count):
        record = JournalRecord(
            envelope_version=ENVELOPE_VERSION, device_id=n + 1, protocol_version=pool.version,
            received_at_us=time.time_ns() // 1000, gateway_id="gw-bench", command=1,
            request_number=n + 1, document_id=f"{n + 1}/s1/d{n + 1}",
            fiscal_sign=f"{1_000_000_000 + n}",
            request_frame=encode(pool.version, n + 1, 0, n + 1, pool.body(n)),
            response_frame=answer,
        )  # fmt: skip
        entries.append(JournalEntry(n + 1, record.SerializeToString()))
    return entries


def journal_cases(pool: RequestPool, seconds: float, work_dir: Path) -> list[CaseResult]:
    entries = journal_payloads(pool, max(BATCHES))
    results: list[CaseResult] = []
    for batch in BATCHES:
        directory = work_dir / f"journal-{batch}"
        journal = LocalJournal(directory)
        chunk = entries[:batch]

        def append(journal: LocalJournal = journal, chunk: list[JournalEntry] = chunk) -> float:
            started = time.perf_counter_ns()
            journal.append_sync(chunk)
            return time.perf_counter_ns() - started

        try:
            case = Case("journal append", "append_sync (fdatasync)", batch)
            results.append(time_each(case, append, seconds))
        finally:
            asyncio.run(journal.close())
            shutil.rmtree(directory, ignore_errors=True)
        results.append(_buffered_write_floor(chunk, batch, seconds, work_dir))
    return results


def _buffered_write_floor(
    chunk: list[JournalEntry], batch: int, seconds: float, work_dir: Path
) -> CaseResult:
    path = work_dir / f"floor-{batch}.bin"
    with path.open("wb") as out:

        def write() -> float:
            started = time.perf_counter_ns()
            for entry in chunk:
                out.write(RECORD_HEADER.pack(len(entry.payload), 0, entry.key))
                out.write(entry.payload)
            elapsed = time.perf_counter_ns() - started
            if out.tell() > FLOOR_FILE_LIMIT:
                out.seek(0)  # rewinding is left out of the time, like the journal's roll
            return elapsed

        case = Case("journal append", "buffered write, no sync", batch, floor=True)
        result = time_each(case, write, seconds)
    path.unlink(missing_ok=True)
    return result


# --- state commit ---


async def _seed_devices(conn: asyncpg.Connection, rows: int) -> list[DeviceState]:
    await migrate(conn)
    org = await conn.fetchval(
        "INSERT INTO organizations (iin, title) VALUES ('180240012342', 'ТОО Бенч') RETURNING id"
    )
    point = await conn.fetchval(
        "INSERT INTO trade_points (organization_id, title) VALUES ($1, 'Дүкен') RETURNING id", org
    )
    await conn.execute(
        "INSERT INTO devices (system_id, kgd_registration_number, serial_number, model, year,"
        " trade_point_id, status) SELECT g, (600000000000 + g)::text, 'SN', 'Bench', 2025, $1,"
        " $3 FROM generate_series(1, $2) AS g",
        point,
        rows,
        DeviceStatus.REGISTERED.value,
    )
    await conn.execute(
        "INSERT INTO device_state (system_id, token) SELECT g, 1 FROM generate_series(1, $1) AS g",
        rows,
    )
    states = [await load_state(conn, n, timeout=DB_TIMEOUT) for n in range(1, rows + 1)]
    return [s for s in states if s is not None]


async def state_cases(dsn: str, answer: bytes, seconds: float) -> list[CaseResult]:
    conn = await asyncpg.connect(dsn)
    try:
        states = await _seed_devices(conn, STATE_ROWS)
        results: list[CaseResult] = []
        for batch in BATCHES:
            cursor = 0

            async def commit(batch: int = batch) -> float:
                nonlocal cursor
                # Prepared outside the timed part: the gateway computes it before the commit.
                chosen = range(cursor, cursor + batch)
                cursor = (cursor + batch) % len(states)
                changes = [(states[i].version, _next_state(states[i], answer)) for i in chosen]
                started = time.perf_counter_ns()
                async with conn.transaction():
                    won = await write_states(conn, changes, timeout=DB_TIMEOUT)
                elapsed = time.perf_counter_ns() - started
                if len(won) != batch:
                    raise RuntimeError(f"{batch - len(won)} conditional updates lost")
                for i, (_, new) in zip(chosen, changes, strict=True):
                    states[i] = replace(new, version=new.version + 1)
                return elapsed

            results.append(
                await time_each_async(
                    Case("state commit", "write_states in a transaction", batch), commit, seconds
                )
            )

        async def select_one() -> float:
            started = time.perf_counter_ns()
            await conn.fetchval("SELECT 1", timeout=DB_TIMEOUT)
            return time.perf_counter_ns() - started

        results.append(
            await time_each_async(Case("state commit", "SELECT 1", floor=True), select_one, seconds)
        )
        return results
    finally:
        await conn.close()


def _next_state(state: DeviceState, answer: bytes) -> DeviceState:
    """What an accepted receipt changes: token, request, stored answer, counters, contact."""
    number = ((state.last_request_number or 0) + 1) & 0xFFFF
    return replace(
        state,
        token=(state.token or 0) % 0xFFFFFFFF + 1,
        last_request_number=number,
        last_request_token=state.token,
        last_command=1,
        last_response=answer,
        last_document_shift=1,
        last_document_number=state.last_document_number + 1,
        documents_accepted=state.documents_accepted + 1,
        protocol_version=VERSION,
        last_contact=datetime.now(UTC),
    )


@asynccontextmanager
async def scratch_database(pg_server: str | None, work_dir: Path) -> AsyncIterator[str]:
    """A DSN to an empty database: a fresh one on `pg_server`, else pgserver in work_dir."""
    if pg_server is None:
        pg_dir = work_dir / "pg"
        dsn = await asyncio.to_thread(start_embedded_postgres, pg_dir)
        try:
            yield dsn
        finally:
            _stop_pgserver(pg_dir)
        return
    name = f"ofd_layers_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(f"{pg_server}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{pg_server}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _stop_pgserver(pg_dir: Path) -> None:
    """Fast shutdown of the pgserver we started, bounded, before its directory is removed."""
    pids = postmaster_pids(pg_dir)
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + PG_STOP_GRACE
    while time.monotonic() < deadline and postmaster_pids(pg_dir):
        time.sleep(0.05)


# --- the run ---


def with_ratios(results: list[CaseResult]) -> list[CaseResult]:
    """Each case's throughput over the floor of its layer (the floor of the same batch size
    where the floor has one, else the layer's only floor)."""
    floors = {(r.layer, r.batch): r for r in results if r.floor}
    by_layer = {r.layer: r for r in results if r.floor}
    out = []
    for r in results:
        floor = floors.get((r.layer, r.batch)) or by_layer.get(r.layer)
        ratio = r.items_per_s / floor.items_per_s if floor and floor.items_per_s else None
        out.append(replace(r, ratio_to_floor=None if r.floor else ratio))
    return out


def table(results: list[CaseResult]) -> str:
    header = (
        f"{'layer':<15} {'case':<32} {'batch':>5} {'items/s':>12} {'op p50 µs':>10}"
        f" {'op p99 µs':>10} {'µs/item':>9} {'vs floor':>9}"
    )
    rows = [header, "-" * len(header)]
    for r in results:
        ratio = "floor" if r.floor else f"{r.ratio_to_floor:.3f}" if r.ratio_to_floor else "-"
        rows.append(
            f"{r.layer:<15} {r.case:<32} {r.batch:>5} {r.items_per_s:>12,.0f}"
            f" {r.op_p50_us:>10.2f} {r.op_p99_us:>10.2f} {r.item_us:>9.2f} {ratio:>9}"
        )
    return "\n".join(rows)


async def _state(
    pg_server: str | None, work_dir: Path, pool: RequestPool, seconds: float
) -> list[CaseResult]:
    answer = encode(pool.version, 1, 8, 1, ticket_ok_body(pool))
    async with scratch_database(pg_server, work_dir) as dsn:
        return await state_cases(dsn, answer, seconds)


def run(seconds: float, pg_server: str | None) -> list[CaseResult]:
    pool = build_pool(VERSION)
    work_dir = Path(tempfile.mkdtemp(prefix="ofdl-", dir=TEMP_ROOT))
    try:
        results = codec_cases(pool, seconds) + validation_cases(pool, seconds)
        results += journal_cases(pool, seconds, work_dir)
        results += asyncio.run(_state(pg_server, work_dir, pool, seconds))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return with_ratios(results)


def document(results: list[CaseResult], seconds: float, pg_server: str | None) -> dict[str, Any]:
    return {
        "benchmark": "layers",
        "finished_at": finished_at(),
        "machine": machine(),
        "config": {
            "seconds_per_case": seconds,
            "inner": INNER,
            "batches": list(BATCHES),
            "state_rows": STATE_ROWS,
            "database": "pg-server" if pg_server else "pgserver (embedded default)",
            "protocol_version": VERSION,
        },
        "cases": [asdict(r) for r in results],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.layers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="per case")
    parser.add_argument("--pg-server", help="postgresql://user@host:port (no database)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    # SystemExit unwinds through the finally blocks that stop pgserver and remove temp files.
    unwind_on_sigterm()
    print(f"layers: {args.seconds:g} s per case", flush=True)
    results = run(args.seconds, args.pg_server)
    print(table(results))
    write_json(args.out, document(results, args.seconds, args.pg_server))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
