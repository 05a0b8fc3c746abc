"""The device protocol over gRPC (ofdproto.ingest.v1.Ingest): the wire cases of
test_session_wire.py, sent as Frame bodies with the header in metadata, get the TCP answers.

The answer's header values come back in metadata (Exchange) or in the answer Frame (Stream);
each answer is re-assembled into the TCP frame it stands for and decoded the same way, so the
assertions read like the TCP ones. Health and reflection are served on the same port.
"""

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from conftest import register_device
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from wire import (
    UNKNOWN_SYSTEM_ID,
    VERSIONS,
    Answer,
    ask,
    body,
    command_body,
    decode,
    device_row,
    journaled,
    ticket,
)

from ingest.app import RunningGateway
from ingest.codec import encode
from ingest.control.methods import SERVICE as CONTROL_SERVICE
from ingest.grpc_ingest import SERVICE as INGEST_SERVICE
from ledger.schemas import SCHEMAS
from ledger.wire import Command, ResultCode
from ofdproto.ingest.v1 import ingest_pb2 as pb
from simulators.receipts import build_system

DEADLINE = 10.0

Metadata = Sequence[tuple[str, str]]


@pytest.fixture
async def channel(gateway: RunningGateway) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as opened:
        yield opened


def header_metadata(version: int, device_id: int, token: int, request_number: int) -> Metadata:
    return (
        ("x-kkm-id", str(device_id)),
        ("x-kkm-token", str(token)),
        ("x-kkm-request-number", str(request_number)),
        ("x-kkm-version", str(version)),
    )


class IngestClient:
    """Exchange calls, each answer re-assembled as the TCP frame its metadata describes."""

    def __init__(self, channel: grpc.aio.Channel, tcp_port: int) -> None:
        self.tcp_port = tcp_port  # the same gateway's TCP port, to compare answers
        self._exchange = channel.unary_unary(
            f"/{INGEST_SERVICE}/Exchange",
            request_serializer=pb.Frame.SerializeToString,
            response_deserializer=pb.Frame.FromString,
        )

    async def exchange_raw(self, metadata: Metadata, request: bytes) -> Answer:
        call = self._exchange(pb.Frame(body=request), metadata=metadata, timeout=DEADLINE)
        response = await call
        received = dict(await call.initial_metadata() or ())
        raw = encode(
            int(received["x-kkm-version"]),
            int(received["x-kkm-id"]),
            int(received["x-kkm-token"]),
            int(received["x-kkm-request-number"]),
            response.body,
        )
        return decode(raw)

    async def exchange(
        self, version: int, device_id: int, token: int, request_number: int, request: bytes
    ) -> Answer:
        metadata = header_metadata(version, device_id, token, request_number)
        return await self.exchange_raw(metadata, request)


@pytest.fixture
def ingest(gateway: RunningGateway, channel: grpc.aio.Channel) -> IngestClient:
    return IngestClient(channel, gateway.tcp.port)


# --- OK, the fiscal sign and the rotated token ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_ticket_is_accepted_with_fiscal_sign_and_rotated_token(
    ingest: IngestClient, database_url: str, tmp_path: Path, version: int
) -> None:
    device = await register_device(database_url)
    answer = await ingest.exchange(
        version, device.system_id, device.token, 1, body(ticket(version))
    )
    assert answer.code == ResultCode.OK
    assert answer.response.command == Command.TICKET
    assert len(answer.response.ticket.ticket_number) == 10
    assert answer.header.version == version
    assert answer.header.device_id == device.system_id
    assert answer.header.request_number == 1
    rotated = answer.header.token
    assert rotated != device.token
    row = await device_row(database_url, device.system_id)
    assert (row["token"], row["documents_accepted"]) == (rotated, 1)
    assert journaled(tmp_path, device.system_id) == [f"{device.system_id}/s1/d1"]

    following = await ingest.exchange(
        version, device.system_id, rotated, 2, body(ticket(version, 2))
    )
    assert following.code == ResultCode.OK
    assert following.header.token != rotated


@pytest.mark.parametrize("version", VERSIONS)
async def test_retry_gets_the_identical_answer_on_either_transport_and_counts_once(
    gateway: RunningGateway,
    ingest: IngestClient,
    database_url: str,
    tmp_path: Path,
    version: int,
) -> None:
    """A resent Exchange gets the same body and metadata; the same request sent as a TCP frame
    gets that answer's very bytes too: one session, whatever the transport."""
    device = await register_device(database_url)
    request = body(ticket(version))
    first = await ingest.exchange(version, device.system_id, device.token, 1, request)
    assert first.code == ResultCode.OK
    again = await ingest.exchange(version, device.system_id, device.token, 1, request)
    assert again.raw == first.raw
    over_tcp = await ask(
        gateway.tcp.port, encode(version, device.system_id, device.token, 1, request)
    )
    assert over_tcp.raw == first.raw
    row = await device_row(database_url, device.system_id)
    assert (row["token"], row["documents_accepted"]) == (first.header.token, 1)
    assert journaled(tmp_path, device.system_id) == [f"{device.system_id}/s1/d1"]


# --- the session result codes ---


@pytest.mark.parametrize("version", VERSIONS)
async def test_unknown_system_id_is_unknown_id(ingest: IngestClient, version: int) -> None:
    request = body(build_system(SCHEMAS[version]))
    answer = await ingest.exchange(version, UNKNOWN_SYSTEM_ID, 0xDEADBEEF, 7, request)
    assert answer.code == ResultCode.UNKNOWN_ID
    assert (answer.header.device_id, answer.header.token) == (UNKNOWN_SYSTEM_ID, 0xDEADBEEF)
    assert answer.header.request_number == 7


@pytest.mark.parametrize("version", VERSIONS)
async def test_wrong_token_is_invalid_token_with_its_own_token_echoed(
    ingest: IngestClient, database_url: str, version: int
) -> None:
    device = await register_device(database_url)
    wrong = device.token ^ 0x80000001
    answer = await ingest.exchange(version, device.system_id, wrong, 1, body(ticket(version)))
    assert answer.code == ResultCode.INVALID_TOKEN
    assert answer.header.token == wrong
    assert (await device_row(database_url, device.system_id))["token"] == device.token


@pytest.mark.parametrize("version", VERSIONS)
async def test_new_token_with_the_same_request_number_is_invalid_request_number(
    ingest: IngestClient, database_url: str, version: int
) -> None:
    device = await register_device(database_url)
    first = await ingest.exchange(version, device.system_id, device.token, 5, body(ticket(version)))
    assert first.code == ResultCode.OK
    t2 = first.header.token
    answer = await ingest.exchange(version, device.system_id, t2, 5, body(ticket(version, 2)))
    assert answer.code == ResultCode.INVALID_REQUEST_NUMBER
    assert (answer.header.token, answer.header.request_number) == (t2, 5)


@pytest.mark.parametrize("version", VERSIONS)
async def test_same_token_and_number_with_another_command_is_invalid_retry(
    ingest: IngestClient, database_url: str, version: int
) -> None:
    device = await register_device(database_url)
    first = await ingest.exchange(version, device.system_id, device.token, 9, body(ticket(version)))
    assert first.code == ResultCode.OK
    system = body(build_system(SCHEMAS[version]))
    answer = await ingest.exchange(version, device.system_id, device.token, 9, system)
    assert answer.code == ResultCode.INVALID_RETRY_REQUEST
    assert answer.response.command == Command.SYSTEM
    assert (await device_row(database_url, device.system_id))["token"] == first.header.token


@pytest.mark.parametrize(
    ("version", "command", "code"),
    [
        (203, 55, ResultCode.UNKNOWN_COMMAND),
        (204, 55, ResultCode.UNKNOWN_COMMAND),
        (204, 7, ResultCode.UNKNOWN_COMMAND),  # CANCEL_TICKET is reserved in 2.0.4 ...
        (203, 7, ResultCode.UNSUPPORTED_COMMAND),  # ... but known (and not served) in 2.0.3
    ],
)
async def test_unknown_and_unsupported_commands_get_the_tcp_answer(
    ingest: IngestClient, database_url: str, version: int, command: int, code: ResultCode
) -> None:
    """The answer is the TCP one byte for byte (a refusal changes nothing, so the same frame
    sent over TCP afterwards is answered the same)."""
    device = await register_device(database_url)
    request = command_body(command)
    answer = await ingest.exchange(version, device.system_id, device.token, 1, request)
    assert answer.code == code, answer.response.result.result_text
    assert answer.header.token == device.token
    frame = encode(version, device.system_id, device.token, 1, request)
    assert (await ask(ingest.tcp_port, frame)).raw == answer.raw


# --- header values the gateway cannot read: PROTOCOL_ERROR answers, not gRPC errors ---


@pytest.mark.parametrize("version", [202, 205])
async def test_unserved_version_is_protocol_error_echoing_the_header(
    ingest: IngestClient, database_url: str, version: int
) -> None:
    device = await register_device(database_url)
    request = body(build_system(SCHEMAS[203]))
    answer = await ingest.exchange(version, device.system_id, device.token, 42, request)
    assert answer.code == ResultCode.PROTOCOL_ERROR
    assert answer.header.version == version
    assert (answer.header.device_id, answer.header.token) == (device.system_id, device.token)
    assert answer.header.request_number == 42
    assert str(version) in answer.response.result.result_text


@pytest.mark.parametrize(
    ("spoil", "named"),
    [
        pytest.param(lambda md: md[1:], "x-kkm-id", id="id-missing"),
        pytest.param(lambda md: [("x-kkm-id", "12ab"), *md[1:]], "x-kkm-id", id="id-not-number"),
        pytest.param(
            lambda md: [*md[:2], ("x-kkm-request-number", "65536"), md[3]],
            "x-kkm-request-number",
            id="request-number-over-u16",
        ),
        pytest.param(lambda md: [*md, ("x-kkm-token", "1")], "x-kkm-token", id="token-twice"),
        pytest.param(lambda md: md[:3], "x-kkm-version", id="version-missing"),
    ],
)
async def test_bad_metadata_is_protocol_error(
    ingest: IngestClient, database_url: str, spoil: Any, named: str
) -> None:
    device = await register_device(database_url)
    metadata = list(header_metadata(204, device.system_id, device.token, 3))
    answer = await ingest.exchange_raw(spoil(metadata), body(ticket(204)))
    assert answer.code == ResultCode.PROTOCOL_ERROR
    assert named in answer.response.result.result_text
    assert (await device_row(database_url, device.system_id))["documents_accepted"] == 0


@pytest.mark.parametrize("version", VERSIONS)
async def test_body_that_does_not_parse_is_protocol_error(
    ingest: IngestClient, database_url: str, version: int
) -> None:
    device = await register_device(database_url)
    answer = await ingest.exchange(version, device.system_id, device.token, 1, b"\xff\xff")
    assert answer.code == ResultCode.PROTOCOL_ERROR
    assert answer.header.token == device.token


# --- the bidirectional stream ---


def stream_call(channel: grpc.aio.Channel, metadata: Metadata) -> Any:
    return channel.stream_stream(
        f"/{INGEST_SERVICE}/Stream",
        request_serializer=pb.Frame.SerializeToString,
        response_deserializer=pb.Frame.FromString,
    )(metadata=metadata, timeout=DEADLINE)


@pytest.mark.parametrize("version", VERSIONS)
async def test_stream_serves_one_devices_requests_in_order(
    channel: grpc.aio.Channel, database_url: str, version: int
) -> None:
    """Tickets on one stream, each with the token the previous answer carried; a resent one
    gets its answer again; answers come in order, one per request."""
    device = await register_device(database_url)
    call = stream_call(
        channel, (("x-kkm-id", str(device.system_id)), ("x-kkm-version", str(version)))
    )
    token = device.token
    answers: list[pb.Frame] = []
    for number in (1, 2, 3):
        request = pb.Frame(body=body(ticket(version, number)), token=token, request_number=number)
        await call.write(request)
        answers.append(await call.read())
        assert answers[-1].request_number == number
        response = SCHEMAS[version].Response.FromString(answers[-1].body)
        assert response.result.result_code == ResultCode.OK
        assert answers[-1].token != token
        token = answers[-1].token
    # The last request again, as sent: the stored answer, byte for byte.
    await call.write(
        pb.Frame(body=body(ticket(version, 3)), token=answers[1].token, request_number=3)
    )
    assert await call.read() == answers[-1]
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    received = dict(await call.initial_metadata() or ())
    assert received == {"x-kkm-id": str(device.system_id), "x-kkm-version": str(version)}
    row = await device_row(database_url, device.system_id)
    assert (row["token"], row["documents_accepted"]) == (token, 3)


async def test_stream_with_unreadable_call_metadata_gets_one_protocol_error_and_ends(
    channel: grpc.aio.Channel,
) -> None:
    call = stream_call(channel, (("x-kkm-version", "204"),))
    await call.write(pb.Frame(body=body(ticket(204)), token=1, request_number=1))
    answer = await call.read()
    response = SCHEMAS[204].Response.FromString(answer.body)
    assert response.result.result_code == ResultCode.PROTOCOL_ERROR
    assert "x-kkm-id" in response.result.result_text
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


# --- health and reflection: device ingest and the control API on separate ports ---


@pytest.mark.parametrize("service", ["", INGEST_SERVICE])
async def test_health_check_is_serving(channel: grpc.aio.Channel, service: str) -> None:
    """The ingest port reports itself and its service SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_control_api_is_not_reachable_on_the_ingest_port(
    gateway: RunningGateway, channel: grpc.aio.Channel
) -> None:
    """Devices reach ingest only: the control API (unauthenticated) lives on its own port."""
    assert gateway.grpc_port != gateway.control_port
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Check(health_pb2.HealthCheckRequest(service=CONTROL_SERVICE), timeout=DEADLINE)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.control_port}") as control:
        control_health = health_pb2_grpc.HealthStub(control)
        reply = await control_health.Check(
            health_pb2.HealthCheckRequest(service=CONTROL_SERVICE), timeout=DEADLINE
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_and_describes_the_services(channel: grpc.aio.Channel) -> None:
    """Reflection on the ingest port lists ingest and health, not the control API."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=INGEST_SERVICE),
    ]
    replies = [reply async for reply in stub.ServerReflectionInfo(iter(requests), timeout=DEADLINE)]
    listed = {service.name for service in replies[0].list_services_response.service}
    assert {INGEST_SERVICE, "grpc.health.v1.Health"} <= listed
    assert CONTROL_SERVICE not in listed
    assert replies[1].file_descriptor_response.file_descriptor_proto
