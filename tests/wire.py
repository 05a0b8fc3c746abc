"""Wire-level test helpers: raw frames into a gateway's socket and answers taken apart, the
requests the wire tests send, and what the database and journal hold afterwards.

Shared by every test that talks to a gateway byte for byte.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from ingest.app import RunningGateway
from ingest.codec import FrameHeader
from ledger.journal.view import journal_records
from ledger.schemas import SCHEMAS
from ledger.wire import APP_CODE, HEADER, HEADER_SIZE, Command
from simulators.kkm import SimulatedKkm
from simulators.receipts import Line, build_ticket

VERSIONS = [203, 204]
# Bounds every await on a socket: a wrong server fails a test, never hangs it.
DEADLINE = 10.0
UNKNOWN_SYSTEM_ID = 0xFFFFFFFE  # also shows an id above 2^31 is echoed intact


# --- bytes on the wire ---


@dataclass(frozen=True, slots=True)
class Answer:
    raw: bytes
    header: FrameHeader
    response: Any  # a Response of the header's version (2.0.3 for versions we do not serve)

    @property
    def code(self) -> int:
        return int(self.response.result.result_code)


def decode(raw: bytes) -> Answer:
    """An answer frame taken apart: the header as sent, the body parsed by its version."""
    assert len(raw) >= HEADER_SIZE, f"no whole header in {raw!r}"
    app, version, size, device_id, token, request_number = HEADER.unpack_from(raw)
    assert app == APP_CODE
    assert size == len(raw)
    schema = SCHEMAS.get(version, SCHEMAS[203])
    response = schema.Response.FromString(raw[HEADER_SIZE:])
    return Answer(raw, FrameHeader(version, size, device_id, token, request_number), response)


class Link:
    """One raw TCP connection to the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        async with asyncio.timeout(DEADLINE):
            await self.writer.drain()

    async def read_frame(self) -> bytes:
        async with asyncio.timeout(DEADLINE):
            head = await self.reader.readexactly(HEADER_SIZE)
            size = HEADER.unpack(head)[2]
            return head + await self.reader.readexactly(size - HEADER_SIZE)

    async def ask(self, frame: bytes) -> Answer:
        await self.send(frame)
        return decode(await self.read_frame())

    async def read_to_eof(self) -> bytes:
        """Whatever else arrives until the server closes the connection."""
        async with asyncio.timeout(DEADLINE):
            try:
                return await self.reader.read()
            except ConnectionResetError:
                return b""


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[Link]:
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield Link(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(DEADLINE):
                await writer.wait_closed()


async def ask(port: int, frame: bytes) -> Answer:
    """One request on its own connection, as the reference client does."""
    async with connect(port) as link:
        return await link.ask(frame)


# --- requests ---


def ticket(version: int, document_number: int = 1) -> Any:
    return build_ticket(
        SCHEMAS[version],
        when=datetime(2026, 11, 26, 12, 30, 5),
        shift_number=1,
        document_number=document_number,
        lines=[Line("Нан / Хлеб", "1", 2000, 18000)],
        payment="card",
    )


def numbered_ticket(version: int, number: int, first_at: datetime) -> Any:
    """The `number`-th one-line card sale of shift 1, sold `number` seconds after `first_at`:
    a till selling steadily, for the tests that count what arrives."""
    return build_ticket(
        SCHEMAS[version],
        when=first_at + timedelta(seconds=number),
        shift_number=1,
        document_number=number,
        lines=[Line("Нан / Хлеб", "1", 2000, 25000)],
        payment="card",
    )


def empty_ticket_body(version: int) -> bytes:
    """A TICKET whose ticket has none of its required fields: well-formed bytes, not a Request."""
    request = SCHEMAS[version].Request(command=Command.TICKET)
    request.ticket.SetInParent()
    partial: bytes = request.SerializePartialToString()
    return partial


def body(request: Any) -> bytes:
    serialized: bytes = request.SerializeToString()
    return serialized


def command_body(command: int) -> bytes:
    """A Request carrying only its command, encoded by hand (field 1, varint; command < 128)."""
    assert 0 <= command < 128
    return bytes([0x08, command])


def kkm_for(gateway: RunningGateway, version: int, system_id: int, token: int) -> SimulatedKkm:
    return SimulatedKkm(
        "127.0.0.1", gateway.tcp.port, version=version, system_id=system_id, token=token
    )


async def device_row(database_url: str, system_id: int) -> asyncpg.Record:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT token, documents_accepted, last_request_number FROM device_state"
            " WHERE system_id = $1",
            system_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return row


def journaled(data_dir: Path, system_id: int) -> list[str]:
    """The document ids in the journal for one device, one per record."""
    return [
        r.document_id for r in journal_records(data_dir / "journal") if r.device_id == system_id
    ]
