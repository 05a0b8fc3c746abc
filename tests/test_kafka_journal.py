"""The Kafka journal against Apache Kafka (tests/kafka_broker.py), never a mock.

Records come back in order per device; a gateway journaling to Kafka answers a receipt only
after the broker acknowledged it; with the broker gone the device is answered 254 within the
delivery timeout and nothing changes, and once the broker is back (with its log: what it
acknowledged before is still there) the device's resend is accepted.

Reading back: a reader assigns itself every partition (it needs no consumer group) and reads
until what it expects is there and every partition is read to its high watermark, so a record
that should not be there is seen too.
"""

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from conftest import gateway_settings, register_device
from wire import numbered_ticket

from ingest.app import running_gateway
from ingest.cli import EXIT_USAGE, main
from ingest.journals import open_journal
from ledger.errors import SinkError
from ledger.journal import JournalEntry
from ledger.journal.kafka import KafkaJournal, KafkaSettings, decode_key, ensure_topic
from ledger.journal.local import LocalJournal
from ledger.journal.spool import SpoolingJournal
from ledger.wire import ResultCode, without_token
from ofdproto.journal.v1.record_pb2 import JournalRecord
from simulators.kkm import SimulatedKkm
from simulators.stage.kafka import KafkaCluster

PARTITIONS = 4
VERSION = 203
FIRST_RECEIPT_AT = datetime(2026, 11, 26, 9, 0, 0)
READ_TIMEOUT = 10.0  # bounds every read-back of a topic
POLL = 0.2
DB_TIMEOUT = 10.0
# The broker-down test shortens the delivery timeout so that its 254 comes quickly.
SHORT_DELIVERY_TIMEOUT = 1.5
ANSWER_MARGIN = 1.0  # a 254 may come this much later than the delivery timeout


@dataclass(frozen=True, slots=True)
class Consumed:
    partition: int
    offset: int
    key: bytes
    value: bytes


def unique_topic(name: str) -> str:
    return f"test.{name}.{uuid.uuid4().hex[:10]}"


def read_topic(
    bootstrap: str, topic: str, done: Callable[[Sequence[Consumed]], bool]
) -> list[Consumed]:
    """Blocking: every record of `topic`, read until `done` holds and every partition is read
    to its high watermark."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{uuid.uuid4().hex[:10]}",
            "enable.auto.commit": False,
        }
    )
    records: list[Consumed] = []
    try:
        metadata = consumer.list_topics(topic, timeout=READ_TIMEOUT)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + READ_TIMEOUT
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, timeout=POLL)
            for message in batch:
                error = message.error()
                assert error is None, error
                partition, offset = message.partition(), message.offset()
                key, value = message.key(), message.value()
                assert partition is not None
                assert offset is not None
                assert isinstance(key, bytes)
                assert isinstance(value, bytes)
                records.append(Consumed(partition, offset, key, value))
            if done(records) and _read_to_end(consumer, topic, partitions, records):
                return records
    finally:
        consumer.close()
    raise AssertionError(f"{topic}: expected records not there in {READ_TIMEOUT} s")


def _read_to_end(
    consumer: Consumer, topic: str, partitions: Sequence[int], records: Sequence[Consumed]
) -> bool:
    """Whether every partition's records up to its high watermark are in `records`."""
    read = dict.fromkeys(partitions, -1)
    for record in records:
        read[record.partition] = max(read[record.partition], record.offset)
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=READ_TIMEOUT
        )
        if high > low and read[partition] < high - 1:
            return False
    return True


def ticket(number: int) -> Any:
    return numbered_ticket(VERSION, number, FIRST_RECEIPT_AT)


async def device_row(database_url: str, system_id: int) -> dict[str, Any]:
    async with asyncio.timeout(DB_TIMEOUT):
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow("SELECT * FROM device_state WHERE system_id = $1", system_id)
        finally:
            await conn.close()
    assert row is not None
    return dict(row)


def journal_records(records: Sequence[Consumed]) -> list[JournalRecord]:
    decoded = [JournalRecord.FromString(r.value) for r in records]
    for record, raw in zip(decoded, records, strict=True):
        assert decode_key(raw.key) == record.device_id, "records are keyed by device id"
    return decoded


async def test_records_come_back_in_order_per_device(kafka_bootstrap: str) -> None:
    settings = KafkaSettings(kafka_bootstrap, topic=unique_topic("order"))
    await asyncio.to_thread(ensure_topic, settings, PARTITIONS)
    devices = [1, 2, 77, 4_000_000_000]
    batches = 5
    journal = KafkaJournal(settings)
    try:
        for batch in range(batches):
            # Interleaved devices, and a device twice in one batch: order must hold anyway.
            entries = [
                JournalEntry(device, f"{device}:{batch}:{copy}".encode())
                for device in devices
                for copy in range(2)
            ]
            await journal.append(entries)
    finally:
        await journal.close()

    expected = len(devices) * batches * 2
    records = await asyncio.to_thread(
        read_topic, kafka_bootstrap, settings.topic, lambda got: len(got) >= expected
    )
    assert len(records) == expected
    by_device: dict[int, list[Consumed]] = {}
    for record in records:
        by_device.setdefault(decode_key(record.key), []).append(record)
    assert sorted(by_device) == devices
    for device, own in by_device.items():
        assert len({r.partition for r in own}) == 1, "one device, one partition"
        own.sort(key=lambda r: r.offset)
        assert [r.value.decode() for r in own] == [
            f"{device}:{batch}:{copy}" for batch in range(batches) for copy in range(2)
        ]


async def test_refused_entries_produce_nothing(kafka_bootstrap: str) -> None:
    """A key that is no u32 refuses the whole batch before any record is produced."""
    settings = KafkaSettings(kafka_bootstrap, topic=unique_topic("refused"))
    await asyncio.to_thread(ensure_topic, settings, 1)
    journal = KafkaJournal(settings)
    try:
        with pytest.raises(SinkError) as refused:
            await journal.append([JournalEntry(5, b"good"), JournalEntry(2**32, b"bad")])
        assert not refused.value.retriable
        await journal.append([JournalEntry(6, b"after")])
    finally:
        await journal.close()
    records = await asyncio.to_thread(
        read_topic, kafka_bootstrap, settings.topic, lambda got: len(got) >= 1
    )
    assert [(decode_key(r.key), r.value) for r in records] == [(6, b"after")]


async def test_gateway_answers_only_what_the_broker_acknowledged(
    tmp_path: Path, database_url: str, kafka_bootstrap: str
) -> None:
    kafka = KafkaSettings(kafka_bootstrap, topic=unique_topic("gateway"), client_id="ofd-test")
    await asyncio.to_thread(ensure_topic, kafka, PARTITIONS)
    settings = dataclasses.replace(gateway_settings(tmp_path, database_url), kafka=kafka)
    receipts = 5
    signs: dict[str, tuple[int, int]] = {}

    async def run_device(port: int) -> None:
        device = await register_device(database_url)
        kkm = SimulatedKkm("127.0.0.1", port, version=VERSION,
                           system_id=device.system_id, token=device.token, retries=0)  # fmt: skip
        for number in range(1, receipts + 1):
            response = await kkm.send(ticket(number))
            assert response.result.result_code == ResultCode.OK, response.result.result_text
            signs[response.ticket.ticket_number] = (device.system_id, number)

    async with running_gateway(settings) as gateway:
        async with asyncio.TaskGroup() as devices:
            for _ in range(3):
                devices.create_task(run_device(gateway.tcp.port))
        # Read while the gateway still runs: every answer was sent after its acknowledgement.
        records = await asyncio.to_thread(
            read_topic,
            kafka_bootstrap,
            kafka.topic,
            lambda got: {JournalRecord.FromString(r.value).fiscal_sign for r in got} >= set(signs),
        )
    journaled = journal_records(records)
    assert sorted(r.fiscal_sign for r in journaled) == sorted(signs), "each exactly once"
    for record in journaled:
        device_id, number = signs[record.fiscal_sign]
        assert record.device_id == device_id
        assert record.document_id == f"{device_id}/s1/d{number}"
        assert record.gateway_id == settings.gateway_id
    assert not settings.journal_dir.exists(), "nothing went to the local journal"


async def test_broker_down_answers_254_and_resend_is_accepted_after_restart(
    tmp_path: Path, database_url: str, own_kafka: KafkaCluster
) -> None:
    broker = own_kafka
    kafka = KafkaSettings(
        broker.bootstrap, topic=unique_topic("down"), delivery_timeout=SHORT_DELIVERY_TIMEOUT
    )
    await asyncio.to_thread(ensure_topic, kafka, PARTITIONS)
    settings = dataclasses.replace(gateway_settings(tmp_path, database_url), kafka=kafka)
    async with running_gateway(settings) as gateway:
        device = await register_device(database_url)
        kkm = SimulatedKkm(
            "127.0.0.1",
            gateway.tcp.port,
            version=VERSION,
            system_id=device.system_id,
            token=device.token,
            retries=0,
        )
        first = await kkm.send(ticket(1))
        assert first.result.result_code == ResultCode.OK, first.result.result_text
        before = await device_row(database_url, device.system_id)
        token = kkm.token

        await asyncio.to_thread(broker.kill)
        started = time.monotonic()
        down = await kkm.send(ticket(2))
        elapsed = time.monotonic() - started
        assert down.result.result_code == ResultCode.SERVICE_TEMPORARILY_UNAVAILABLE
        assert elapsed < SHORT_DELIVERY_TIMEOUT + ANSWER_MARGIN, elapsed
        assert kkm.token == token
        assert await device_row(database_url, device.system_id) == before

        # The broker comes back with its log: the topic and the first receipt are there.
        await asyncio.to_thread(broker.start_node)
        assert not await asyncio.to_thread(ensure_topic, kafka, PARTITIONS)
        resent = await kkm.retransmit()
        assert resent.result.result_code == ResultCode.OK, resent.result.result_text
        assert kkm.token != token
        after = await device_row(database_url, device.system_id)
        assert after["documents_accepted"] == before["documents_accepted"] + 1
        sign = resent.ticket.ticket_number
        records = await asyncio.to_thread(
            read_topic,
            broker.bootstrap,
            kafka.topic,
            lambda got: any(JournalRecord.FromString(r.value).fiscal_sign == sign for r in got),
        )
    journaled = journal_records(records)
    # The first receipt, then the resent second one; the refused attempt left nothing.
    assert [r.fiscal_sign for r in journaled] == [first.ticket.ticket_number, sign]
    assert journaled[1].document_id == f"{device.system_id}/s1/d2"
    # The answer as sent, its header's (new) token zeroed: the journal carries no token.
    assert journaled[1].response_frame == without_token(kkm.last_response_frame)


async def test_open_journal_follows_the_settings(tmp_path: Path, kafka_bootstrap: str) -> None:
    local_settings = gateway_settings(tmp_path, "postgresql://unused")
    local = await open_journal(local_settings)
    assert isinstance(local, LocalJournal)
    await local.close()
    settings = KafkaSettings(kafka_bootstrap, topic=unique_topic("opened"), partitions=3)
    kafka = await open_journal(dataclasses.replace(local_settings, kafka=settings))
    assert isinstance(kafka, KafkaJournal)
    await kafka.close()
    # The gateway made the topic with the partitions asked for; a second start leaves it.
    assert not await asyncio.to_thread(ensure_topic, settings)
    assert await asyncio.to_thread(topic_partitions, kafka_bootstrap, settings.topic) == 3
    spooling = dataclasses.replace(settings, on_outage="spool")
    spool = await open_journal(dataclasses.replace(local_settings, kafka=spooling))
    assert isinstance(spool, SpoolingJournal)
    await spool.close()


def topic_partitions(bootstrap: str, topic: str) -> int:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(
        topic, timeout=READ_TIMEOUT
    )
    return len(metadata.topics[topic].partitions)


def test_serve_refuses_kafka_without_bootstrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OFD_KAFKA_BOOTSTRAP", raising=False)
    argv = ["serve", "--data-dir", str(tmp_path), "--secret-hex", "00" * 16, "--journal", "kafka"]
    assert main(argv) == EXIT_USAGE


def test_kafka_settings_are_checked_at_start_up() -> None:
    with pytest.raises(ValueError, match="compression"):
        KafkaSettings("127.0.0.1:1", compression="brotli")
    with pytest.raises(ValueError, match="timeout"):
        KafkaSettings("127.0.0.1:1", delivery_timeout=0)
    with pytest.raises(ValueError, match="partitions"):
        KafkaSettings("127.0.0.1:1", partitions=0)
    with pytest.raises(ValueError, match="outage"):
        KafkaSettings("127.0.0.1:1", on_outage="ignore")


# --- the "spool" outage policy (ledger/journal/spool.py) ---

SPOOL_DEVICES = (101, 102, 103)
SPOOL_DRAIN_TIMEOUT = 30.0  # the replayer's first retry comes within seconds of the restart


def numbered(device_id: int, number: int) -> JournalEntry:
    return JournalEntry(device_id, f"{device_id}:{number}".encode())


def numbers_by_device(records: Sequence[Consumed]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for record in records:
        device, number = record.value.decode().split(":")
        assert decode_key(record.key) == int(device)
        out.setdefault(int(device), []).append(int(number))
    return out


async def wait_drained(journal: SpoolingJournal) -> None:
    async with asyncio.timeout(SPOOL_DRAIN_TIMEOUT):
        while journal.spooling:  # noqa: ASYNC110  # the replayer's progress is what is awaited
            await asyncio.sleep(POLL)


def spool_settings(bootstrap: str, name: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap,
        topic=unique_topic(name),
        delivery_timeout=SHORT_DELIVERY_TIMEOUT,
        on_outage="spool",
    )


async def test_spool_takes_a_broker_outage_and_replays_it_in_order(
    tmp_path: Path, own_kafka: KafkaCluster
) -> None:
    broker = own_kafka
    kafka = spool_settings(broker.bootstrap, "spool")
    await asyncio.to_thread(ensure_topic, kafka, PARTITIONS)
    journal = SpoolingJournal(KafkaJournal(kafka), tmp_path / "spool")
    try:
        await journal.append([numbered(d, 1) for d in SPOOL_DEVICES])
        assert not journal.spooling
        assert journal.stats.spooled == 0

        await asyncio.to_thread(broker.kill)
        # The batch that finds the broker gone waits its delivery timeout, then is made
        # durable in the spool; the next ones go straight there, while the broker is down.
        await journal.append([numbered(d, 2) for d in SPOOL_DEVICES])
        assert journal.spooling
        await journal.append([numbered(d, 3) for d in SPOOL_DEVICES])
        assert journal.stats.outages == 1
        assert journal.stats.spooled == 2 * len(SPOOL_DEVICES)
        assert journal.backlog_bytes > 0

        # The broker comes back with its log: the topic and record 1 are still there.
        await asyncio.to_thread(broker.start_node)
        assert not await asyncio.to_thread(ensure_topic, kafka, PARTITIONS)
        await wait_drained(journal)
        assert journal.stats.replayed == 2 * len(SPOOL_DEVICES)
        assert journal.backlog_bytes == 0
        await journal.append([numbered(d, 4) for d in SPOOL_DEVICES])
        assert journal.stats.spooled == 2 * len(SPOOL_DEVICES), "Kafka again, not the spool"
    finally:
        await journal.close()
    records = await asyncio.to_thread(
        read_topic,
        broker.bootstrap,
        kafka.topic,
        lambda got: (
            all(4 in ns for ns in numbers_by_device(got).values())
            and len(numbers_by_device(got)) == len(SPOOL_DEVICES)
        ),
    )
    for device, numbers in numbers_by_device(records).items():
        # In order per device, nothing lost; a record of the batch that timed out may also be
        # there twice (written by the broker just before it died, unacknowledged, then replayed).
        assert numbers == sorted(numbers), (device, numbers)
        assert set(numbers) == {1, 2, 3, 4}, (device, numbers)
    assert not list((tmp_path / "spool").glob("*.seg")) or all(
        p.stat().st_size == 0 for p in (tmp_path / "spool").glob("*.seg")
    ), "a drained spool is emptied"


async def test_a_spool_left_by_a_stopped_gateway_is_replayed_first(
    tmp_path: Path, own_kafka: KafkaCluster
) -> None:
    broker = own_kafka
    kafka = spool_settings(broker.bootstrap, "respool")
    await asyncio.to_thread(broker.kill)
    first = SpoolingJournal(KafkaJournal(kafka), tmp_path / "spool")
    for number in (1, 2):
        await first.append([numbered(d, number) for d in SPOOL_DEVICES])
    assert first.spooling
    await first.close()

    await asyncio.to_thread(broker.start_node)
    assert await asyncio.to_thread(ensure_topic, kafka, PARTITIONS)
    second = SpoolingJournal(KafkaJournal(kafka), tmp_path / "spool")
    try:
        assert second.spooling, "the backlog found on start is replayed before anything new"
        await second.append([numbered(d, 3) for d in SPOOL_DEVICES])
        await wait_drained(second)
        await second.append([numbered(d, 4) for d in SPOOL_DEVICES])
    finally:
        await second.close()
    records = await asyncio.to_thread(
        read_topic,
        broker.bootstrap,
        kafka.topic,
        lambda got: sum(len(n) for n in numbers_by_device(got).values()) >= 4 * len(SPOOL_DEVICES),
    )
    assert numbers_by_device(records) == {d: [1, 2, 3, 4] for d in SPOOL_DEVICES}


async def test_gateway_with_spool_answers_ok_through_a_broker_outage(
    tmp_path: Path, database_url: str, own_kafka: KafkaCluster
) -> None:
    broker = own_kafka
    kafka = spool_settings(broker.bootstrap, "gwspool")
    await asyncio.to_thread(ensure_topic, kafka, PARTITIONS)
    settings = dataclasses.replace(gateway_settings(tmp_path, database_url), kafka=kafka)
    receipts = 12
    kill_after, restart_after = 4, 8
    signs: dict[int, list[str]] = {}
    reached = [asyncio.Event() for _ in range(receipts + 1)]
    devices = 3

    async def run_device(port: int) -> None:
        device = await register_device(database_url)
        kkm = SimulatedKkm(
            "127.0.0.1",
            port,
            version=VERSION,
            system_id=device.system_id,
            token=device.token,
            retries=0,
        )
        got = signs.setdefault(device.system_id, [])
        for number in range(1, receipts + 1):
            response = await kkm.send(ticket(number))
            # Never 254: a document the broker could not take went to the spool.
            assert response.result.result_code == ResultCode.OK, response.result.result_text
            got.append(response.ticket.ticket_number)
            if sum(len(s) >= number for s in signs.values()) == devices:
                reached[number].set()
            await reached[number].wait()  # the devices move together past the outage

    async def outage() -> None:
        await reached[kill_after].wait()
        await asyncio.to_thread(broker.kill)
        await reached[restart_after].wait()
        await asyncio.to_thread(broker.start_node)

    async with running_gateway(settings) as gateway:
        async with asyncio.TaskGroup() as tasks:
            for _ in range(devices):
                tasks.create_task(run_device(gateway.tcp.port))
            tasks.create_task(outage())
        answered = {sign for got in signs.values() for sign in got}
        records = await asyncio.to_thread(
            read_topic,
            broker.bootstrap,
            kafka.topic,
            lambda got: {JournalRecord.FromString(r.value).fiscal_sign for r in got} >= answered,
        )
        spool = {
            sample.name: sample.value
            for family in gateway.metrics.collect()
            for sample in family.samples
            if sample.name.startswith("ofd_journal_")
        }
    assert spool["ofd_journal_outages_total"] >= 1
    assert spool["ofd_journal_spooled_total"] >= 1
    assert spool["ofd_journal_replayed_total"] == spool["ofd_journal_spooled_total"]
    assert spool["ofd_journal_spool_bytes"] == 0
    journaled = journal_records(records)
    # Everything answered is in the topic, before, during and after the outage, and nothing
    # else; in each device's order (a document the dying broker wrote without acknowledging may
    # be there twice, next to itself).
    assert {r.fiscal_sign for r in journaled} == answered
    for system_id, got in signs.items():
        order = [got.index(r.fiscal_sign) for r in journaled if r.device_id == system_id]
        assert order == sorted(order), (system_id, order)
