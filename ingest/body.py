"""Frame bodies: parsing a Request and building the answers every command can get.

Refusal answers carry only `command` and `result`, which have the same numbers in 2.0.3 and
2.0.4, so they can be built with either schema; the request's own version is used anyway.
"""

from types import ModuleType
from typing import Any

from google.protobuf.message import DecodeError

from ingest.codec import FrameHeader, encode
from ledger.errors import Refusal
from ledger.schemas import SCHEMAS
from ledger.wire import HEADER_SIZE, ResultCode

_FIELD_COMMAND_TAG = 0x08  # field 1, varint
_VARINT_CONTINUES = 0x80


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & _VARINT_CONTINUES:
            return value, pos
        shift += 7


def peek_command(body: bytes) -> int | None:
    """The raw value of Request.command (field 1), even when the body does not parse whole.

    Lets an unknown command be answered UNKNOWN_COMMAND rather than PROTOCOL_ERROR: proto2
    parses an unknown enum value as missing, which would fail the required field.
    """
    pos = 0
    try:
        while pos < len(body):
            tag, pos = _read_varint(body, pos)
            wire_type = tag & 7
            if tag == _FIELD_COMMAND_TAG:
                return _read_varint(body, pos)[0]
            if wire_type == 0:
                pos = _read_varint(body, pos)[1]
            elif wire_type == 1:
                pos += 8
            elif wire_type == 2:
                length, pos = _read_varint(body, pos)
                pos += length
            elif wire_type == 5:
                pos += 4
            else:
                return None
    except ValueError:
        return None
    return None


def parse_request(schema: ModuleType, body: bytes) -> Any:
    """The Request in `body`; raises Refusal with UNKNOWN_COMMAND or PROTOCOL_ERROR.

    The Python runtime does not enforce proto2's required fields while parsing (an empty body,
    or an unknown command value, would parse as a SYSTEM request), so they are checked here.
    """
    try:
        request = schema.Request.FromString(body)
    except DecodeError as err:
        raise _unparsable(schema, body, str(err)) from err
    if not request.IsInitialized():
        missing = ", ".join(request.FindInitializationErrors())
        raise _unparsable(schema, body, f"required fields missing: {missing}")
    return request


def _unparsable(schema: ModuleType, body: bytes, reason: str) -> Refusal:
    command = peek_command(body)
    known = schema.CommandTypeEnum.values()
    if command is not None and command not in known:
        return Refusal(ResultCode.UNKNOWN_COMMAND, f"unknown command {command}")
    return Refusal(ResultCode.PROTOCOL_ERROR, f"body does not parse: {reason}")


def response_frame(header: FrameHeader, token: int, response: Any) -> bytes:
    body = response.SerializeToString()
    return encode(header.version, header.device_id, token, header.request_number, body)


def refusal_frame(header: FrameHeader, command: int, refusal: Refusal) -> bytes:
    """The answer to a refused request: the device's own token is echoed, never the current one.

    For a version we do not serve, the 2.0.3 schema builds the body (command and result are
    wire-identical in every version) and the header echoes the device's version.
    """
    schema = SCHEMAS.get(header.version, SCHEMAS[203])
    known = schema.CommandTypeEnum.values()
    response = schema.Response(command=command if command in known else 0)
    response.result.result_code = refusal.code
    response.result.result_text = refusal.text
    return response_frame(header, header.token, response)


_TAG_RESULT = 0x12  # Response field 2 (result), length-delimited


def answer_result(answer: bytes) -> int:
    """The result code of an answer frame of ours, read from its bytes.

    Our answers are serialized in field order: header, Response.command (08 cc), then
    Response.result (12 len 08 rc ...), so the common case is a few byte compares; anything
    else (a result text of 128 bytes or more) is parsed.
    """
    pos = HEADER_SIZE
    if (
        len(answer) > pos + 5
        and answer[pos] == _FIELD_COMMAND_TAG
        and answer[pos + 1] < _VARINT_CONTINUES
        and answer[pos + 2] == _TAG_RESULT
        and answer[pos + 3] < _VARINT_CONTINUES
        and answer[pos + 4] == _FIELD_COMMAND_TAG
        and answer[pos + 5] < _VARINT_CONTINUES
    ):
        return answer[pos + 5]
    version = answer[2] | answer[3] << 8
    schema = SCHEMAS.get(version, SCHEMAS[203])
    try:
        response = schema.Response.FromString(answer[HEADER_SIZE:])
    except DecodeError:
        return int(ResultCode.UNKNOWN_ERROR)
    return int(response.result.result_code)
