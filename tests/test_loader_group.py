"""Two loaders in one consumer group (Apache Kafka + chDB): they split the partitions, and when
one dies mid-batch the other takes its partitions over; every document is loaded exactly once.

chDB admits one process per data directory, and two loaders writing to two warehouses would not
share positions, so both group members run in this process, each in its own thread with its own
consumer and `Loader`, over one warehouse session. The dying member stops right after an insert,
before its position is stored (the worst moment), and then closes its consumer, which leaves the
group as a stopped process does; a member killed without leaving (its partitions move once its
session times out) is the restart in test_loader_kafka.py.
"""

import contextlib
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY
from warehouse_journal import Sent, receipt_record

from ledger.journal.kafka import KafkaSettings, ensure_topic
from ledger.warehouse.backends import Warehouse, open_warehouse
from ledger.warehouse.kafka_source import KafkaGroupMember, source_name
from ledger.warehouse.loader import Loader, LoaderSettings, read_position

PARTITIONS = 4
DEVICES = 8
PER_DEVICE = 12  # records per device and wave
BATCH = 5  # records per insert: several inserts per partition and wave
DIE_AFTER_INSERTS = 2
WAIT_TIMEOUT = 60.0  # bounds a group join, a rebalance, a leave (each well under a second)
FLUSH_TIMEOUT = 10.0


class Died(BaseException):
    """Ends a member's loader thread (Loader.run retries on Exception, as after a hiccup)."""


class Member:
    def __init__(self, warehouse: Warehouse, bootstrap: str, topic: str, group: str) -> None:
        self.group = KafkaGroupMember(
            bootstrap,
            topic,
            lambda name: read_position(warehouse, name),
            group=group,
            batch_records=BATCH,
        )
        settings = LoaderSettings(batch_records=BATCH)
        self.loader = Loader(warehouse, self.group, settings, after_insert=self._after_insert)
        self.die_after: int | None = None  # set by the test thread, read by the loader's
        self._inserts = 0
        self._closed = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"loader-{id(self)}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Died):
            self.loader.run(self.stop)

    def _after_insert(self) -> None:
        self._inserts += 1
        if self.die_after is not None and self._inserts >= self.die_after:
            raise Died

    def close(self) -> None:
        """Stops the loader and leaves the group (as a stopped `ofd load` does)."""
        if not self._closed:
            self._closed = True
            self.stop.set()
            self.thread.join(WAIT_TIMEOUT)
            self.group.close()


def _produce(bootstrap: str, topic: str, first: int) -> list[Sent]:
    """A wave of receipts; a device's records go to one partition, as the journal keys them."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    sent = []
    for number in range(first, first + PER_DEVICE):
        for device in range(1, DEVICES + 1):
            entry, doc = receipt_record(1000 + device, number)
            producer.produce(topic, entry.payload, partition=device % PARTITIONS)
            sent.append(doc)
    assert producer.flush(FLUSH_TIMEOUT) == 0
    return sent


def _wait(what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _loaded(warehouse: Warehouse) -> list[tuple[int, str]]:
    rows = warehouse.select("SELECT device_id, document_id FROM ofd.documents")
    return sorted((int(r["device_id"]), str(r["document_id"])) for r in rows)


def _no_lag(source: str) -> bool:
    return REGISTRY.get_sample_value("ofd_warehouse_lag_records", {"source": source}) == 0


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    wh = open_warehouse(path=tmp_path / "warehouse")
    try:
        yield wh
    finally:
        wh.close()


def test_members_split_partitions_and_one_takes_over(
    warehouse: Warehouse, kafka_bootstrap: str
) -> None:
    topic = f"test.group.{uuid.uuid4().hex[:10]}"
    ensure_topic(KafkaSettings(kafka_bootstrap, topic=topic), PARTITIONS)
    group = f"group.{topic}"
    first = Member(warehouse, kafka_bootstrap, topic, group)
    second = Member(warehouse, kafka_bootstrap, topic, group)
    try:
        every = frozenset(range(PARTITIONS))
        _wait(
            "the group to split the partitions",
            lambda: (
                bool(first.group.assigned)
                and bool(second.group.assigned)
                and first.group.assigned | second.group.assigned == every
            ),
        )
        assert not first.group.assigned & second.group.assigned
        held_by_second = second.group.assigned

        second.die_after = DIE_AFTER_INSERTS
        sent = _produce(kafka_bootstrap, topic, 1)
        _wait("the second member to die", lambda: not second.thread.is_alive())
        assert first.group.assigned | held_by_second == every  # no rebalance meanwhile
        second.close()  # leaves the group, with a batch inserted and its position not
        _wait("the first member to take over", lambda: first.group.assigned == every)

        sent += _produce(kafka_bootstrap, topic, 1 + PER_DEVICE)
        expected = sorted((d.device_id, d.document_id) for d in sent)
        _wait("every document", lambda: _loaded(warehouse) == expected)
        assert second.loader.loaded > 0  # it did load its share before it died
        assert _loaded(warehouse) == expected  # exactly once: nothing doubled meanwhile
        daily = warehouse.select(
            "SELECT device_id, sum(receipts) AS n, sum(revenue) AS v FROM ofd.daily_device"
            " GROUP BY device_id"
        )
        got = {int(r["device_id"]): (int(r["n"]), int(r["v"])) for r in daily}
        want: dict[int, tuple[int, int]] = {}
        for doc in sent:
            n, v = want.get(doc.device_id, (0, 0))
            want[doc.device_id] = (n + 1, v + doc.revenue)
        assert got == want

        # Each partition's stored position is its end, and the lag gauge says none is left.
        for partition in every:
            name = source_name(topic, partition)
            expected_position = PER_DEVICE * 2 * DEVICES // PARTITIONS
            assert read_position(warehouse, name) == expected_position
            _wait(f"lag of {name} to reach 0", functools.partial(_no_lag, name))
    finally:
        first.close()
        second.close()


def _recreate(bootstrap: str, topic: str) -> None:
    """Deletes `topic` and makes it again (empty, one partition) once Kafka lets it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic], operation_timeout=FLUSH_TIMEOUT)[topic].result(FLUSH_TIMEOUT)
    settings = KafkaSettings(bootstrap, topic=topic)
    _wait("the topic to be made again", lambda: ensure_topic(settings, 1))


def test_a_topic_made_again_is_read_from_its_start(
    warehouse: Warehouse, kafka_bootstrap: str
) -> None:
    """A log that ends below the stored position lost records (here: the topic was deleted and
    made again): the member starts the partition over instead of skipping the new records."""
    topic = f"test.remade.{uuid.uuid4().hex[:10]}"
    ensure_topic(KafkaSettings(kafka_bootstrap, topic=topic), 1)
    name = source_name(topic, 0)
    member = Member(warehouse, kafka_bootstrap, topic, f"group.{topic}")
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
        before = [receipt_record(2000, n) for n in range(1, 11)]
        for entry, _ in before:
            producer.produce(topic, entry.payload, partition=0)
        assert producer.flush(FLUSH_TIMEOUT) == 0
        _wait("the first log", lambda: read_position(warehouse, name) == len(before))

        _recreate(kafka_bootstrap, topic)
        after = [receipt_record(2000, n) for n in range(11, 15)]  # fewer than before
        for entry, _ in after:
            producer.produce(topic, entry.payload, partition=0)
        assert producer.flush(FLUSH_TIMEOUT) == 0
        expected = sorted((d.device_id, d.document_id) for _, d in before + after)
        _wait("the new log's records", lambda: _loaded(warehouse) == expected)
        _wait("the position to follow the new log", lambda: read_position(warehouse, name) == 4)
    finally:
        member.close()
