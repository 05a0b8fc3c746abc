"""The session rules of protocol.md: who may talk, with which token, and what counts as a retry.

A pure function of the device's state and the request header, so the same rules serve TCP and
gRPC and can be tested without I/O.
"""

from enum import Enum

from ledger.device_state import REGISTERED, DeviceState
from ledger.errors import Refusal
from ledger.results import ResultCode


class Verdict(Enum):
    NEW = "new"  # a request to carry out
    RETRY = "retry"  # the last request again: answer with the stored response


def check_session(
    state: DeviceState | None, token: int, request_number: int, command: int
) -> Verdict:
    """Raises Refusal with the result code the device must get."""
    if state is None:
        raise Refusal(ResultCode.UNKNOWN_ID, "unknown system id")
    if state.status != REGISTERED:
        raise Refusal(ResultCode.UNKNOWN_ID, f"device is not registered ({state.status})")
    if state.token is None:
        raise Refusal(ResultCode.INVALID_TOKEN, "no token issued yet: get one in the cabinet")
    if request_number == state.last_request_number and token == state.last_request_token:
        if command != state.last_command:
            raise Refusal(
                ResultCode.INVALID_RETRY_REQUEST,
                f"request {request_number} was command {state.last_command}, not {command}",
            )
        return Verdict.RETRY
    if token != state.token:
        raise Refusal(ResultCode.INVALID_TOKEN, "token is not the last one issued")
    if request_number == state.last_request_number:
        raise Refusal(
            ResultCode.INVALID_REQUEST_NUMBER,
            f"request number {request_number} was already used with another token",
        )
    return Verdict.NEW
