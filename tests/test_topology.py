"""The production topology, broken on purpose while a fleet sells (simulators/stage/topology.py):
three Kafka brokers (replication 3, min.insync.replicas 2), a PostgreSQL primary with a
synchronous replica, two gateways in network namespaces behind HAProxy (PROXY protocol v2), a
warehouse loader.

One after another, with devices selling throughout: the leader of a journal partition is killed
(and brought back), a gateway is killed (and restarted), the PostgreSQL primary crashes and the
replica is promoted, a gateway is cut off from Kafka for 30 s (and healed). Then a checker proves
from outside: every acknowledged document is in the topic and in the warehouse exactly once, and
every device's last token works. What each fault cost (answers 254 or lost links seen by
devices, seconds until every device was served again) is printed.

Needs root (network namespaces), Debian's HAProxy, PostgreSQL and Mosquitto, and Kafka's jars.
"""

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from wire import numbered_ticket

from benchmarks.fleet import register_devices
from ledger.journal.kafka import decode_key
from ledger.wire import ResultCode
from ofdproto.journal.v1.record_pb2 import JournalRecord
from simulators.kkm import DeviceOffline, SimulatedKkm
from simulators.stage.topology import Topology

pytestmark = [
    pytest.mark.topology,
    # Network namespaces and routes are root's; CI runs as root, so there it always runs.
    pytest.mark.skipif(os.geteuid() != 0, reason="the topology's network namespaces need root"),
]

DEVICES = 6
VERSION = 203
START = datetime(2026, 12, 1, 9, 0, 0)
PROGRESS = 3  # receipts every device must have acknowledged after a fault before the next
FAULT_DEADLINE = 120.0  # seconds a fault may take to be served through (liveness only)
CUT_SECONDS = 30.0
LOAD_DEADLINE = 180.0


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with Topology(tmp_path_factory.mktemp("topology")) as running:
        yield running


@dataclasses.dataclass
class Till:
    kkm: SimulatedKkm
    acknowledged: list[int] = dataclasses.field(default_factory=list)
    setbacks: int = 0  # 254 answers and broken links seen

    @property
    def system_id(self) -> int:
        return self.kkm.system_id


def receipt(number: int) -> Any:
    return numbered_ticket(VERSION, number, START)


async def answered(till: Till, request: Any) -> Any:
    """`request` sent, then the same frame again until a real answer (not 254)."""

    async def first() -> Any:
        return await till.kkm.send(request)

    attempt: Callable[[], Awaitable[Any]] = first
    while True:
        try:
            response = await attempt()
        except DeviceOffline:
            till.setbacks += 1
            await asyncio.sleep(0.2)
        else:
            if response.result.result_code != ResultCode.SERVICE_TEMPORARILY_UNAVAILABLE:
                return response
            till.setbacks += 1
            await asyncio.sleep(0.2)
        attempt = till.kkm.retransmit


async def sell(till: Till, stop: asyncio.Event, progress: asyncio.Condition) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        response = await answered(till, receipt(number))
        assert response.result.result_code == ResultCode.OK, response.result.result_text
        till.acknowledged.append(number)
        async with progress:
            progress.notify_all()


@dataclasses.dataclass
class Cost:
    fault: str
    setbacks: int
    seconds: float  # from the fault until every device acknowledged PROGRESS more receipts


async def through(
    name: str,
    tills: list[Till],
    progress: asyncio.Condition,
    fault: Callable[[], None],
) -> Cost:
    before = {t.system_id: (len(t.acknowledged), t.setbacks) for t in tills}
    began = time.monotonic()
    await asyncio.to_thread(fault)
    async with asyncio.timeout(FAULT_DEADLINE), progress:
        await progress.wait_for(
            lambda: all(len(t.acknowledged) >= before[t.system_id][0] + PROGRESS for t in tills)
        )
    setbacks = sum(t.setbacks - before[t.system_id][1] for t in tills)
    return Cost(name, setbacks, round(time.monotonic() - began, 1))


def topic_documents(topology: Topology) -> dict[str, int]:
    """document id -> copies in the journal topic, read to its end on every partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": topology.bootstrap,
            "group.id": "topology-checker",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        metadata = consumer.list_topics(topology.settings.topic, timeout=30)
        partitions = list(metadata.topics[topology.settings.topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topology.settings.topic, p))[1]
                for p in partitions}  # fmt: skip
        consumer.assign([TopicPartition(topology.settings.topic, p, 0) for p in partitions])
        copies: dict[str, int] = {}
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + 60
        while len(done) < len(partitions) and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            value, key, offset, partition = (
                message.value(),
                message.key(),
                message.offset(),
                message.partition(),
            )
            assert value is not None
            assert key is not None
            assert offset is not None
            assert partition is not None
            record = JournalRecord.FromString(value)
            assert decode_key(key) == record.device_id
            copies[record.document_id] = copies.get(record.document_id, 0) + 1
            if offset + 1 >= ends[partition]:
                done.add(partition)
        assert len(done) == len(partitions), "the topic was not read to its end"
        return copies
    finally:
        consumer.close()


def warehouse_documents(topology: Topology) -> dict[str, int]:
    """document id -> rows in the warehouse (FINAL: merged, as an analyst must ask)."""
    done = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "query", "--data-dir",
         str(topology.work_dir / "loader"), "--format", "json",
         "select document_id, count() as n from ofd.documents final group by document_id"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    return {str(row["document_id"]): int(row["n"]) for row in rows}


async def test_faults_lose_nothing_acknowledged(topology: Topology) -> None:
    first = topology.gateways[0]
    key = (topology.work_dir / first.name / "operator.key").read_text().strip()
    keys = await asyncio.to_thread(register_devices, first.control, DEVICES, key)
    host, port = topology.device_endpoint
    tills = [
        Till(SimulatedKkm(host, port, version=VERSION, system_id=k.system_id, token=k.token,
                          timeout=15.0, retries=2))
        for k in keys
    ]  # fmt: skip
    stop = asyncio.Event()
    progress = asyncio.Condition()
    selling = [asyncio.create_task(sell(till, stop, progress)) for till in tills]
    costs: list[Cost] = []
    kafka = topology.kafka
    assert kafka is not None
    try:
        async with asyncio.timeout(FAULT_DEADLINE), progress:
            await progress.wait_for(lambda: all(len(t.acknowledged) >= PROGRESS for t in tills))

        leader = kafka.leader(topology.settings.topic, 0)
        costs.append(await through("kill the partition leader", tills, progress,
                                   lambda: kafka.kill(leader)))  # fmt: skip
        await asyncio.to_thread(kafka.start_node, leader)

        victim = topology.gateways[0]
        costs.append(await through("kill a gateway", tills, progress,
                                   lambda: topology.kill_gateway(victim)))  # fmt: skip
        await asyncio.to_thread(topology.start_gateway, victim)

        def promote() -> None:
            assert topology.primary is not None
            assert topology.replica is not None
            topology.primary.stop("immediate")
            topology.replica.promote()

        costs.append(await through("promote the PostgreSQL replica", tills, progress, promote))

        cut = topology.gateways[1]
        began = time.monotonic()
        costs.append(await through("cut a gateway off from Kafka", tills, progress,
                                   lambda: topology.cut_from_kafka(cut)))  # fmt: skip
        await asyncio.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - began)))
        costs.append(await through("heal the cut", tills, progress,
                                   lambda: topology.heal_kafka(cut)))  # fmt: skip
    finally:
        stop.set()
        for task in selling:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    for cost in costs:
        print(f"{cost.fault}: {cost.setbacks} setbacks seen by devices, all served again"
              f" within {cost.seconds} s")  # fmt: skip

    # Every device's last token works (the answer it was last given is what the OFD knows).
    for till in tills:
        number = till.acknowledged[-1] + 1
        response = await answered(till, receipt(number))
        assert response.result.result_code == ResultCode.OK, response.result.result_text
        till.acknowledged.append(number)
    acknowledged = {f"{t.system_id}/s1/d{n}" for t in tills for n in t.acknowledged}

    in_topic = await asyncio.to_thread(topic_documents, topology)
    assert acknowledged <= set(in_topic), "an acknowledged document is missing from the topic"

    deadline = time.monotonic() + LOAD_DEADLINE
    while True:
        in_warehouse = await asyncio.to_thread(warehouse_documents, topology)
        if acknowledged <= set(in_warehouse) or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    ours = {doc: n for doc, n in in_warehouse.items() if doc in acknowledged}
    assert set(ours) == acknowledged, "an acknowledged document never reached the warehouse"
    assert set(ours.values()) == {1}, "a document is in the warehouse more than once"
