"""Prometheus metrics: scraped over HTTP from a running in-process gateway, they count what
devices were told; and the answer-label reader agrees with parsing the answer."""

import asyncio
import dataclasses
import random
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from conftest import gateway_settings, register_device
from prometheus_client.parser import text_string_to_metric_families
from wire import ask, body, command_body, kkm_for, ticket

from ingest.app import RunningGateway, running_gateway
from ingest.body import refusal_frame, response_frame
from ingest.codec import FrameHeader, encode
from ingest.metrics import UNREADABLE, answer_labels
from ledger.errors import Refusal
from ledger.schemas import SCHEMAS
from ledger.wire import KZ_TIME, Command, ResultCode
from simulators.documents import build_offline_system
from simulators.kkm import SimulatedKkm
from simulators.shift_model import ShiftModel

DEADLINE = 10.0
SHIFT_START = datetime(2026, 11, 26, 9, 0, 0)  # device-local, as tests/test_shift_wire.py
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def metered_gateway(tmp_path: Path, database_url: str) -> AsyncIterator[RunningGateway]:
    settings = dataclasses.replace(gateway_settings(tmp_path, database_url), metrics_port=0)
    async with running_gateway(settings) as running:
        yield running


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=DEADLINE) as reply:  # noqa: S310  # our own http URL
        text: str = reply.read().decode()
        return text


async def scrape(gateway: RunningGateway) -> Samples:
    """Every sample /metrics serves, by name and labels."""
    assert gateway.metrics_port is not None
    text = await asyncio.to_thread(_get, f"http://127.0.0.1:{gateway.metrics_port}/metrics")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_scrape_counts_receipts_refusals_commits_and_connections(
    metered_gateway: RunningGateway, database_url: str
) -> None:
    gateway = metered_gateway
    before = await scrape(gateway)
    assert value(before, "ofd_requests_total") == 0
    assert value(before, "ofd_auth_failures_total", code="2") == 0  # present before any failure

    device = await register_device(database_url)
    async with SimulatedKkm(
        "127.0.0.1", gateway.tcp.port, version=204, system_id=device.system_id, token=device.token
    ) as kkm:
        for number in (1, 2, 3):
            response = await kkm.send(ticket(204, number))
            assert response.result.result_code == ResultCode.OK
    wrong = device.token ^ 0x5A5A
    refused = await ask(
        gateway.tcp.port, encode(203, device.system_id, wrong, 9, body(ticket(203)))
    )
    assert refused.code == ResultCode.INVALID_TOKEN
    unknown = await ask(
        gateway.tcp.port, encode(204, device.system_id, kkm.token, 9, command_body(55))
    )
    assert unknown.code == ResultCode.UNKNOWN_COMMAND

    after = await scrape(gateway)
    tcp = {"transport": "tcp"}
    assert (
        value(after, "ofd_requests_total", command="TICKET", result="0", version="204", **tcp) == 3
    )
    assert (
        value(after, "ofd_requests_total", command="TICKET", result="2", version="203", **tcp) == 1
    )
    assert (
        value(after, "ofd_requests_total", command="SYSTEM", result="4", version="204", **tcp) == 1
    )
    assert value(after, "ofd_auth_failures_total", code="2") == 1
    assert value(after, "ofd_auth_failures_total", code="1") == 0
    assert value(after, "ofd_request_duration_seconds_count", **tcp) == 5
    assert value(after, "ofd_request_duration_seconds_bucket", le="+Inf", **tcp) == 5
    assert value(after, "ofd_request_duration_seconds_sum", **tcp) > 0
    assert value(after, "ofd_journal_appends_total") == 3
    # Three accepted tickets are three state changes, in one batch or several.
    assert value(after, "ofd_commit_batch_size_sum") == 3
    assert 1 <= value(after, "ofd_commit_duration_seconds_count") <= 3
    # Every change's wait for its batch is one observation, whatever the batching.
    assert value(after, "ofd_commit_queue_seconds_count") == 3
    assert value(after, "ofd_commit_queue_seconds_bucket", le="+Inf") == 3
    assert value(after, "ofd_commit_failures_total") == 0
    assert value(after, "ofd_shed_total", policy="commit_queue_full") == 0
    assert value(after, "ofd_connections_total") >= 3  # the KKM's, and one per `ask`
    assert value(after, "ofd_connections_refused_total") == 0
    assert value(after, "ofd_frame_errors_total", transport="tcp") == 0
    assert value(after, "ofd_gateway_info", gateway_id="gw-test") == 1
    assert value(after, "process_cpu_seconds_total") > 0


async def test_frame_errors_and_connections_are_read_from_the_server(
    metered_gateway: RunningGateway,
) -> None:
    gateway = metered_gateway
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.tcp.port)
    try:
        writer.write(b"\x00" * 18)  # a header with a wrong app code: framing is lost
        async with asyncio.timeout(DEADLINE):
            await reader.read()  # the PROTOCOL_ERROR answer, then the server closes
    finally:
        writer.close()
    samples = await scrape(gateway)
    assert value(samples, "ofd_frame_errors_total", transport="tcp") == 1
    assert value(samples, "ofd_connections_total") == 1
    assert value(samples, "ofd_requests_total") == 0  # not a request: it had no readable header


async def test_a_mismatching_z_report_moves_the_mismatch_counter(
    metered_gateway: RunningGateway, database_url: str
) -> None:
    """One close whose Z report agrees, one whose cash differs: two closes, one mismatch."""
    gateway = metered_gateway
    before = await scrape(gateway)
    assert value(before, "ofd_shifts_closed_total") == 0
    assert value(before, "ofd_z_report_mismatches_total") == 0
    for seed, tamper in ((7, False), (11, True)):
        registered = await register_device(database_url)
        device = kkm_for(gateway, 204, registered.system_id, registered.token)
        books = ShiftModel(
            SCHEMAS[204], random.Random(seed), kgd_kkm_id="600000000001", start=SHIFT_START
        )
        for planned in books.documents(5, mode="online"):
            assert (await device.send(planned.request)).result.result_code == ResultCode.OK
        close, _ = books.close()
        if tamper:
            close.request.close_shift.z_report.cash_sum.bills += 5
        assert (await device.send(close.request)).result.result_code == ResultCode.OK
    after = await scrape(gateway)
    assert value(after, "ofd_shifts_closed_total") == 2
    assert value(after, "ofd_z_report_mismatches_total") == 1


async def test_offline_gauges_show_a_reported_offline_period(
    metered_gateway: RunningGateway, database_url: str
) -> None:
    """A SYSTEM reporting 60 hours offline opens a window: once the background refresh has
    run, one window is open and the oldest is 60 hours old; an online receipt closes it."""
    gateway = metered_gateway
    await gateway.metrics.refresh_offline()
    before = await scrape(gateway)
    assert value(before, "ofd_offline_windows_open") == 0
    assert value(before, "ofd_offline_window_max_age_seconds") == 0
    registered = await register_device(database_url)
    device = kkm_for(gateway, 204, registered.system_id, registered.token)
    now = datetime.now(UTC).astimezone(KZ_TIME).replace(tzinfo=None, microsecond=0)
    began = now - timedelta(hours=60)
    answer = await device.send(build_offline_system(SCHEMAS[204], begin=began, end=now))
    assert answer.result.result_code == ResultCode.OK
    # The scrape reads the cached values: nothing moves until the refresh.
    assert value(await scrape(gateway), "ofd_offline_windows_open") == 0
    await gateway.metrics.refresh_offline()
    samples = await scrape(gateway)
    assert value(samples, "ofd_offline_windows_open") == 1
    age = value(samples, "ofd_offline_window_max_age_seconds")
    assert 60 * 3600 <= age < 60 * 3600 + DEADLINE * 6
    assert (await device.send(ticket(204, 1))).result.result_code == ResultCode.OK
    await gateway.metrics.refresh_offline()
    samples = await scrape(gateway)
    assert value(samples, "ofd_offline_windows_open") == 0
    assert value(samples, "ofd_offline_window_max_age_seconds") == 0


async def test_journal_lag_shows_a_change_waiting_for_its_commit(
    metered_gateway: RunningGateway, database_url: str
) -> None:
    """A lock held on device_state stalls the group commit: the lag gauges show the waiting
    change and its age, and fall back to zero once it is durable."""
    device = await register_device(database_url)
    kkm = kkm_for(metered_gateway, 204, device.system_id, device.token)
    blocker = await asyncpg.connect(database_url)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        # SHARE conflicts with the UPDATE's ROW EXCLUSIVE, not with the state read before it.
        await blocker.execute("LOCK TABLE device_state IN SHARE MODE")
        answer = asyncio.create_task(kkm.send(ticket(204, 1)))
        async with asyncio.timeout(DEADLINE):
            # Polling what a scrape sees is the test.
            while value(stalled := await scrape(metered_gateway), "ofd_journal_lag_changes") < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert value(stalled, "ofd_journal_lag_changes") == 1
        assert value(stalled, "ofd_journal_lag_seconds") > 0
        await transaction.rollback()
        async with asyncio.timeout(DEADLINE):
            assert (await answer).result.result_code == ResultCode.OK
    finally:
        await blocker.close()
        await kkm.close()
    after = await scrape(metered_gateway)
    assert value(after, "ofd_journal_lag_changes") == 0
    assert value(after, "ofd_journal_lag_seconds") == 0
    assert value(after, "ofd_journal_appends_total") == 1


def test_metrics_are_not_served_unless_asked(tmp_path: Path) -> None:
    assert gateway_settings(tmp_path, "postgresql://unused").metrics_port is None


# --- reading labels from answer bytes ---


@pytest.mark.parametrize("version", [203, 204])
@pytest.mark.parametrize(
    ("command", "code", "text"),
    [
        (Command.TICKET, ResultCode.INVALID_TOKEN, "x"),
        (Command.SYSTEM, ResultCode.SERVICE_TEMPORARILY_UNAVAILABLE, "busy"),
        (Command.REPORT, ResultCode.UNKNOWN_ERROR, "y" * 300),  # a 2-byte length varint
        (Command.INFO, ResultCode.PROTOCOL_ERROR, "z" * 1030),  # result length 0x8B 0x08
        (Command.QR_GET_STATUS, ResultCode.OK, ""),
    ],
)
def test_answer_labels_agree_with_parsing(
    version: int, command: int, code: ResultCode, text: str
) -> None:
    header = FrameHeader(version, 0, 7, 8, 9)
    known = command in SCHEMAS[version].CommandTypeEnum.values()
    answer = refusal_frame(header, command, Refusal(code, text))
    assert answer_labels(answer) == (version, command if known else 0, code)


def test_answer_labels_walk_fields_in_any_order() -> None:
    """A Response whose result comes before command (legal protobuf) still reads right."""
    schema = SCHEMAS[204]
    response = schema.Response(command=Command.TICKET)
    response.result.result_code = ResultCode.OK
    result = response.result.SerializeToString()
    reordered = b"\x12" + bytes([len(result)]) + result + b"\x08\x01"
    answer = encode(204, 1, 2, 3, reordered)
    assert answer_labels(answer) == (204, Command.TICKET, ResultCode.OK)
    assert answer_labels(response_frame(FrameHeader(204, 0, 1, 2, 3), 2, response)) == (
        204,
        Command.TICKET,
        ResultCode.OK,
    )
    assert answer_labels(encode(204, 1, 2, 3, b"\xff")) == (204, UNREADABLE, UNREADABLE)
