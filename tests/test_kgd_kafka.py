"""Forwarding from the Kafka journal: `run_forward` (what `ofd forward --kafka-bootstrap` runs) as a
member of the forwarders' own consumer group sends every acknowledged document to the simulated
KGD over HTTP exactly once and in each register's order; stopped and started again, it goes on
from the positions it stored in PostgreSQL, sending nothing twice.
"""

import asyncio
import dataclasses
import uuid
from pathlib import Path

import pytest
from conftest import gateway_settings
from kgd_stage import Registers, assert_exactly_once, until

from ingest.app import running_gateway
from ledger.journal.kafka import KafkaSettings, ensure_topic
from ledger.kgd.forwarder import ForwarderSettings
from ledger.kgd.http import KgdSettings
from ledger.kgd.retry import Backoff
from ledger.kgd.service import ForwardSettings, RunningForwarder, run_forward
from simulators.kgd import SimulatedKgd

pytestmark = pytest.mark.integration

PARTITIONS = 2
JOIN_AND_DRAIN = 60.0  # seconds: a group join takes seconds on the test broker


async def _forward_until_all(settings: ForwardSettings, kgd: SimulatedKgd, total: int) -> None:
    stop = asyncio.Event()
    ready: list[RunningForwarder] = []
    task = asyncio.create_task(run_forward(settings, stop, ready.append), name="forward")
    try:
        await until(lambda: len(kgd.documents) >= total or task.done(), JOIN_AND_DRAIN, "KGD")
        await until(lambda: ready[0].forwarder.caught_up() or task.done(), 10.0, "caught up")
    finally:
        stop.set()
        await task  # raises what the forwarder raised


async def test_kafka_journal_forwarded_once_and_resumed_from_stored_positions(
    tmp_path: Path, database_url: str, kafka_bootstrap: str
) -> None:
    topic = f"test.kgd.{uuid.uuid4().hex[:10]}"
    kafka = KafkaSettings(kafka_bootstrap, topic=topic)
    await asyncio.to_thread(ensure_topic, kafka, PARTITIONS)
    kgd = SimulatedKgd()
    url = await kgd.start()
    settings = ForwardSettings(
        data_dir=tmp_path,
        database_url=database_url,
        kgd=KgdSettings(url, timeout=2.0),
        forwarder=ForwarderSettings(
            batch_documents=6, poll_interval=0.05, backoff=Backoff(base=0.05, cap=0.5)
        ),
        applications=None,
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=topic,
        kafka_group=f"kgd.{topic}",
    )
    gateway_config = dataclasses.replace(gateway_settings(tmp_path, database_url), kafka=kafka)
    try:
        async with running_gateway(gateway_config) as gateway:
            registers = await Registers.start(database_url, gateway.tcp.port, 4)
            try:
                await registers.send(8)
                await _forward_until_all(settings, kgd, registers.total)
                assert_exactly_once(kgd, registers)
                await registers.send(3)  # while no forwarder runs
                await _forward_until_all(settings, kgd, registers.total)
            finally:
                await registers.close()
        assert_exactly_once(kgd, registers)
        assert kgd.counters.duplicates == 0
    finally:
        await kgd.stop()
