"""Every session result code at the wire: real frames into the gateway's socket, answers decoded
from the bytes that come back (18-byte header, then a Response of the header's version).

These are the rules of protocol.md "Token, request number and retries" as a device meets them,
in both served versions: who may talk, which token is the last one issued, what counts as a
retry, and that a retry is answered byte for byte as the first time and counted once.
"""

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import register_device
from wire import (
    UNKNOWN_SYSTEM_ID,
    VERSIONS,
    ask,
    body,
    command_body,
    connect,
    decode,
    device_row,
    empty_ticket_body,
    journaled,
    kkm_for,
    ticket,
)

from ingest.app import RunningGateway
from ingest.codec import FrameHeader, encode
from ledger.schemas import SCHEMAS
from ledger.wire import HEADER, Command, ResultCode
from simulators.kkm import SimulatedKkm
from simulators.receipts import build_info, build_system

# --- UNKNOWN_ID (1) ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_unknown_system_id_is_refused_unknown_id(
    gateway: RunningGateway, version: int
) -> None:
    """An id the OFD never issued gets UNKNOWN_ID, with id, token and request number echoed."""
    frame = encode(version, UNKNOWN_SYSTEM_ID, 0xDEADBEEF, 7, body(build_system(SCHEMAS[version])))
    answer = await ask(gateway.tcp.port, frame)
    assert answer.code == ResultCode.UNKNOWN_ID
    assert answer.header == FrameHeader(version, len(answer.raw), UNKNOWN_SYSTEM_ID, 0xDEADBEEF, 7)
    assert answer.response.command == Command.SYSTEM


@pytest.mark.parametrize("version", VERSIONS)
async def test_device_not_activated_is_refused_unknown_id(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """A device still awaiting registration gets UNKNOWN_ID even with its right token."""
    device = await register_device(database_url, activate=False)
    frame = encode(version, device.system_id, device.token, 1, body(ticket(version)))
    answer = await ask(gateway.tcp.port, frame)
    assert answer.code == ResultCode.UNKNOWN_ID
    assert answer.header.token == device.token
    assert (await device_row(database_url, device.system_id))["documents_accepted"] == 0


# --- INVALID_TOKEN (2) ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_wrong_token_is_refused_with_the_devices_own_token_echoed(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """A made-up or stale token gets INVALID_TOKEN; the header echoes it, never the current one."""
    device = await register_device(database_url)
    port = gateway.tcp.port
    wrong = device.token ^ 0x80000001
    answer = await ask(port, encode(version, device.system_id, wrong, 1, body(ticket(version))))
    assert answer.code == ResultCode.INVALID_TOKEN
    assert answer.header.token == wrong

    # Rotate the token (T1 -> T2); T1 on a new request number is now stale.
    accepted = await ask(
        port, encode(version, device.system_id, device.token, 2, body(ticket(version)))
    )
    assert accepted.code == ResultCode.OK
    current = accepted.header.token
    assert current != device.token
    stale = await ask(
        port, encode(version, device.system_id, device.token, 3, body(ticket(version, 2)))
    )
    assert stale.code == ResultCode.INVALID_TOKEN
    assert stale.header.token == device.token
    assert stale.header.request_number == 3
    assert (await device_row(database_url, device.system_id))["token"] == current


# --- INVALID_REQUEST_NUMBER (8) ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_new_token_with_the_same_request_number_is_invalid_request_number(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """After a TICKET rotated T1 -> T2, T2 with the same request number gets code 8."""
    device = await register_device(database_url)
    port = gateway.tcp.port
    first = await ask(
        port, encode(version, device.system_id, device.token, 5, body(ticket(version)))
    )
    assert first.code == ResultCode.OK
    t2 = first.header.token
    answer = await ask(port, encode(version, device.system_id, t2, 5, body(ticket(version, 2))))
    assert answer.code == ResultCode.INVALID_REQUEST_NUMBER
    assert answer.header.token == t2
    assert answer.header.request_number == 5
    row = await device_row(database_url, device.system_id)
    assert (row["token"], row["documents_accepted"]) == (t2, 1)


# --- INVALID_RETRY_REQUEST (9) ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_same_token_and_number_with_another_command_is_invalid_retry(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """The last accepted request's token and number with another command gets code 9."""
    device = await register_device(database_url)
    port = gateway.tcp.port
    first = await ask(
        port, encode(version, device.system_id, device.token, 9, body(ticket(version)))
    )
    assert first.code == ResultCode.OK
    system = body(build_system(SCHEMAS[version]))
    answer = await ask(port, encode(version, device.system_id, device.token, 9, system))
    assert answer.code == ResultCode.INVALID_RETRY_REQUEST
    assert answer.response.command == Command.SYSTEM
    assert answer.header.token == device.token
    assert (await device_row(database_url, device.system_id))["token"] == first.header.token


# --- retries ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_resent_ticket_gets_the_identical_answer_and_counts_once(
    gateway: RunningGateway, database_url: str, tmp_path: Path, version: int
) -> None:
    """The same TICKET frame resent is answered with the very same bytes and counted once."""
    device = await register_device(database_url)
    kkm = kkm_for(gateway, version, device.system_id, device.token)
    first = await kkm.send(ticket(version))
    assert first.result.result_code == ResultCode.OK
    first_frame = kkm.last_response_frame
    request_frame = kkm.last_request_frame
    assert request_frame is not None

    again = await kkm.retransmit()
    assert kkm.last_response_frame == first_frame  # header (new token) and body, byte for byte
    assert again.ticket.ticket_number == first.ticket.ticket_number
    # Resent on a connection of its own, the raw frame gets the same bytes too.
    assert (await ask(gateway.tcp.port, request_frame)).raw == first_frame
    assert decode(first_frame).header.token == kkm.token != device.token

    row = await device_row(database_url, device.system_id)
    assert (row["documents_accepted"], row["token"]) == (1, kkm.token)
    assert journaled(tmp_path, device.system_id) == [f"{device.system_id}/s1/d1"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_ticket_whose_answer_was_lost_is_answered_on_retransmit_and_counts_once(
    gateway: RunningGateway, database_url: str, tmp_path: Path, version: int
) -> None:
    """send_and_drop then retransmit: the retry gets the original answer; one document."""
    device = await register_device(database_url)
    kkm = kkm_for(gateway, version, device.system_id, device.token)
    await kkm.send_and_drop(ticket(version))
    answer = await kkm.retransmit()
    assert answer.result.result_code == ResultCode.OK
    assert len(answer.ticket.ticket_number) == 10
    first_frame = kkm.last_response_frame
    assert kkm.token != device.token

    await kkm.retransmit()
    assert kkm.last_response_frame == first_frame
    row = await device_row(database_url, device.system_id)
    assert (row["documents_accepted"], row["token"]) == (1, kkm.token)
    assert journaled(tmp_path, device.system_id) == [f"{device.system_id}/s1/d1"]

    # The rotated token goes on working, and only the last request may be retried.
    second = await kkm.send(ticket(version, 2))
    assert second.result.result_code == ResultCode.OK
    assert second.ticket.ticket_number != answer.ticket.ticket_number
    first_frame_again = encode(version, device.system_id, device.token, 1, body(ticket(version)))
    old = decode(await kkm.exchange_raw(first_frame_again))
    assert old.code == ResultCode.INVALID_TOKEN
    assert (await device_row(database_url, device.system_id))["documents_accepted"] == 2


# --- token rotation and number ranges ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_token_rotates_on_ticket_only(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """SYSTEM and INFO answers carry the token sent; a TICKET answer carries a new one."""
    device = await register_device(database_url)
    kkm = kkm_for(gateway, version, device.system_id, device.token)
    schema = SCHEMAS[version]
    for request in (
        build_system(schema),
        build_system(schema, get_reg_info=True),
        build_info(schema),
    ):
        assert (await kkm.send(request)).result.result_code == ResultCode.OK
        assert kkm.last_response_header is not None
        assert kkm.last_response_header.token == device.token
    assert (await kkm.send(ticket(version))).result.result_code == ResultCode.OK
    assert kkm.last_response_header is not None
    rotated = kkm.last_response_header.token
    assert rotated != device.token
    assert (await kkm.send(build_system(schema))).result.result_code == ResultCode.OK
    assert kkm.last_response_header.token == rotated
    assert (await device_row(database_url, device.system_id))["token"] == rotated


@pytest.mark.parametrize("version", VERSIONS)
async def test_request_number_wraps_from_65535_to_0(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """Request numbers 65535, then 0, then 1 are all new requests, accepted."""
    device = await register_device(database_url)
    kkm = SimulatedKkm(
        "127.0.0.1",
        gateway.tcp.port,
        version=version,
        system_id=device.system_id,
        token=device.token,
        request_number=65534,
    )
    seen = []
    for n, request in enumerate(
        (ticket(version, 1), ticket(version, 2), build_info(SCHEMAS[version]))
    ):
        response = await kkm.send(request)
        assert response.result.result_code == ResultCode.OK, n
        assert kkm.last_response_header is not None
        seen.append(kkm.last_response_header.request_number)
    assert seen == [65535, 0, 1]
    row = await device_row(database_url, device.system_id)
    assert (row["documents_accepted"], row["last_request_number"]) == (2, 1)


@pytest.mark.parametrize("version", VERSIONS)
async def test_tokens_above_2_31_are_accepted_and_survive_rotation(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """A u32 token near 2^32 works, and rotated tokens above 2^31 come back intact and work."""
    device = await register_device(database_url, token=0xFFFFFFF0)
    kkm = kkm_for(gateway, version, device.system_id, device.token)
    issued = [device.token]
    # Half the rotated tokens are above 2^31; keep going until one was issued and then used.
    for document in range(1, 41):
        response = await kkm.send(ticket(version, document))
        assert response.result.result_code == ResultCode.OK, f"token {issued[-1]:#x}"
        assert kkm.last_response_header is not None
        issued.append(kkm.last_response_header.token)
        if any(t >= 2**31 for t in issued[1:-1]):
            break
    assert any(t >= 2**31 for t in issued[1:-1])
    assert len(set(issued)) == len(issued)
    assert (await device_row(database_url, device.system_id))["token"] == issued[-1] == kkm.token


# --- frames and bodies the gateway cannot serve ---


@pytest.mark.parametrize("version", [202, 205])
async def test_unserved_version_is_answered_protocol_error_then_closed(
    gateway: RunningGateway, database_url: str, version: int
) -> None:
    """2.0.2 or 2.0.5 gets PROTOCOL_ERROR echoing id and request number, then the server closes."""
    device = await register_device(database_url)
    frame = encode(version, device.system_id, device.token, 42, body(build_system(SCHEMAS[203])))
    async with connect(gateway.tcp.port) as link:
        await link.send(frame)
        answer = decode(await link.read_frame())
        assert await link.read_to_eof() == b""
    assert answer.code == ResultCode.PROTOCOL_ERROR
    assert answer.header == FrameHeader(
        version, len(answer.raw), device.system_id, device.token, 42
    )
    assert str(version) in answer.response.result.result_text


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "bad_body",
    [
        pytest.param(lambda _: b"", id="empty"),
        pytest.param(lambda _: b"\xff\xff\xff\xff", id="garbage"),
        pytest.param(lambda v: body(ticket(v))[:-7], id="truncated-ticket"),
        pytest.param(lambda v: body(ticket(v)) + b"\x12\x05ab", id="trailing-junk"),
        pytest.param(empty_ticket_body, id="ticket-missing-required-fields"),
    ],
)
async def test_body_that_does_not_parse_is_protocol_error_and_connection_stays_usable(
    gateway: RunningGateway, database_url: str, version: int, bad_body: Callable[[int], bytes]
) -> None:
    """An unparsable body gets PROTOCOL_ERROR; the next frame on the same connection is served."""
    device = await register_device(database_url)
    async with connect(gateway.tcp.port) as link:
        refused = await link.ask(
            encode(version, device.system_id, device.token, 1, bad_body(version))
        )
        assert refused.code == ResultCode.PROTOCOL_ERROR
        assert refused.header.token == device.token
        assert refused.header.request_number == 1
        good = encode(version, device.system_id, device.token, 2, body(ticket(version)))
        accepted = await link.ask(good)
        assert accepted.code == ResultCode.OK
        assert accepted.header.token != device.token


@pytest.mark.parametrize(
    ("version", "command", "code"),
    [
        (203, 55, ResultCode.UNKNOWN_COMMAND),
        (204, 55, ResultCode.UNKNOWN_COMMAND),
        (203, 9, ResultCode.UNKNOWN_COMMAND),  # retired OPEN_SHIFT
        (204, 9, ResultCode.UNKNOWN_COMMAND),
        (204, 7, ResultCode.UNKNOWN_COMMAND),  # CANCEL_TICKET is reserved in 2.0.4 ...
        (203, 7, ResultCode.UNSUPPORTED_COMMAND),  # ... but known in 2.0.3
        (203, 100, ResultCode.UNKNOWN_COMMAND),  # QR_GENERATE is 2.0.4 only
        (203, 101, ResultCode.UNKNOWN_COMMAND),  # QR_GET_STATUS too
        (203, Command.RESERVED, ResultCode.UNSUPPORTED_COMMAND),
        (204, Command.RESERVED, ResultCode.UNSUPPORTED_COMMAND),
    ],
)
async def test_unknown_and_unsupported_commands(
    gateway: RunningGateway, database_url: str, version: int, command: int, code: ResultCode
) -> None:
    """A command the version does not define gets code 4; a defined one not served gets code 5."""
    device = await register_device(database_url)
    frame = encode(version, device.system_id, device.token, 1, command_body(command))
    answer = await ask(gateway.tcp.port, frame)
    assert answer.code == code, answer.response.result.result_text
    assert answer.header.token == device.token
    assert answer.response.command == (command if code == ResultCode.UNSUPPORTED_COMMAND else 0)
    assert str(command) in answer.response.result.result_text


def _line_sum_off(request: Any) -> None:
    request.ticket.items[0].commodity.sum.bills += 1


def _payment_short(request: Any) -> None:
    request.ticket.payments[0].sum.coins += 1


def _total_coins(request: Any) -> None:
    request.ticket.amounts.total.coins = 150


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        (_line_sum_off, "items[0].commodity.sum"),
        (_payment_short, "payments"),
        (_total_coins, "amounts.total.coins"),
    ],
)
async def test_ticket_with_bad_arithmetic_is_incorrect_request_data(
    gateway: RunningGateway,
    database_url: str,
    version: int,
    spoil: Callable[[Any], None],
    field: str,
) -> None:
    """A receipt that does not add up gets code 13 naming the field; the token does not rotate."""
    device = await register_device(database_url)
    kkm = kkm_for(gateway, version, device.system_id, device.token)
    bad = ticket(version)
    spoil(bad)
    response = await kkm.send(bad)
    assert response.result.result_code == ResultCode.INCORRECT_REQUEST_DATA
    assert response.result.result_text.startswith(field)
    assert not response.ticket.ticket_number
    assert kkm.last_response_header is not None
    assert kkm.last_response_header.token == device.token
    row = await device_row(database_url, device.system_id)
    assert (row["token"], row["documents_accepted"]) == (device.token, 0)


# --- after a refusal ---


async def _refuse_wrong_token(kkm: SimulatedKkm, last: bytes) -> Any:
    own = kkm.token
    kkm.enter_token(own ^ 0x12345)
    try:
        return await kkm.send(ticket(kkm.version, 9))
    finally:
        kkm.enter_token(own)


async def _refuse_unparsable(kkm: SimulatedKkm, last: bytes) -> Any:
    return await kkm.send(b"\xff\xff")


async def _refuse_unknown_command(kkm: SimulatedKkm, last: bytes) -> Any:
    return await kkm.send(command_body(55))


async def _refuse_unsupported(kkm: SimulatedKkm, last: bytes) -> Any:
    return await kkm.send(command_body(Command.RESERVED))


async def _refuse_bad_arithmetic(kkm: SimulatedKkm, last: bytes) -> Any:
    bad = ticket(kkm.version, 9)
    _line_sum_off(bad)
    return await kkm.send(bad)


async def _refuse_invalid_retry(kkm: SimulatedKkm, last: bytes) -> Any:
    # The last accepted request's header, another command.
    header = HEADER.unpack_from(last)
    system = body(build_system(kkm.schema))
    frame = encode(kkm.version, header[3], header[4], header[5], system)
    return decode(await kkm.exchange_raw(frame)).response


async def _refuse_invalid_number(kkm: SimulatedKkm, last: bytes) -> Any:
    # The current token with the last accepted request's number.
    header = HEADER.unpack_from(last)
    frame = encode(kkm.version, header[3], kkm.token, header[5], body(ticket(kkm.version, 9)))
    return decode(await kkm.exchange_raw(frame)).response


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("refuse", "code"),
    [
        (_refuse_wrong_token, ResultCode.INVALID_TOKEN),
        (_refuse_unparsable, ResultCode.PROTOCOL_ERROR),
        (_refuse_unknown_command, ResultCode.UNKNOWN_COMMAND),
        (_refuse_unsupported, ResultCode.UNSUPPORTED_COMMAND),
        (_refuse_bad_arithmetic, ResultCode.INCORRECT_REQUEST_DATA),
        (_refuse_invalid_retry, ResultCode.INVALID_RETRY_REQUEST),
        (_refuse_invalid_number, ResultCode.INVALID_REQUEST_NUMBER),
    ],
)
async def test_next_valid_request_after_a_refusal_is_accepted(
    gateway: RunningGateway,
    database_url: str,
    version: int,
    refuse: Callable[[SimulatedKkm, bytes], Awaitable[Any]],
    code: ResultCode,
) -> None:
    """A refused request changes nothing: the device's next request with its last token is OK."""
    device = await register_device(database_url)
    kkm = kkm_for(gateway, version, device.system_id, device.token)
    assert (await kkm.send(ticket(version, 1))).result.result_code == ResultCode.OK
    last = kkm.last_request_frame
    assert last is not None
    token = kkm.token

    refused = await refuse(kkm, last)
    assert refused.result.result_code == code
    assert kkm.token == token

    response = await kkm.send(ticket(version, 2))
    assert response.result.result_code == ResultCode.OK
    assert kkm.token != token
    assert (await device_row(database_url, device.system_id))["documents_accepted"] == 2
