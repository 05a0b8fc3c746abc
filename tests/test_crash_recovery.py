"""A gateway process killed with SIGKILL mid-burst, then restarted on the same data directory,
database and secret: nothing acknowledged is lost or doubled, and no device is left holding a
token the OFD forgot.

The gateway runs as a real child process (`python -m ingest.cli serve`), because only a process
can be killed mid-batch. Each device sends receipts in a loop, one connection per request, with no
retries, so the kill ends its loop at once; whatever it had in flight is resent after the restart
with the same token and request number, as firmware would.
"""

import asyncio
import random
import signal
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from conftest import TEST_SECRET, register_device

from ledger.fiscal import fiscal_sign, ticket_identity
from ledger.journal.local import HEADER as RECORD_HEADER
from ledger.journal.local import JournalReader
from ledger.journal.view import journal_records
from ledger.schemas import SCHEMAS
from ledger.wire import ResultCode
from ofdproto.journal.v1.record_pb2 import JournalRecord
from simulators.kkm import DeviceOffline, SimulatedKkm
from simulators.receipts import Request, build_ticket, random_lines
from simulators.stage.processes import ServerFailed, ServerProcess, stop
from simulators.stage.processes import start_gateway as start_gateway_process

pytestmark = pytest.mark.slow

GATEWAY_ID = "gw-crash"
DEVICES = 40
OKS_BEFORE_KILL = 200  # per burst
KILLS = 3  # each kill lands at another point of a batch's life
SHIFT = 1
BURST_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
REQUEST_TIMEOUT = 5.0
FIRST_RECEIPT_AT = datetime(2026, 11, 26, 9, 0, 0)


@dataclass
class Device:
    """One simulated register in the burst and what it was told."""

    kkm: SimulatedKkm
    rng: random.Random
    next_document: int = 1
    # document id -> fiscal sign, for every receipt the device got OK for
    acked: dict[str, str] = field(default_factory=dict)
    # receipts acknowledged only on a resend after a restart: the request may also have been
    # journaled by a batch the kill cut off before its commit (an identical copy)
    resent: set[str] = field(default_factory=set)
    # the last request got no answer (link broke) or 254: it must be resent as it is
    unanswered: bool = False

    def document_id(self, number: int) -> str:
        return f"{self.kkm.system_id}/s{SHIFT}/d{number}"


async def start_gateway(data_dir: Path, database_url: str, log: Path) -> ServerProcess:
    """`ofd serve` on kernel-chosen ports with the test's database and secret."""
    return await asyncio.to_thread(
        start_gateway_process,
        data_dir,
        "--database-url", database_url,
        "--gateway-id", GATEWAY_ID,
        "--secret-hex", TEST_SECRET.hex(),
        log_path=log,
    )  # fmt: skip


def read_log(log: Path) -> str:
    """The gateway's output so far (small: it logs little)."""
    return log.read_text(errors="replace")


def ticket_for(device: Device, number: int) -> Request:
    return build_ticket(
        SCHEMAS[203],
        when=FIRST_RECEIPT_AT + timedelta(seconds=number),
        shift_number=SHIFT,
        document_number=number,
        lines=random_lines(device.rng, device.rng.randint(1, 4)),
        payment=device.rng.choice(("cash", "card", "mobile")),
    )


def expected_sign(device: Device, number: int) -> str:
    identity = ticket_identity(
        device.kkm.system_id,
        shift_number=SHIFT,
        document_number=number,
        offline_number=0,
        token=0,
        request_number=0,
        secret=TEST_SECRET,
    )
    return fiscal_sign(TEST_SECRET, identity)


async def sell_until_offline(device: Device, oks: list[int], enough: asyncio.Event) -> None:
    """Receipts in a loop until the link breaks (or 254): a device going offline."""
    while True:
        number = device.next_document
        try:
            response = await device.kkm.send(ticket_for(device, number))
        except DeviceOffline:
            device.unanswered = True
            return
        code = response.result.result_code
        if code == ResultCode.SERVICE_TEMPORARILY_UNAVAILABLE:
            device.unanswered = True
            return
        assert code == ResultCode.OK, response.result.result_text
        device.acked[device.document_id(number)] = response.ticket.ticket_number
        device.next_document += 1
        oks[0] += 1
        if oks[0] >= OKS_BEFORE_KILL:
            enough.set()


async def recover(device: Device, port: int) -> None:
    """After the restart: resend the unanswered request as it was, then sell one more."""
    device.kkm.port = port
    if device.unanswered:
        response = await device.kkm.retransmit()
        assert response.result.result_code == ResultCode.OK, (
            f"device {device.kkm.system_id}: resent request answered "
            f"{response.result.result_code} {response.result.result_text}"
        )
        document_id = device.document_id(device.next_document)
        device.acked[document_id] = response.ticket.ticket_number
        device.resent.add(document_id)
        device.next_document += 1
        device.unanswered = False
    response = await device.kkm.send(ticket_for(device, device.next_document))
    assert response.result.result_code == ResultCode.OK, (
        f"device {device.kkm.system_id}: next request with its last token answered "
        f"{response.result.result_code} {response.result.result_text}"
    )
    device.acked[device.document_id(device.next_document)] = response.ticket.ticket_number
    device.next_document += 1


def journal_extent(directory: Path) -> tuple[int, int]:
    """(position after the last intact record, position after the last byte on disk)."""
    last_segment = sorted(directory.glob("*.seg"))[-1]
    on_disk = int(last_segment.name[:20]) + last_segment.stat().st_size
    intact = max((position for position, _ in JournalReader(directory).read()), default=0)
    return intact, on_disk


def tear_tail(directory: Path) -> int:
    """Appends half a record to the last segment, as a kill in the middle of a write leaves it;
    returns the bytes appended."""
    last_segment = sorted(directory.glob("*.seg"))[-1]
    torn = RECORD_HEADER.pack(100, 0, 1) + b"half"  # a header promising more than follows
    with last_segment.open("ab") as f:
        f.write(torn)
    return len(torn)


def records_by_document(journal_root: Path) -> dict[str, list[JournalRecord]]:
    records: dict[str, list[JournalRecord]] = defaultdict(list)
    for record in journal_records(journal_root):
        records[record.document_id].append(record)
    return records


def assert_journaled_once(journal_root: Path, devices: list[Device]) -> None:
    """Every acknowledged receipt is journaled with its sign; once, unless it was resent after
    a kill (then every copy is the same document with the same answer)."""
    journaled = records_by_document(journal_root)
    acked = {doc: sign for d in devices for doc, sign in d.acked.items()}
    missing = set(acked) - set(journaled)
    assert not missing, f"acknowledged but not journaled: {sorted(missing)[:5]}"
    resent = {doc for d in devices for doc in d.resent}
    by_id = {d.kkm.system_id: d for d in devices}
    for document_id, copies in journaled.items():
        device = by_id[copies[0].device_id]
        assert document_id.startswith(f"{device.kkm.system_id}/")
        if document_id in acked:
            assert {c.fiscal_sign for c in copies} == {acked[document_id]}
        if document_id not in resent:
            assert len(copies) == 1, f"{document_id} journaled {len(copies)} times"
        assert len({c.response_frame for c in copies}) == 1, f"{document_id} answered twice"
        assert len(copies) <= 2


async def test_sigkill_mid_burst_loses_no_acknowledged_receipt_and_no_token(
    tmp_path: Path, database_url: str
) -> None:
    """SIGKILL mid-burst: every acknowledged receipt is journaled once, every token still works."""
    registered = [await register_device(database_url) for _ in range(DEVICES)]
    data_dir = tmp_path / "data"
    journal_root = data_dir / "journal"
    journal_dir = journal_root / GATEWAY_ID
    log_paths = [tmp_path / f"gateway-{n}.log" for n in range(KILLS + 1)]  # one per start
    logs = iter(log_paths)
    processes: list[ServerProcess] = []
    try:
        gateway = await start_gateway(data_dir, database_url, next(logs))
        processes.append(gateway)
        devices = [
            Device(
                SimulatedKkm("127.0.0.1", gateway.port, version=203, system_id=r.system_id,
                             token=r.token, retries=0, timeout=REQUEST_TIMEOUT),
                random.Random(r.system_id),
            )
            for r in registered
        ]  # fmt: skip
        for _ in range(KILLS):
            # A burst, and the kill once enough receipts were acknowledged in it.
            acked_before = sum(len(d.acked) for d in devices)
            oks = [0]
            enough = asyncio.Event()
            async with asyncio.timeout(BURST_TIMEOUT), asyncio.TaskGroup() as tasks:
                for device in devices:
                    tasks.create_task(sell_until_offline(device, oks, enough))
                await enough.wait()
                gateway.proc.send_signal(signal.SIGKILL)
            exit_code = await asyncio.to_thread(gateway.proc.wait, STOP_TIMEOUT)
            assert exit_code == -signal.SIGKILL
            assert sum(len(d.acked) for d in devices) - acked_before >= OKS_BEFORE_KILL
            assert all(d.unanswered for d in devices), "a loop ends only when the link breaks"

            # Whatever the kill left at the end of the journal, plus a torn record for certain.
            intact_before, _ = journal_extent(journal_dir)
            tear_tail(journal_dir)
            gateway = await start_gateway(data_dir, database_url, next(logs))
            processes.append(gateway)
            intact_after, on_disk_after = journal_extent(journal_dir)
            assert on_disk_after == intact_after, "the torn tail was cut on restart"
            assert intact_after == intact_before, "no intact record was cut"

            # Before any resend, every acknowledged receipt is journaled; then each device
            # resends what got no answer and sells on with the token it holds.
            assert_journaled_once(journal_root, devices)
            async with asyncio.timeout(BURST_TIMEOUT), asyncio.TaskGroup() as tasks:
                for device in devices:
                    tasks.create_task(recover(device, gateway.port))

        # Every answer's sign is the deterministic one, and the state store agrees with devices.
        for device in devices:
            for number in range(1, device.next_document):
                assert device.acked[device.document_id(number)] == expected_sign(device, number)
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT system_id, token, documents_accepted FROM device_state")
        finally:
            await conn.close()
        state = {r["system_id"]: r for r in rows}
        for device in devices:
            row = state[device.kkm.system_id]
            assert row["token"] == device.kkm.token
            assert row["documents_accepted"] == len(device.acked)
        assert_journaled_once(journal_root, devices)
        journaled = records_by_document(journal_root)
        assert set(journaled) == {doc for d in devices for doc in d.acked}

        assert await asyncio.to_thread(stop, gateway, STOP_TIMEOUT) == 0
        for log in log_paths:
            assert "Traceback" not in read_log(log), read_log(log)
    finally:
        for process in processes:
            await asyncio.to_thread(stop, process, STOP_TIMEOUT)


async def sell(device: Device, receipts: int) -> None:
    for _ in range(receipts):
        number = device.next_document
        response = await device.kkm.send(ticket_for(device, number))
        assert response.result.result_code == ResultCode.OK, response.result.result_text
        device.acked[device.document_id(number)] = response.ticket.ticket_number
        device.next_document += 1


@pytest.mark.adversity
async def test_flipped_journal_byte_refuses_to_start_and_loses_no_receipt(
    tmp_path: Path, database_url: str
) -> None:
    """One byte flipped in the middle of the live segment (issue 11): the restart used to cut
    the segment there, silently. Now the gateway refuses to start, naming the segment, the
    offset and `ofd journal verify`; the segment is left as it was, and once the byte is
    restored every acknowledged receipt is there."""
    registered = [await register_device(database_url) for _ in range(4)]
    data_dir = tmp_path / "data"
    journal_root = data_dir / "journal"
    journal_dir = journal_root / GATEWAY_ID
    logs = [tmp_path / f"gateway-{n}.log" for n in range(3)]
    gateway = await start_gateway(data_dir, database_url, logs[0])
    processes = [gateway]
    try:
        devices = [
            Device(
                SimulatedKkm("127.0.0.1", gateway.port, version=203, system_id=r.system_id,
                             token=r.token, retries=0, timeout=REQUEST_TIMEOUT),
                random.Random(r.system_id),
            )
            for r in registered
        ]  # fmt: skip
        async with asyncio.timeout(BURST_TIMEOUT), asyncio.TaskGroup() as tasks:
            for device in devices:
                tasks.create_task(sell(device, 25))
        assert await asyncio.to_thread(stop, gateway, STOP_TIMEOUT) == 0

        (segment,) = sorted(journal_dir.glob("*.seg"))
        ends = [position for position, _ in JournalReader(journal_dir).read()]
        assert len(ends) == 100
        victim = ends[49]  # where the 51st record starts: 49 intact records follow it
        segment_bytes = bytearray(segment.read_bytes())
        segment_bytes[victim + RECORD_HEADER.size + 3] ^= 0x01  # a payload byte
        segment.write_bytes(bytes(segment_bytes))

        with pytest.raises(ServerFailed, match="exited with 1"):
            processes.append(await start_gateway(data_dir, database_url, logs[1]))
        refusal = read_log(logs[1])
        assert "Traceback" not in refusal, refusal
        assert (
            f"error: journal segment {segment}: checksum mismatch at offset {victim},"
            " 49 intact records after it; refusing to start (recovery cuts only a torn tail,"
            f" never acknowledged records); inspect with: ofd journal verify --data-dir {data_dir}"
        ) in refusal.splitlines(), refusal
        assert segment.read_bytes() == bytes(segment_bytes), "nothing was cut"

        segment_bytes[victim + RECORD_HEADER.size + 3] ^= 0x01  # a person restores the byte
        segment.write_bytes(bytes(segment_bytes))
        gateway = await start_gateway(data_dir, database_url, logs[2])
        processes.append(gateway)
        assert_journaled_once(journal_root, devices)
        journaled = records_by_document(journal_root)
        assert set(journaled) == {doc for d in devices for doc in d.acked}
        async with asyncio.timeout(BURST_TIMEOUT), asyncio.TaskGroup() as tasks:
            for device in devices:
                device.kkm.port = gateway.port
                tasks.create_task(sell(device, 1))  # and the devices sell on
        assert await asyncio.to_thread(stop, gateway, STOP_TIMEOUT) == 0
        for log in (logs[0], logs[2]):
            assert "Traceback" not in read_log(log), read_log(log)
    finally:
        for process in processes:
            await asyncio.to_thread(stop, process, STOP_TIMEOUT)
