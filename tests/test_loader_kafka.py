"""End to end: gateways journal to Apache Kafka, the loader (its own process, a member of a
consumer group) feeds chDB.

Devices send receipts while the loader is killed (SIGKILL) and restarted twice and the broker is
stopped and restarted once (its log survives: the topic is not made again); afterwards every
acknowledged document is in the warehouse exactly once and the daily aggregates equal the sums of
the acknowledged receipts. A killed loader stays in the group until its session times out, so its
restart gets the partitions several seconds later (see ledger/warehouse/kafka_source.py); the
running loader rides out the broker's restart in its group.
"""

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from conftest import gateway_settings, register_device
from warehouse_journal import receipt_record

from ingest.app import running_gateway
from ledger.journal.kafka import KafkaJournal, KafkaSettings, ensure_topic
from ledger.schemas import SCHEMAS
from ledger.warehouse.service import query, service_address
from ledger.wire import ResultCode
from simulators.kkm import SimulatedKkm
from simulators.receipts import Line, build_ticket
from simulators.stage.kafka import KafkaCluster

VERSION = 204
PARTITIONS = 2
DEVICES = 4
DAY0 = datetime(2026, 11, 20, 8, 0, 0)
CATCH_UP_TIMEOUT = 30.0
SHORT_DELIVERY_TIMEOUT = 1.0


@dataclasses.dataclass
class Fleet:
    kkms: list[SimulatedKkm]
    acked: dict[tuple[int, str], tuple[str, int]]  # identity -> (day, revenue in tiyn)
    numbers: dict[int, int]

    async def send_round(self, count: int) -> None:
        """Each device sends `count` receipts (devices concurrently, each in order)."""
        await asyncio.gather(*(self._device(kkm, count) for kkm in self.kkms))

    async def _device(self, kkm: SimulatedKkm, count: int) -> None:
        for _ in range(count):
            number = self.numbers[kkm.system_id] = self.numbers[kkm.system_id] + 1
            await self._send(kkm, number)

    async def _send(self, kkm: SimulatedKkm, number: int, *, resend: bool = False) -> bool:
        # A shift stays open at most 24 hours: one shift each, devices on different days.
        when = DAY0 + timedelta(days=kkm.system_id % 3, minutes=20 * number)
        lines = [Line("Нан", "1", 1000, 1000 + 37 * number + kkm.system_id % 100)]
        if resend:
            response = await kkm.retransmit()
        else:
            ticket = build_ticket(
                SCHEMAS[VERSION], when=when, shift_number=1, document_number=number,
                lines=lines, payment="card",
            )  # fmt: skip
            response = await kkm.send(ticket)
        if response.result.result_code != ResultCode.OK:
            print("not acknowledged:", response.result.result_code, response.result.result_text)
            return False
        total = sum(line.sum_tiyn for line in lines)
        self.acked[(kkm.system_id, f"{kkm.system_id}/s1/d{number}")] = (
            when.date().isoformat(),
            total,
        )
        return True


def _start_loader(data_dir: Path, broker: KafkaCluster, topic: str) -> subprocess.Popen[bytes]:
    log = open(data_dir.parent / "loader.log", "ab")  # noqa: SIM115  (the child holds it)
    return subprocess.Popen(
        [
            sys.executable, "-m", "ingest.cli", "load", "--data-dir", str(data_dir),
            "--kafka-bootstrap", broker.bootstrap, "--kafka-topic", topic,
            "--kafka-group", f"group.{topic}", "--batch", "25",
        ],
        stdout=log, stderr=log, env=os.environ.copy(),
    )  # fmt: skip


def _kill(loader: subprocess.Popen[bytes]) -> None:
    loader.send_signal(signal.SIGKILL)
    loader.wait(10)


def _wait_service(data_dir: Path, loader: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + CATCH_UP_TIMEOUT
    while True:
        address = service_address(data_dir)
        info = (data_dir / "warehouse" / "service.json").read_text() if address else ""
        if address and f'"pid": {loader.pid}' in info:
            return
        assert loader.poll() is None, "loader exited"
        assert time.monotonic() < deadline, "loader service did not start"
        time.sleep(0.05)


def _loaded(data_dir: Path) -> set[tuple[int, str]]:
    rows = query(data_dir, {"sql": "SELECT device_id, document_id FROM ofd.documents"})
    return {(int(r["device_id"]), str(r["document_id"])) for r in rows}


async def _catch_up(data_dir: Path, loader: subprocess.Popen[bytes], fleet: Fleet) -> None:
    await asyncio.to_thread(_wait_service, data_dir, loader)
    deadline = time.monotonic() + CATCH_UP_TIMEOUT
    while not set(fleet.acked) <= await asyncio.to_thread(_loaded, data_dir):
        assert time.monotonic() < deadline, "loader did not catch up"
        await asyncio.sleep(0.1)


async def test_every_acknowledged_document_lands_once(
    tmp_path: Path, database_url: str, own_kafka: KafkaCluster
) -> None:
    broker = own_kafka
    data_dir = tmp_path / "warehouse-data"
    data_dir.mkdir()
    topic = f"test.warehouse.{uuid.uuid4().hex[:10]}"
    kafka = KafkaSettings(broker.bootstrap, topic=topic, delivery_timeout=SHORT_DELIVERY_TIMEOUT)
    loader: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(ensure_topic, kafka, PARTITIONS)
        settings = dataclasses.replace(gateway_settings(tmp_path, database_url), kafka=kafka)
        async with running_gateway(settings) as gateway:
            devices = [await register_device(database_url) for _ in range(DEVICES)]
            kkms = [
                SimulatedKkm("127.0.0.1", gateway.tcp.port, version=VERSION,
                             system_id=d.system_id, token=d.token, retries=0)
                for d in devices
            ]  # fmt: skip
            fleet = Fleet(kkms, {}, defaultdict(int))
            loader = _start_loader(data_dir, broker, topic)
            await fleet.send_round(6)
            _kill(loader)  # first kill, mid-stream
            await fleet.send_round(4)
            loader = _start_loader(data_dir, broker, topic)
            await fleet.send_round(4)
            await _catch_up(data_dir, loader, fleet)

            # The broker goes away: devices are answered 254 and nothing is acknowledged.
            await asyncio.to_thread(broker.stop_node)
            down = await asyncio.gather(
                *(fleet._send(k, fleet.numbers[k.system_id] + 1) for k in kkms)
            )
            assert not any(down)
            await asyncio.to_thread(broker.start_node)
            assert not await asyncio.to_thread(ensure_topic, kafka, PARTITIONS), "the log is kept"
            for kkm in kkms:  # the unanswered receipt, resent byte for byte from its queue
                fleet.numbers[kkm.system_id] += 1
                deadline = time.monotonic() + CATCH_UP_TIMEOUT
                while not await fleet._send(kkm, fleet.numbers[kkm.system_id], resend=True):
                    assert time.monotonic() < deadline, "resend never accepted"
                    await asyncio.sleep(0.2)  # a producer reconnecting to the new broker
            await fleet.send_round(3)
            _kill(loader)  # second kill
            await fleet.send_round(3)
            loader = _start_loader(data_dir, broker, topic)
            await fleet.send_round(2)
            await _catch_up(data_dir, loader, fleet)

            rows = await asyncio.to_thread(
                query, data_dir, {"sql": "SELECT device_id, document_id FROM ofd.documents"}
            )
            identities = [(int(r["device_id"]), str(r["document_id"])) for r in rows]
            assert sorted(identities) == sorted(fleet.acked)  # each exactly once, nothing else
            daily = await asyncio.to_thread(
                query,
                data_dir,
                {
                    "sql": "SELECT device_id, toString(day) AS day, sum(receipts) AS n,"
                    " sum(revenue) AS revenue FROM ofd.daily_device GROUP BY device_id, day"
                },
            )
            expected: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
            for (device, _), (day, revenue) in fleet.acked.items():
                expected[(device, day)][0] += 1
                expected[(device, day)][1] += revenue
            got = {(int(r["device_id"]), r["day"]): [int(r["n"]), int(r["revenue"])] for r in daily}
            assert got == dict(expected)
    finally:
        if loader is not None and loader.poll() is None:
            loader.terminate()
            loader.wait(10)


async def test_load_once_joins_the_group_and_reads_the_topic_to_its_end(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """`ofd load --once` on Kafka: waits for the group to give it partitions, loads what the
    topic holds, exits; a second run finds nothing new (positions are the warehouse's)."""
    topic = f"test.once.{uuid.uuid4().hex[:10]}"
    kafka = KafkaSettings(kafka_bootstrap, topic=topic, partitions=PARTITIONS)
    await asyncio.to_thread(ensure_topic, kafka)
    sent = [receipt_record(300 + n % DEVICES, n) for n in range(1, 41)]
    journal = KafkaJournal(kafka)
    try:
        await journal.append([entry for entry, _ in sent])
    finally:
        await journal.close()

    def load_once() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ingest.cli", "load", "--once", "--data-dir", str(tmp_path),
             "--kafka-bootstrap", kafka_bootstrap, "--kafka-topic", topic,
             "--kafka-group", f"group.{topic}"],
            capture_output=True, text=True, timeout=CATCH_UP_TIMEOUT * 2, check=False,
        )  # fmt: skip

    first = await asyncio.to_thread(load_once)
    assert first.returncode == 0, first.stderr
    assert "loaded 40 documents" in first.stderr
    assert await asyncio.to_thread(_loaded, tmp_path) == {
        (doc.device_id, doc.document_id) for _, doc in sent
    }
    again = await asyncio.to_thread(load_once)
    assert again.returncode == 0, again.stderr
    assert "loaded 0 documents" in again.stderr
