"""The session rules of protocol.md: who may talk, with which token, and what counts as a retry.

A pure function of the device's state, the request header and its protocol version, so the same
rules serve TCP and gRPC and can be tested without I/O.

Registry states reach the wire here, and the answer depends on the version the device speaks:

| registry state | 2.0.3 | 2.0.4 |
|---|---|---|
| unknown, awaiting registration | UNKNOWN_ID (1) | UNKNOWN_ID (1) |
| deregistered | UNKNOWN_ID (1) | DEREGISTERED (18) |
| blocked | BLOCKED (15) + the OFD's message | BLOCKED (15) + the OFD's message |
| subscription switched off | BLOCKED (15) + a message | DISCONNECTED (19) |

2.0.3 has no code for a switched-off subscription (19 is new in 2.0.4), and BLOCKED is the one
code whose text the device shows and after which it polls until OK, which is what a shop that
has not paid needs. A device awaiting deregistration is still registered at KGD and is served:
it must be able to drain its offline backlog and close its shift before it goes.
"""

from enum import Enum

from ledger.device_state import DeviceState
from ledger.errors import Refusal
from ledger.lifecycle import SERVED_STATUSES, DeviceStatus
from ledger.wire import ResultCode

# The first version whose code 18 means DEREGISTERED and that knows DISCONNECTED (19).
V204 = 204
SUBSCRIPTION_OFF_TEXT = "subscription switched off: pay or contact the OFD"
DEFAULT_BLOCK_TEXT = "blocked by the OFD"


class Verdict(Enum):
    NEW = "new"  # a request to carry out
    RETRY = "retry"  # the last request again: answer with the stored response


def check_standing(state: DeviceState | None, version: int) -> DeviceState:
    """Refuses a device the registry does not let talk; returns the state of one it does."""
    if state is None:
        raise Refusal(ResultCode.UNKNOWN_ID, "unknown system id")
    if state.status == DeviceStatus.DEREGISTERED and version >= V204:
        raise Refusal(ResultCode.CODE_18, "device is deregistered")
    if state.status not in SERVED_STATUSES:
        raise Refusal(ResultCode.UNKNOWN_ID, f"device is not registered ({state.status})")
    if state.blocked:
        raise Refusal(ResultCode.BLOCKED, state.block_message or DEFAULT_BLOCK_TEXT)
    if not state.subscription_active:
        if version >= V204:
            raise Refusal(ResultCode.DISCONNECTED, SUBSCRIPTION_OFF_TEXT)
        raise Refusal(ResultCode.BLOCKED, SUBSCRIPTION_OFF_TEXT)
    return state


def check_session(
    state: DeviceState | None, token: int, request_number: int, command: int, version: int
) -> Verdict:
    """Raises Refusal with the result code the device must get."""
    state = check_standing(state, version)
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
