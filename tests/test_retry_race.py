"""A retry racing its original: the identical frame (same token and request number) arrives at
two gateway processes sharing one database, or on two connections of one gateway, at once.

The conditional update in PostgreSQL lets exactly one of them win; the loser must answer with the
winner's stored response, byte for byte, and journal nothing.
"""

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
from conftest import RegisteredDevice, gateway_settings, register_device

from ingest.app import running_gateway
from ingest.codec import encode
from ledger.journal.view import journal_records
from ledger.schemas import SCHEMAS
from ledger.wire import HEADER as FRAME_HEADER
from ledger.wire import HEADER_SIZE, ResultCode, without_token
from simulators.kkm import SimulatedKkm
from simulators.receipts import build_ticket, random_lines

VERSION = 203
DEVICES = 4
ROUNDS = 30
SHIFT = 1
ROUND_TRIP_TIMEOUT = 5.0
TEST_TIMEOUT = 60.0
FIRST_RECEIPT_AT = datetime(2026, 11, 26, 10, 0, 0)


@dataclass
class Device:
    system_id: int
    token: int
    request_number: int = 0
    # document id -> the answer frame every copy of the request got
    answers: dict[str, bytes] = field(default_factory=dict)


async def round_trip(port: int, frame: bytes) -> bytes:
    """One request on a new connection, the answer frame back (as the reference client does)."""
    async with asyncio.timeout(ROUND_TRIP_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(frame)
            await writer.drain()
            head = await reader.readexactly(HEADER_SIZE)
            size = FRAME_HEADER.unpack(head)[2]
            return head + await reader.readexactly(size - HEADER_SIZE)
        finally:
            writer.close()
            await writer.wait_closed()


def ticket_frame(device: Device, number: int, rng: random.Random) -> bytes:
    body = build_ticket(
        SCHEMAS[VERSION],
        when=FIRST_RECEIPT_AT + timedelta(seconds=number),
        shift_number=SHIFT,
        document_number=number,
        lines=random_lines(rng, rng.randint(1, 3)),
        payment="card",
    ).SerializeToString()
    return encode(VERSION, device.system_id, device.token, device.request_number, body)


async def race_receipts(device: Device, ports: tuple[int, int]) -> None:
    """ROUNDS receipts, each frame sent to both ports at the same moment."""
    rng = random.Random(device.system_id)
    for number in range(1, ROUNDS + 1):
        device.request_number += 1
        frame = ticket_frame(device, number, rng)
        first, second = await asyncio.gather(
            round_trip(ports[0], frame), round_trip(ports[1], frame)
        )
        assert first == second, f"device {device.system_id} receipt {number}: answers differ"
        _, _, _, device_id, token, request_number = FRAME_HEADER.unpack_from(first)
        assert (device_id, request_number) == (device.system_id, device.request_number)
        response = SCHEMAS[VERSION].Response.FromString(first[HEADER_SIZE:])
        assert response.result.result_code == ResultCode.OK, response.result.result_text
        assert token != device.token, "a receipt rotates the token"
        device.token = token
        device.answers[f"{device.system_id}/s{SHIFT}/d{number}"] = first


async def sell_one_more(device: Device, port: int, number: int) -> None:
    """The device's next request, with the token the race handed out, through `port`."""
    kkm = SimulatedKkm("127.0.0.1", port, version=VERSION, system_id=device.system_id,
                       token=device.token, request_number=device.request_number)  # fmt: skip
    rng = random.Random(number)
    ticket = build_ticket(
        SCHEMAS[VERSION],
        when=FIRST_RECEIPT_AT + timedelta(seconds=number),
        shift_number=SHIFT,
        document_number=number,
        lines=random_lines(rng, 1),
        payment="cash",
    )
    response = await kkm.send(ticket)
    assert response.result.result_code == ResultCode.OK, response.result.result_text
    device.token, device.request_number = kkm.token, kkm.request_number
    device.answers[f"{device.system_id}/s{SHIFT}/d{number}"] = kkm.last_response_frame


async def check_state_and_journal(
    database_url: str, journal_roots: Sequence[Path], devices: Sequence[Device]
) -> None:
    """Each document counted once in device_state and journaled once, with the answer sent."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT system_id, token, documents_accepted FROM device_state")
    finally:
        await conn.close()
    state = {r["system_id"]: r for r in rows}
    for device in devices:
        row = state[device.system_id]
        assert row["documents_accepted"] == len(device.answers), "each document counted once"
        assert row["token"] == device.token
    records = [r for root in journal_roots for r in journal_records(root)]
    copies = Counter(r.document_id for r in records)
    expected = {doc: answer for d in devices for doc, answer in d.answers.items()}
    assert copies == Counter(expected.keys()), "each document journaled exactly once"
    for record in records:
        # The answer sent, its new token zeroed: tokens live in PostgreSQL only.
        assert record.response_frame == without_token(expected[record.document_id])


async def registered_devices(database_url: str) -> list[Device]:
    found: list[RegisteredDevice] = [await register_device(database_url) for _ in range(DEVICES)]
    return [Device(r.system_id, r.token) for r in found]


async def test_retry_racing_its_original_on_another_gateway(
    tmp_path: Path, database_url: str
) -> None:
    """Same frame to two gateways at once: one answer for both, one document, token intact."""
    settings_a = gateway_settings(tmp_path / "a", database_url, gateway_id="gw-a")
    settings_b = gateway_settings(tmp_path / "b", database_url, gateway_id="gw-b")
    async with asyncio.timeout(TEST_TIMEOUT):
        async with running_gateway(settings_a) as a, running_gateway(settings_b) as b:
            devices = await registered_devices(database_url)
            ports = (a.tcp.port, b.tcp.port)
            async with asyncio.TaskGroup() as tasks:
                for device in devices:
                    tasks.create_task(race_receipts(device, ports))
            # The new token works through either gateway, in either order.
            for device in devices:
                await sell_one_more(device, a.tcp.port, ROUNDS + 1)
                await sell_one_more(device, b.tcp.port, ROUNDS + 2)
                await sell_one_more(device, a.tcp.port, ROUNDS + 3)
        await check_state_and_journal(
            database_url, [tmp_path / "a" / "journal", tmp_path / "b" / "journal"], devices
        )


async def test_retry_racing_its_original_on_one_gateway(tmp_path: Path, database_url: str) -> None:
    """Same frame on two connections of one gateway at once: one answer, one document."""
    async with asyncio.timeout(TEST_TIMEOUT):
        async with running_gateway(gateway_settings(tmp_path, database_url)) as gateway:
            devices = await registered_devices(database_url)
            ports = (gateway.tcp.port, gateway.tcp.port)
            async with asyncio.TaskGroup() as tasks:
                for device in devices:
                    tasks.create_task(race_receipts(device, ports))
            for device in devices:
                await sell_one_more(device, gateway.tcp.port, ROUNDS + 1)
        await check_state_and_journal(database_url, [tmp_path / "journal"], devices)
