"""When a durable write fails, the device is answered 254 and nothing is half-done.

The real PostgreSQL is made to fail on purpose through an admin connection (a trigger that
refuses the update, one that refuses the commit, a read-only database, killed connections); the
local journal is made to fail by a sync that reports a full disk. After each failure the device's
state is exactly what it was, the 254 answer echoes the device's own token, and the device's
resend of the very same frame is accepted with the deterministic fiscal sign.
"""

import asyncio
import dataclasses
import errno
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import TEST_SECRET, gateway_settings, register_device

from ingest.app import RunningGateway, running_gateway
from ledger.fiscal import fiscal_sign, ticket_identity
from ledger.journal.view import journal_records
from ledger.schemas import SCHEMAS
from ledger.wire import ResultCode, without_token
from ofdproto.journal.v1.record_pb2 import JournalRecord
from simulators.kkm import Response, SimulatedKkm
from simulators.receipts import Line, build_ticket

VERSION = 203
SHIFT = 1
FIRST_RECEIPT_AT = datetime(2026, 11, 26, 11, 0, 0)
TERMINATE_WAIT_MS = 5000  # pg_terminate_backend waits this long for each backend to be gone
MAX_RESENDS = 20  # resends until a reconnected pool answers OK (each dead connection fails once)
ROUNDS = 5
ADMIN_TIMEOUT = 10.0

REFUSE_FUNCTION = """
CREATE FUNCTION test_refuse_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'test: device_state refuses writes';
END $$
"""
REFUSE_UPDATE = (
    "CREATE TRIGGER test_refuse_update BEFORE UPDATE ON device_state"
    " FOR EACH ROW EXECUTE FUNCTION test_refuse_write()"
)
# Deferred: the update succeeds, the journal is appended and synced, then COMMIT fails.
REFUSE_COMMIT = (
    "CREATE CONSTRAINT TRIGGER test_refuse_commit AFTER UPDATE ON device_state"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_refuse_write()"
)
TERMINATE = (
    "SELECT pg_terminate_backend(pid, $2) FROM pg_stat_activity"
    " WHERE datname = $1 AND pid <> pg_backend_pid()"
)


async def admin(dsn: str, *statements: str, args: tuple[Any, ...] = ()) -> None:
    """Runs statements on a connection of its own (not one of the gateway's)."""
    async with asyncio.timeout(ADMIN_TIMEOUT):
        conn = await asyncpg.connect(dsn)
        try:
            for sql in statements:
                await conn.execute(sql, *args)
        finally:
            await conn.close()


def database_name(database_url: str) -> str:
    return database_url.rsplit("/", 1)[1]


def maintenance_url(database_url: str) -> str:
    """The same server's `postgres` database, for statements about the test database."""
    return database_url.rsplit("/", 1)[0] + "/postgres"


async def terminate_gateway_connections(database_url: str) -> None:
    """Kills every server process of the test database (the gateway's pool) and waits."""
    await admin(
        maintenance_url(database_url),
        TERMINATE,
        args=(database_name(database_url), TERMINATE_WAIT_MS),
    )


async def backend_pids(database_url: str) -> set[int]:
    """The server processes connected to the test database (the gateway's pool)."""
    async with asyncio.timeout(ADMIN_TIMEOUT):
        conn = await asyncpg.connect(maintenance_url(database_url))
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1", database_name(database_url)
            )
        finally:
            await conn.close()
    return {r["pid"] for r in rows}


async def device_row(database_url: str, system_id: int) -> dict[str, Any]:
    async with asyncio.timeout(ADMIN_TIMEOUT):
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow("SELECT * FROM device_state WHERE system_id = $1", system_id)
        finally:
            await conn.close()
    assert row is not None
    return dict(row)


def ticket(number: int) -> Any:
    return build_ticket(
        SCHEMAS[VERSION],
        when=FIRST_RECEIPT_AT + timedelta(seconds=number),
        shift_number=SHIFT,
        document_number=number,
        lines=[Line("Нан / Хлеб", "1", 2000, 25000), Line("Сүт / Молоко 1 л", "1", 1000, 52000)],
        payment="card",
    )


def expected_sign(system_id: int, number: int) -> str:
    identity = ticket_identity(
        system_id,
        shift_number=SHIFT,
        document_number=number,
        offline_number=0,
        token=0,
        request_number=0,
        secret=TEST_SECRET,
    )
    return fiscal_sign(TEST_SECRET, identity)


def journaled(journal_root: Path, system_id: int, number: int) -> list[JournalRecord]:
    document_id = f"{system_id}/s{SHIFT}/d{number}"
    return [r for r in journal_records(journal_root) if r.document_id == document_id]


def assert_unavailable(kkm: SimulatedKkm, response: Response, token: int) -> None:
    """254, with the device's own token and request number echoed, and the token kept."""
    assert response.result.result_code == ResultCode.SERVICE_TEMPORARILY_UNAVAILABLE
    header = kkm.last_response_header
    assert header is not None
    assert header.token == token, "a 254 answer carries the device's own token"
    assert header.request_number == kkm.request_number
    assert kkm.token == token


def assert_accepted(kkm: SimulatedKkm, response: Response, number: int) -> None:
    assert response.result.result_code == ResultCode.OK, response.result.result_text
    assert response.ticket.ticket_number == expected_sign(kkm.system_id, number)


async def resend_until_accepted(kkm: SimulatedKkm) -> Response:
    """The same frame again until OK; only 254 may come before it (dead pooled connections)."""
    for _ in range(MAX_RESENDS):
        response = await kkm.retransmit()
        if response.result.result_code != ResultCode.SERVICE_TEMPORARILY_UNAVAILABLE:
            return response
    raise AssertionError(f"still 254 after {MAX_RESENDS} resends")


async def start_device(gateway: RunningGateway, database_url: str) -> SimulatedKkm:
    """A registered device that has had one receipt accepted (so its state is cached)."""
    device = await register_device(database_url)
    kkm = SimulatedKkm("127.0.0.1", gateway.tcp.port, version=VERSION,
                       system_id=device.system_id, token=device.token, retries=0)  # fmt: skip
    assert_accepted(kkm, await kkm.send(ticket(1)), 1)
    return kkm


async def test_state_write_refused_answers_254_and_resend_is_accepted(
    gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    """A refused state write: 254, token not rotated, nothing journaled; the resend gets OK."""
    kkm = await start_device(gateway, database_url)
    before = await device_row(database_url, kkm.system_id)
    token = kkm.token
    await admin(database_url, REFUSE_FUNCTION, REFUSE_UPDATE)

    assert_unavailable(kkm, await kkm.send(ticket(2)), token)
    assert await device_row(database_url, kkm.system_id) == before
    assert journaled(tmp_path / "journal", kkm.system_id, 2) == []

    await admin(database_url, "DROP TRIGGER test_refuse_update ON device_state")
    response = await kkm.retransmit()
    assert_accepted(kkm, response, 2)
    assert kkm.token != token
    after = await device_row(database_url, kkm.system_id)
    assert after["documents_accepted"] == before["documents_accepted"] + 1
    assert after["token"] == kkm.token
    copies = journaled(tmp_path / "journal", kkm.system_id, 2)
    assert [c.fiscal_sign for c in copies] == [response.ticket.ticket_number]
    assert copies[0].response_frame == without_token(kkm.last_response_frame)


async def test_commit_refused_after_journal_answers_254_and_copies_collapse(
    gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    """COMMIT fails after the journal sync: 254, state unchanged; the resend's copy is identical."""
    kkm = await start_device(gateway, database_url)
    before = await device_row(database_url, kkm.system_id)
    token = kkm.token
    await admin(database_url, REFUSE_FUNCTION, REFUSE_COMMIT)

    assert_unavailable(kkm, await kkm.send(ticket(2)), token)
    assert await device_row(database_url, kkm.system_id) == before
    # The batch was journaled before its commit failed: the copy a resend collapses with.
    assert len(journaled(tmp_path / "journal", kkm.system_id, 2)) == 1

    await admin(database_url, "DROP TRIGGER test_refuse_commit ON device_state")
    response = await kkm.retransmit()
    assert_accepted(kkm, response, 2)
    after = await device_row(database_url, kkm.system_id)
    assert after["documents_accepted"] == before["documents_accepted"] + 1
    assert after["token"] == kkm.token != token
    copies = journaled(tmp_path / "journal", kkm.system_id, 2)
    assert len(copies) == 2
    assert {c.fiscal_sign for c in copies} == {response.ticket.ticket_number}
    # Journaled without the token (it lives in PostgreSQL only), the rest byte for byte.
    assert {c.response_frame for c in copies} == {without_token(kkm.last_response_frame)}
    assert kkm.last_request_frame is not None
    assert {c.request_frame for c in copies} == {without_token(kkm.last_request_frame)}
    assert {(c.device_id, c.request_number) for c in copies} == {
        (kkm.system_id, kkm.request_number)
    }


async def test_read_only_database_answers_254_until_writable(
    gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    """Killed connections reopened read-only: 254 and nothing changed; writable again: OK."""
    kkm = await start_device(gateway, database_url)
    before = await device_row(database_url, kkm.system_id)
    token = kkm.token
    name = database_name(database_url)
    postgres = maintenance_url(database_url)
    await admin(postgres, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    try:
        await terminate_gateway_connections(database_url)
        # A dead pooled connection or a fresh read-only one: 254 either way, every time.
        assert_unavailable(kkm, await kkm.send(ticket(2)), token)
        for _ in range(3):
            assert_unavailable(kkm, await kkm.retransmit(), token)
        assert await device_row(database_url, kkm.system_id) == before
        assert journaled(tmp_path / "journal", kkm.system_id, 2) == []
    finally:
        await admin(postgres, f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    await terminate_gateway_connections(database_url)
    assert_accepted(kkm, await resend_until_accepted(kkm), 2)
    after = await device_row(database_url, kkm.system_id)
    assert after["documents_accepted"] == before["documents_accepted"] + 1
    assert after["token"] == kkm.token != token
    assert len(journaled(tmp_path / "journal", kkm.system_id, 2)) == 1


async def test_killed_connections_answer_254_or_ok_never_half_done(
    gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    """Connections killed between requests: each receipt is 254 (nothing changed) or OK."""
    kkm = await start_device(gateway, database_url)
    for number in range(2, ROUNDS + 2):
        before = await device_row(database_url, kkm.system_id)
        token = kkm.token
        killed = await backend_pids(database_url)
        await terminate_gateway_connections(database_url)
        response = await kkm.send(ticket(number))
        if response.result.result_code == ResultCode.SERVICE_TEMPORARILY_UNAVAILABLE:
            assert_unavailable(kkm, response, token)
            assert await device_row(database_url, kkm.system_id) == before
            response = await resend_until_accepted(kkm)
        assert_accepted(kkm, response, number)
        reconnected = await backend_pids(database_url)
        assert reconnected, "the gateway's pool is connected again"
        assert reconnected.isdisjoint(killed), "over new connections only"
        after = await device_row(database_url, kkm.system_id)
        assert after["documents_accepted"] == before["documents_accepted"] + 1
        assert after["token"] == kkm.token != token
    for number in range(1, ROUNDS + 2):
        copies = journaled(tmp_path / "journal", kkm.system_id, number)
        assert [c.fiscal_sign for c in copies] == [expected_sign(kkm.system_id, number)]


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """While set, every fdatasync (the journal's group-commit sync) fails with ENOSPC."""
    full = threading.Event()
    real_fdatasync: Callable[[int], None] = os.fdatasync

    def fdatasync(fd: int) -> None:
        if full.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return full


async def test_journal_sync_failure_answers_254_and_rolls_back_state(
    gateway: RunningGateway, database_url: str, tmp_path: Path, disk_full: threading.Event
) -> None:
    """The journal sync fails: 254, the state transaction rolled back; the resend journals once."""
    kkm = await start_device(gateway, database_url)
    before = await device_row(database_url, kkm.system_id)
    token = kkm.token

    disk_full.set()
    assert_unavailable(kkm, await kkm.send(ticket(2)), token)
    disk_full.clear()
    assert await device_row(database_url, kkm.system_id) == before
    assert journaled(tmp_path / "journal", kkm.system_id, 2) == []

    response = await kkm.retransmit()
    assert_accepted(kkm, response, 2)
    after = await device_row(database_url, kkm.system_id)
    assert after["documents_accepted"] == before["documents_accepted"] + 1
    assert after["token"] == kkm.token != token
    for number in (1, 2):
        copies = journaled(tmp_path / "journal", kkm.system_id, number)
        assert [c.fiscal_sign for c in copies] == [expected_sign(kkm.system_id, number)]
    assert journaled(tmp_path / "journal", kkm.system_id, 2)[0].response_frame == (
        without_token(kkm.last_response_frame)
    )


async def test_healthz_tells_the_balancer_while_durable_writes_fail(
    tmp_path: Path, database_url: str, disk_full: threading.Event
) -> None:
    """/healthz: 200 while documents can be made durable, 503 with the reason after a failed
    write (the balancer sends devices elsewhere), 200 again once a write succeeds."""
    settings = dataclasses.replace(gateway_settings(tmp_path, database_url), metrics_port=0)
    async with running_gateway(settings) as gateway:
        assert gateway.metrics_port is not None
        url = f"http://127.0.0.1:{gateway.metrics_port}/healthz"

        def probe() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(url, timeout=ADMIN_TIMEOUT) as answer:
                    return answer.status, answer.read().decode()
            except urllib.error.HTTPError as refused:
                return refused.code, refused.read().decode()

        kkm = await start_device(gateway, database_url)
        assert await asyncio.to_thread(probe) == (200, "ok\n")
        disk_full.set()
        assert_unavailable(kkm, await kkm.send(ticket(2)), kkm.token)
        status, reason = await asyncio.to_thread(probe)
        assert status == 503
        assert "durable writes are failing" in reason
        disk_full.clear()
        assert_accepted(kkm, await kkm.retransmit(), 2)
        assert await asyncio.to_thread(probe) == (200, "ok\n")
