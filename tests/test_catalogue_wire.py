"""NOMENCLATURE, AUTH and the 2.0.4 payment QRs at the wire, in each version that has them:
every result a device can get, from frames into the gateway's socket. None of them rotates the
token (protocol.md "Token, request number and retries").

The rules: `ledger/nomenclature.py`, `ledger/operators.py`, `ledger/qr_payments.py`.
"""

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from conftest import register_device
from wire import kkm_for

from ingest.app import RunningGateway
from ingest.codec import encode
from ledger import qr_payments
from ledger.nomenclature import (
    NO_VERSION,
    NOT_FOUND_BY_BARCODE,
    RESULT_OK,
    VERSION_IS_ACTUAL,
    CatalogueError,
    Element,
    publish,
)
from ledger.operators import (
    ADMINISTRATOR,
    CHIEF_PAYMASTER,
    PAYMASTER,
    OperatorError,
    add_operator,
    hash_password,
    verify_password,
)
from ledger.schemas import SCHEMAS
from ledger.wire import HEADER_SIZE, Command, ResultCode
from simulators.documents import build_auth, build_nomenclature, build_qr
from simulators.kkm import SimulatedKkm

VERSIONS = [203, 204]
CREATED = datetime(2026, 11, 20, 10, 30, 0)
CATALOGUE = (
    Element(1, "Сусындар", is_item=False, title_kk="Сусындар"),
    Element(
        2,
        "Су 0,5 л",
        parent_group_id=1,
        barcode="4870001000012",
        sell_price=25_000,
        measure_unit_code="796",
        vat_percent=1200,
        article="W05",
    ),
    Element(3, "Нан", barcode="4870001000029", sell_price=18_000, measure_unit_code="796"),
)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def device_and_org(
    gateway: RunningGateway, database_url: str, conn: asyncpg.Connection, version: int
) -> tuple[SimulatedKkm, int]:
    device = await register_device(database_url)
    org = await conn.fetchval(
        "SELECT p.organization_id FROM devices d JOIN trade_points p ON p.id = d.trade_point_id"
        " WHERE d.system_id = $1",
        device.system_id,
    )
    return kkm_for(gateway, version, device.system_id, device.token), int(org)


def nomenclature(version: int, *, current_version: int = 0, barcode: str = "") -> Any:
    return build_nomenclature(SCHEMAS[version], current_version=current_version, barcode=barcode)


async def ask(device: SimulatedKkm, request: Any) -> Any:
    """The answer, untyped: these tests read fields of either version's Response."""
    return await device.send(request)


def unchanged_token(device: SimulatedKkm, token: int) -> bool:
    header = device.last_response_header
    return header is not None and header.token == token == device.token


# --- NOMENCLATURE ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_nomenclature_no_version_then_the_catalogue_then_actual(
    gateway: RunningGateway, database_url: str, conn: asyncpg.Connection, version: int
) -> None:
    device, org = await device_and_org(gateway, database_url, conn, version)
    token = device.token
    none = await ask(device, nomenclature(version))
    assert none.result.result_code == ResultCode.OK
    assert (none.nomenclature.result, none.nomenclature.version) == (NO_VERSION, 0)
    assert unchanged_token(device, token)

    assert await publish(conn, org, CATALOGUE, created_at=CREATED) == 1
    full = await ask(device, nomenclature(version))
    assert full.result.result_code == ResultCode.OK
    answer = full.nomenclature
    assert (answer.result, answer.version) == (RESULT_OK, 1)
    assert (answer.created_time.date.day, answer.created_time.time.minute) == (20, 30)
    assert [e.id for e in answer.elements] == [1, 2, 3]
    group, water, _ = answer.elements
    assert (group.type, group.title, group.HasField("item")) == (0, "Сусындар", False)
    assert (water.type, water.parent_group_id, water.item.barcode) == (1, 1, "4870001000012")
    assert (water.item.sell_price.bills, water.item.measure_unit_code) == (250, "796")
    assert [(t.taxation_type, t.tax_type, t.tax_percent) for t in water.item.taxes] == [
        (100, 100, 1200)
    ]

    actual = await ask(device, nomenclature(version, current_version=1))
    assert actual.result.result_code == ResultCode.OK
    assert (actual.nomenclature.result, actual.nomenclature.version) == (VERSION_IS_ACTUAL, 1)
    assert list(actual.nomenclature.elements) == []

    # A new version: the device holding 1 gets 2, whole.
    assert await publish(conn, org, CATALOGUE[:2], created_at=CREATED) == 2
    newer = await ask(device, nomenclature(version, current_version=1))
    assert (newer.nomenclature.result, newer.nomenclature.version) == (RESULT_OK, 2)
    assert [e.id for e in newer.nomenclature.elements] == [1, 2]
    assert unchanged_token(device, token)


@pytest.mark.parametrize("version", VERSIONS)
async def test_nomenclature_by_barcode(
    gateway: RunningGateway, database_url: str, conn: asyncpg.Connection, version: int
) -> None:
    """Found: OK with that item. Not found: ELEMENT_NOT_FOUND_BY_BARCODE in the answer, and
    in the Result code 18 for 2.0.3 (its meaning there) but OK for 2.0.4 (18 = DEREGISTERED)."""
    device, org = await device_and_org(gateway, database_url, conn, version)
    token = device.token
    await publish(conn, org, CATALOGUE, created_at=CREATED)
    found = await ask(device, nomenclature(version, barcode="4870001000029"))
    assert found.result.result_code == ResultCode.OK
    assert found.nomenclature.result == RESULT_OK
    assert [(e.id, e.title) for e in found.nomenclature.elements] == [(3, "Нан")]

    missing = await ask(device, nomenclature(version, barcode="0000000000000"))
    expected = ResultCode.CODE_18 if version == 203 else ResultCode.OK
    assert missing.result.result_code == expected
    assert missing.nomenclature.result == NOT_FOUND_BY_BARCODE
    assert missing.nomenclature.version == 1
    assert list(missing.nomenclature.elements) == []
    assert unchanged_token(device, token)


async def test_catalogues_are_per_organization(
    gateway: RunningGateway, database_url: str, conn: asyncpg.Connection
) -> None:
    first, org = await device_and_org(gateway, database_url, conn, 204)
    other, _ = await device_and_org(gateway, database_url, conn, 204)
    await publish(conn, org, CATALOGUE, created_at=CREATED)
    assert (await ask(first, nomenclature(204))).nomenclature.result == RESULT_OK
    assert (await ask(other, nomenclature(204))).nomenclature.result == NO_VERSION


# --- AUTH ---


def auth(version: int, login: str, password: str) -> Any:
    return build_auth(SCHEMAS[version], login=login, password=password)


def test_passwords_are_salted_scrypt() -> None:
    one, two = hash_password("s3cret"), hash_password("s3cret")
    assert one != two  # a salt each
    assert one.startswith("scrypt$16384$8$1$")
    assert verify_password("s3cret", one)
    assert not verify_password("s3cret!", one)
    assert not verify_password("s3cret", "md5$whatever")


@pytest.mark.parametrize("version", VERSIONS)
async def test_auth_ok_and_invalid_login_password(
    gateway: RunningGateway, database_url: str, conn: asyncpg.Connection, version: int
) -> None:
    device, org = await device_and_org(gateway, database_url, conn, version)
    await add_operator(
        conn,
        org,
        login="aigerim",
        password="Kassa-2026",
        code=7,
        name="Айгерім",
        roles=[PAYMASTER, CHIEF_PAYMASTER],
    )
    await add_operator(
        conn, org, login="admin", password="x", code=1, name="", roles=[ADMINISTRATOR]
    )
    stored = await conn.fetchval("SELECT password_hash FROM operators WHERE login = 'aigerim'")
    assert "Kassa-2026" not in stored
    token = device.token
    ok = await ask(device, auth(version, "aigerim", "Kassa-2026"))
    assert ok.result.result_code == ResultCode.OK
    assert (ok.auth.result, ok.auth.operator_code, ok.auth.operator_name) == (0, 7, "Айгерім")
    assert list(ok.auth.roles) == [PAYMASTER, CHIEF_PAYMASTER]
    assert unchanged_token(device, token)

    for login, password in (("aigerim", "kassa-2026"), ("nobody", "Kassa-2026")):
        refused = await ask(device, auth(version, login, password))
        assert refused.result.result_code == ResultCode.INVALID_LOGIN_PASSWORD
        assert refused.auth.result == 1  # RESULT_TYPE_INVALID_LOGIN_PASSWORD
        assert not refused.auth.HasField("operator_code")
        assert unchanged_token(device, token)


async def test_operators_are_per_organization(
    gateway: RunningGateway, database_url: str, conn: asyncpg.Connection
) -> None:
    _, org = await device_and_org(gateway, database_url, conn, 204)
    other, _ = await device_and_org(gateway, database_url, conn, 204)
    await add_operator(conn, org, login="a", password="p", code=1, name="A", roles=[PAYMASTER])
    answer = await ask(other, auth(204, "a", "p"))
    assert answer.result.result_code == ResultCode.INVALID_LOGIN_PASSWORD


# --- QR_GENERATE and QR_GET_STATUS (2.0.4) ---


def qr(command: int, invoice: int, amount: int | None = None) -> Any:
    return build_qr(SCHEMAS[204], command, invoice_id=invoice, amount=amount)


async def test_qr_generate_and_status_through_a_payment(
    gateway: RunningGateway, database_url: str, conn: asyncpg.Connection
) -> None:
    device, _ = await device_and_org(gateway, database_url, conn, 204)
    token = device.token
    made = await ask(device, qr(Command.QR_GENERATE, 555, 1_234_50))
    assert made.result.result_code == ResultCode.OK
    assert made.command == Command.QR_GENERATE
    assert made.qr.status == qr_payments.NEW
    assert "i=555&s=1234.50" in made.qr.qr_code
    assert unchanged_token(device, token)
    # The same invoice again: the same QR (a device that lost the answer).
    again = await ask(device, qr(Command.QR_GENERATE, 555, 1_234_50))
    assert again.qr.qr_code == made.qr.qr_code
    # The same invoice for another amount: refused.
    other = await ask(device, qr(Command.QR_GENERATE, 555, 99))
    assert other.result.result_code == ResultCode.INCORRECT_REQUEST_DATA
    assert other.result.result_text.startswith("qr.invoice_id:")

    for status in (qr_payments.SCANNED, qr_payments.AUTH, qr_payments.PAID):
        await qr_payments.set_status(conn, device.system_id, 555, status)
        seen = await ask(device, qr(Command.QR_GET_STATUS, 555))
        assert seen.result.result_code == ResultCode.OK
        assert seen.command == Command.QR_GET_STATUS
        assert (seen.qr.status, seen.qr.qr_code) == (status, made.qr.qr_code)
    with pytest.raises(qr_payments.QrError, match="PAID cannot become"):
        await qr_payments.set_status(conn, device.system_id, 555, qr_payments.REJECTED)
    assert unchanged_token(device, token)


async def test_qr_status_of_an_unknown_invoice_is_refused(
    gateway: RunningGateway, database_url: str, conn: asyncpg.Connection
) -> None:
    device, _ = await device_and_org(gateway, database_url, conn, 204)
    answer = await ask(device, qr(Command.QR_GET_STATUS, 9))
    assert answer.result.result_code == ResultCode.INCORRECT_REQUEST_DATA
    assert answer.result.result_text.startswith("qr.invoice_id:")


@pytest.mark.parametrize("command", [Command.QR_GENERATE, Command.QR_GET_STATUS])
async def test_qr_commands_are_unknown_in_203(
    gateway: RunningGateway, database_url: str, command: int
) -> None:
    device = await register_device(database_url)
    kkm = kkm_for(gateway, 203, device.system_id, device.token)
    # A 2.0.4 QR request, whole, in a 2.0.3 frame.
    body = qr(command, 5, 100).SerializeToString()
    frame = encode(203, device.system_id, device.token, 1, body)
    answer = SCHEMAS[203].Response.FromString((await kkm.exchange_raw(frame))[HEADER_SIZE:])
    assert answer.result.result_code == ResultCode.UNKNOWN_COMMAND
    assert str(command) in answer.result.result_text


# --- what the plain functions refuse ---


async def test_a_catalogue_that_cannot_be_published(
    gateway: RunningGateway, database_url: str, conn: asyncpg.Connection
) -> None:
    _, org = await device_and_org(gateway, database_url, conn, 204)
    for elements, reason in (
        ((), "at least one"),
        ((Element(1, "a"), Element(1, "b")), "repeat"),
        ((Element(2, "a", parent_group_id=9),), "no group 9"),
        ((Element(1, "a", description="ж" * 500_000),), "more than one answer frame"),
    ):
        with pytest.raises(CatalogueError, match=reason):
            await publish(conn, org, elements, created_at=CREATED)
    assert await conn.fetchval("SELECT count(*) FROM nomenclature_versions") == 0


async def test_an_operator_that_cannot_be_added(
    gateway: RunningGateway, database_url: str, conn: asyncpg.Connection
) -> None:
    _, org = await device_and_org(gateway, database_url, conn, 204)
    for login, password, roles in (("", "p", [PAYMASTER]), ("a", "p", []), ("a", "p", [4])):
        with pytest.raises(OperatorError):
            await add_operator(
                conn, org, login=login, password=password, code=1, name="", roles=roles
            )


async def test_a_qr_status_moves_only_along_its_transitions(
    gateway: RunningGateway, database_url: str, conn: asyncpg.Connection
) -> None:
    device, _ = await device_and_org(gateway, database_url, conn, 204)
    assert (await ask(device, qr(Command.QR_GENERATE, 1))).qr.status == qr_payments.NEW
    with pytest.raises(qr_payments.QrError, match="NEW cannot become PAID"):
        await qr_payments.set_status(conn, device.system_id, 1, qr_payments.PAID)
    with pytest.raises(qr_payments.QrError, match="no QR"):
        await qr_payments.set_status(conn, device.system_id, 2, qr_payments.SCANNED)
    await qr_payments.set_status(conn, device.system_id, 1, qr_payments.REJECTED)
    assert (await ask(device, qr(Command.QR_GET_STATUS, 1))).qr.status == qr_payments.REJECTED
