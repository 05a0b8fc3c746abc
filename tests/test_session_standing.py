"""The registry's states as the session rules answer them, per protocol version (pure)."""

import dataclasses

import pytest

from ledger.device_state import DeviceState, RegInfo
from ledger.errors import Refusal
from ledger.session import SUBSCRIPTION_OFF_TEXT, Verdict, check_session
from ledger.wire import ResultCode

REG = RegInfo("000000000001", "SN", "KKM", "ТОО", "", "", "123456789012", "", "Дүкен", "", "", 0, 0)
SERVED = DeviceState(
    system_id=7, status="registered", reg=REG, version=1, token=42, last_request_number=None,
    last_request_token=None, last_command=None, last_response=None, shift_number=0,
    shift_open=False, last_document_shift=0, last_document_number=0, documents_accepted=0,
    protocol_version=None, last_contact=None,
)  # fmt: skip


def refusal(state: DeviceState | None, version: int) -> tuple[ResultCode, str]:
    with pytest.raises(Refusal) as refused:
        check_session(state, 42, 1, 1, version)
    return refused.value.code, refused.value.text


@pytest.mark.parametrize(
    ("changes", "v203", "v204"),
    [
        ({"status": "awaiting_registration"}, ResultCode.UNKNOWN_ID, ResultCode.UNKNOWN_ID),
        ({"status": "deregistered"}, ResultCode.UNKNOWN_ID, ResultCode.CODE_18),
        ({"blocked": True, "block_message": "m"}, ResultCode.BLOCKED, ResultCode.BLOCKED),
        ({"subscription_active": False}, ResultCode.BLOCKED, ResultCode.DISCONNECTED),
        # A deregistered device is deregistered first, whatever else holds.
        (
            {"status": "deregistered", "blocked": True, "block_message": "m"},
            ResultCode.UNKNOWN_ID,
            ResultCode.CODE_18,
        ),
    ],
)
def test_registry_states_by_version(
    changes: dict[str, object], v203: ResultCode, v204: ResultCode
) -> None:
    state = dataclasses.replace(SERVED, **changes)  # type: ignore[arg-type]
    assert refusal(state, 203)[0] == v203
    assert refusal(state, 204)[0] == v204


def test_the_block_message_is_what_the_device_shows() -> None:
    state = dataclasses.replace(SERVED, blocked=True, block_message="Оплатите")
    assert refusal(state, 203) == (ResultCode.BLOCKED, "Оплатите")
    off = dataclasses.replace(SERVED, subscription_active=False)
    assert refusal(off, 203) == (ResultCode.BLOCKED, SUBSCRIPTION_OFF_TEXT)


def test_awaiting_deregistration_is_still_served() -> None:
    state = dataclasses.replace(SERVED, status="awaiting_deregistration")
    assert check_session(state, 42, 1, 1, 204) is Verdict.NEW


def test_unknown_device() -> None:
    assert refusal(None, 204)[0] == ResultCode.UNKNOWN_ID
