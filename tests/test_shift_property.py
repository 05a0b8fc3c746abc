"""The property the whole tally exists for: for any valid shifts a device makes (online,
offline and mixed; sales, returns with their parents, buys; stornos, discounts and markups on
lines and on the ticket; VAT on lines or on the ticket; cash, card, mobile and split payments;
deposits and withdrawals), the OFD's Z report equals the device's own.

The device is `simulators.shift_model`, which keeps its own books and adds them up without the
gateway's code. Twice: straight through the command handlers and the state transition (many
examples, no I/O), and through a real gateway over TCP with PostgreSQL (a few examples).
"""

import random
from datetime import datetime
from typing import Any

import asyncpg
from conftest import register_device
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire import kkm_for

from ingest.app import RunningGateway
from ingest.codec import FrameHeader
from ingest.pipeline import next_state
from ledger.commands import RequestContext, handler_for
from ledger.device_state import DeviceState, RegInfo
from ledger.errors import Refusal
from ledger.fiscal import FiscalSettings
from ledger.lifecycle import DeviceStatus
from ledger.schemas import SCHEMAS
from ledger.tally import inconsistencies
from ledger.tally_codec import from_bytes
from ledger.wire import ResultCode
from ledger.zx_report import compare
from simulators.shift_model import ShiftModel

START = datetime(2026, 11, 26, 8, 0, 0)
FISCAL = FiscalSettings(secret=bytes(32))
KGD = "600000000001"
REG = RegInfo(KGD, "SN-1", "Test KKM", "ТОО", "Алматы", "Алматы", "180240012342", "47111",
              "Дүкен", "Абай 1", "Абай 1", 43238949, 76889709)  # fmt: skip

# What a document may be refused with; anything else (or an exception) is a bug.
ALLOWED_REFUSALS = {
    ResultCode.INCORRECT_REQUEST_DATA,
    ResultCode.NOT_ENOUGH_CASH,
    ResultCode.OPEN_SHIFT_TIMEOUT_EXPIRED,
}

shift_plans = st.lists(
    st.tuples(st.integers(0, 25), st.sampled_from(["online", "offline", "mixed"])),
    min_size=1,
    max_size=4,
)


def _drive(state: DeviceState, request: Any, number: int) -> DeviceState:
    """One request through its handler and the state transition, as the pipeline does."""
    version = state.protocol_version or 203
    schema = SCHEMAS[version]
    ctx = RequestContext(schema, version, 1, number & 0xFFFF, FISCAL)
    outcome = handler_for(int(request.command))(ctx, state, request)
    header = FrameHeader(version, 0, 1, 1, number & 0xFFFF)
    return next_state(
        state, header=header, command=int(request.command), token=1, answer=b"", outcome=outcome
    )


def _fresh_state(version: int) -> DeviceState:
    return DeviceState(
        system_id=1,
        status=DeviceStatus.REGISTERED,
        reg=REG,
        version=1,
        token=1,
        last_request_number=None,
        last_request_token=None,
        last_command=None,
        last_response=None,
        shift_number=0,
        shift_open=False,
        last_document_shift=0,
        last_document_number=0,
        documents_accepted=0,
        protocol_version=version,
        last_contact=None,
    )


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    version=st.sampled_from([203, 204]),
    plans=shift_plans,
)
def test_the_ofds_z_report_equals_the_devices_through_the_ledger(
    seed: int, version: int, plans: list[tuple[int, Any]]
) -> None:
    schema = SCHEMAS[version]
    model = ShiftModel(schema, random.Random(seed), kgd_kkm_id=KGD, start=START)
    state = _fresh_state(version)
    number = 0
    for documents, mode in plans:
        shift = model.shift(documents=documents, mode=mode)
        for planned in shift.documents:
            number += 1
            # What the gateway parses is what went over the wire.
            request = schema.Request.FromString(planned.request.SerializeToString())
            ctx = RequestContext(schema, version, 1, number & 0xFFFF, FISCAL)
            outcome = handler_for(int(request.command))(ctx, state, request)
            header = FrameHeader(version, 0, 1, 1, number & 0xFFFF)
            state = next_state(
                state,
                header=header,
                command=int(request.command),
                token=1,
                answer=b"",
                outcome=outcome,
            )
            assert inconsistencies(state.tally) == []
            assert state.tally_blob is not None
            assert from_bytes(state.tally_blob) == state.tally
        report = outcome.shift_report
        assert report is not None
        assert report.shift_number == shift.number
        assert list(report.differences) == []
        assert compare(shift.z_report, outcome.response.report.zx_report) == []
    assert state.shift_number == model.shift_number
    assert not state.shift_open
    assert state.tally.cash == model.drawer


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    version=st.sampled_from([203, 204]),
    plans=st.lists(
        st.tuples(st.integers(0, 15), st.sampled_from(["online", "offline", "mixed"])),
        min_size=1,
        max_size=3,
    ),
)
async def test_the_ofds_z_report_equals_the_devices_through_a_gateway(
    gateway: RunningGateway,
    database_url: str,
    seed: int,
    version: int,
    plans: list[tuple[int, Any]],
) -> None:
    device = await register_device(database_url)  # a new device for every example
    kkm = kkm_for(gateway, version, device.system_id, device.token)
    model = ShiftModel(SCHEMAS[version], random.Random(seed), kgd_kkm_id=KGD, start=START)
    async with kkm:
        kkm.persistent = True
        for documents, mode in plans:
            shift = model.shift(documents=documents, mode=mode)
            for planned in shift.documents:
                answer = await kkm.send(planned.request)
                assert answer.result.result_code == ResultCode.OK, answer.result.result_text
            assert compare(shift.z_report, answer.report.zx_report) == []
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT shift_number, differences FROM shift_reports WHERE system_id = $1 ORDER BY id",
            device.system_id,
        )
    finally:
        await conn.close()
    assert [(r["shift_number"], r["differences"]) for r in rows] == [
        (number, "[]") for number in range(1, len(plans) + 1)
    ]


# --- anything a device may send: refused or accepted, never a crash, never an inconsistency ---

MUTATIONS = st.lists(
    st.tuples(
        st.integers(0, 200),  # which document
        st.sampled_from(["shift", "time", "amount", "offline", "drop", "repeat", "swap"]),
        st.integers(-(2**40), 2**40),
    ),
    max_size=8,
)


def _mutate(request: Any, what: str, value: int) -> Any:
    """One field of a document changed to something a device could send."""
    spoilt = type(request).FromString(request.SerializeToString())
    body = next(
        getattr(spoilt, name)
        for name in ("ticket", "money_placement", "close_shift")
        if spoilt.HasField(name)
    )
    if what == "shift":
        body.fr_shift_number = abs(value) % 6
    elif what == "time":
        field = next(
            n
            for n in ("date_time", "datetime", "close_time")
            if n in body.DESCRIPTOR.fields_by_name
        )
        moment = getattr(body, field)
        moment.date.day = abs(value) % 32
        moment.time.hour = abs(value) % 25
    elif what == "amount":
        money = (
            body.amounts.total
            if spoilt.HasField("ticket")
            else (body.sum if spoilt.HasField("money_placement") else body.z_report.cash_sum)
        )
        money.bills = abs(value)
        money.coins = abs(value) % 120
    elif what == "offline":
        if spoilt.HasField("ticket"):
            body.offline_ticket_number = abs(value) % 2**32
        else:
            body.is_offline = value % 2 == 0
    return spoilt


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    version=st.sampled_from([203, 204]),
    plans=shift_plans,
    mutations=MUTATIONS,
)
def test_no_sequence_of_documents_crashes_the_ledger_or_breaks_the_tally(
    seed: int, version: int, plans: list[tuple[int, Any]], mutations: list[tuple[int, str, int]]
) -> None:
    schema = SCHEMAS[version]
    model = ShiftModel(schema, random.Random(seed), kgd_kkm_id=KGD, start=START)
    requests = [
        schema.Request.FromString(planned.request.SerializeToString())
        for documents, mode in plans
        for planned in model.shift(documents=documents, mode=mode).documents
    ]
    for index, what, value in mutations:
        at = index % len(requests)
        if what == "drop":
            del requests[at]
        elif what == "repeat":
            requests.insert(at, requests[at])
        elif what == "swap":
            other = abs(value) % len(requests)
            requests[at], requests[other] = requests[other], requests[at]
        else:
            requests[at] = _mutate(requests[at], what, value)
        if not requests:
            return
    state = _fresh_state(version)
    for number, request in enumerate(requests, 1):
        if not request.IsInitialized():
            continue  # the gateway answers PROTOCOL_ERROR before any handler runs
        try:
            state = _drive(state, request, number)
        except Refusal as refusal:
            code, text = refusal.code, refusal.text
            assert code in ALLOWED_REFUSALS, text
        assert inconsistencies(state.tally) == []
        assert state.tally_blob is None or from_bytes(state.tally_blob) == state.tally
        assert state.shift_number == state.tally.shift_number
