"""The KKM<->OFD protocol's vocabulary, defined once: the frame header's layout and limits, the
versions, result codes and commands, the devices' clock, and the journal envelope's version. The
codec (ingest.codec), the pipeline and the warehouse rows all take them from here.

Every frame, both ways, is an 18-byte little-endian header followed by a protobuf body:

    u16 app code (0x81A2) | u16 version | u32 size (header included) | u32 id | u32 token | u16 req

The token authenticates the device: it lives in PostgreSQL only. Frames kept anywhere else (the
journal, the warehouse) are kept `without_token`.

Result code numbers are shared by 2.0.3 and 2.0.4; code 18 means ELEMENT_NOT_FOUND_BY_BARCODE in
2.0.3 and DEREGISTERED in 2.0.4, so it has one name per meaning here and callers pick by version.
"""

import struct
from datetime import timedelta, timezone
from enum import IntEnum

APP_CODE = 0x81A2
HEADER = struct.Struct("<HHIIIH")
HEADER_SIZE = HEADER.size  # 18
TOKEN_FIELD = slice(12, 16)  # the u32 token's bytes in HEADER
SUPPORTED_VERSIONS = frozenset({203, 204})
# A receipt is well under 4 KiB; a thousand-line receipt with excise stamps stays under 512 KiB.
MAX_FRAME_SIZE = 1024 * 1024
# Devices state times in their own local time: Kazakhstan is one zone (UTC+5) since 2024.
KZ_TIME = timezone(timedelta(hours=5), "UTC+05")
# The journal record envelope (proto/ofdproto/journal) this gateway writes. 2: no token anywhere
# (field 8 unset, both frames' token bytes zeroed, the fallback document identity keyed). Readers
# also accept 1 and 0 (0: records written before the field existed), which may carry tokens.
ENVELOPE_VERSION = 2
KNOWN_ENVELOPE_VERSIONS = frozenset({0, 1, ENVELOPE_VERSION})


def without_token(frame: bytes) -> bytes:
    """`frame` with its header's token bytes zeroed: every other header byte and the whole body as
    they were (a frame cut short keeps its length, with whatever token bytes it holds zeroed)."""
    head, rest = frame[: TOKEN_FIELD.start], frame[TOKEN_FIELD.stop :]
    return head + bytes(len(frame) - len(head) - len(rest)) + rest


class ResultCode(IntEnum):
    OK = 0
    UNKNOWN_ID = 1
    INVALID_TOKEN = 2
    PROTOCOL_ERROR = 3
    UNKNOWN_COMMAND = 4
    UNSUPPORTED_COMMAND = 5
    INVALID_REQUEST_NUMBER = 8
    INVALID_RETRY_REQUEST = 9
    OPEN_SHIFT_TIMEOUT_EXPIRED = 11
    INVALID_LOGIN_PASSWORD = 12
    INCORRECT_REQUEST_DATA = 13
    NOT_ENOUGH_CASH = 14
    BLOCKED = 15
    SAME_TAXPAYER_AND_CUSTOMER = 17
    CODE_18 = 18
    DISCONNECTED = 19
    SERVICE_TEMPORARILY_UNAVAILABLE = 254
    UNKNOWN_ERROR = 255


class Command(IntEnum):
    SYSTEM = 0
    TICKET = 1
    CLOSE_SHIFT = 2
    REPORT = 3
    NOMENCLATURE = 4
    INFO = 5
    MONEY_PLACEMENT = 6
    CANCEL_TICKET = 7
    AUTH = 8
    QR_GENERATE = 100
    QR_GET_STATUS = 101
    RESERVED = 127


# The OFD may hand out a new token only in answer to these (protocol.md, "Token, request number").
TOKEN_ROTATING_COMMANDS = frozenset({Command.TICKET, Command.CLOSE_SHIFT, Command.MONEY_PLACEMENT})
