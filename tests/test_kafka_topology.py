"""Three Kafka nodes really replicate: a topic of replication factor 3 and min.insync.replicas 2
survives its leader's crash, and once only one replica is left an acks=all produce is refused
(NOT_ENOUGH_REPLICAS), never acknowledged.

Produces use the journal's own producer configuration (ledger.journal.kafka.producer_config:
idempotent, acks=all, lz4), with a delivery timeout long enough to ride out a leader election:
a killed node is fenced once its session expires (broker.session.timeout.ms, 4 s in the tests).
An idempotent producer must retry, and it retries NOT_ENOUGH_REPLICAS until its delivery timeout;
so the refusal itself is read by a plain acks=all producer with retries 0.

The second node is stopped cleanly rather than killed. The three nodes are also the three voters
of the controller quorum, so with two of them gone no controller can change anything: the ISR
can shrink to one replica only while the quorum stands, which is when a controlled shutdown
reports the node's departure. A second node killed outright would leave the ISR at two and an
acks=all produce would time out instead (not acknowledged either, but not the answer checked
here). The nodes are started again at the end: the cluster is the session's.
"""

import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import NewTopic

from ledger.journal.kafka import KafkaSettings, producer_config
from simulators.stage.kafka import KafkaCluster

pytestmark = pytest.mark.topology

RECORDS = 20
TIMEOUT = 30.0  # bounds a leader election, a read-back, a flush
FAILOVER_DELIVERY_TIMEOUT = 20.0  # per record: longer than fencing a dead leader and electing
REFUSED_DELIVERY_TIMEOUT = 3.0  # the journal's default


def _producer(bootstrap: str, delivery_timeout: float, **overrides: object) -> Producer:
    settings = KafkaSettings(bootstrap, delivery_timeout=delivery_timeout, client_id="topology")
    config = producer_config(settings)
    del config["logger"]  # librdkafka's own lines on stderr: pytest shows them on failure
    return Producer({**config, **overrides})


def _produce(producer: Producer, topic: str, values: list[bytes]) -> list[KafkaError | None]:
    """Produces `values` and returns each record's delivery error (None: acknowledged)."""
    errors: dict[bytes, KafkaError | None] = {}

    def report(error: KafkaError | None, message: Message) -> None:
        value = message.value()
        assert isinstance(value, bytes)
        errors[value] = error

    for value in values:
        producer.produce(topic, value, key=value, on_delivery=report)
    assert producer.flush(TIMEOUT) == 0
    return [errors[v] for v in values]


def _closed(producer: Producer) -> None:
    """Destroys the client now, while pytest still captures what librdkafka writes."""
    producer.flush(0)
    producer.close()


def _read_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}"})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    values: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(values) < count and time.monotonic() < deadline:
            for message in consumer.consume(count, timeout=0.5):
                if message.error() is None:
                    value = message.value()
                    assert isinstance(value, bytes)
                    values.append(value)
    finally:
        consumer.close()
    return values


def _high_watermark(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}"})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=TIMEOUT)
    finally:
        consumer.close()
    return int(high)


def _isr(cluster: KafkaCluster, topic: str) -> set[int]:
    partition = cluster.admin().list_topics(topic, timeout=TIMEOUT).topics[topic].partitions[0]
    return set(partition.isrs)


def _wait(what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_replicated_topic_survives_its_leader_and_refuses_below_min_isr(
    kafka_cluster: KafkaCluster,
) -> None:
    cluster = kafka_cluster
    topic = f"test.replicated.{uuid.uuid4().hex[:10]}"
    admin = cluster.admin()  # held: a dropped client fails its pending futures
    created = admin.create_topics([NewTopic(topic, 1, 3, config={"min.insync.replicas": "2"})])
    created[topic].result(TIMEOUT)
    _wait("three replicas in sync", lambda: _isr(cluster, topic) == set(cluster.node_ids))

    first = [f"before-{n}".encode() for n in range(RECORDS)]
    producer = _producer(cluster.bootstrap, FAILOVER_DELIVERY_TIMEOUT)
    assert _produce(producer, topic, first) == [None] * RECORDS

    leader = cluster.leader(topic)
    down: list[int] = []
    try:
        cluster.kill(leader)
        down.append(leader)
        # Every acknowledged record is on the survivors, and they take new ones (acks=all:
        # both of them have each).
        assert _read_all(cluster.bootstrap, topic, RECORDS) == first
        second = [f"after-{n}".encode() for n in range(RECORDS)]
        assert _produce(producer, topic, second) == [None] * RECORDS
        new_leader = cluster.leader(topic)
        assert new_leader != leader
        _wait("the dead leader out of the ISR", lambda: leader not in _isr(cluster, topic))
        assert _read_all(cluster.bootstrap, topic, 2 * RECORDS) == first + second

        follower = next(n for n in cluster.node_ids if n not in (leader, new_leader))
        cluster.stop_node(follower)
        down.append(follower)
        assert _isr(cluster, topic) == {new_leader}
        # One replica in sync, two required: the journal's producer gets no acknowledgement
        # (librdkafka retries the refusal until the delivery timeout), and the broker's answer,
        # seen by a producer that does not retry, is NOT_ENOUGH_REPLICAS.
        journal_like = _producer(cluster.bootstrap, REFUSED_DELIVERY_TIMEOUT)
        (error,) = _produce(journal_like, topic, [b"refused-journal"])
        _closed(journal_like)
        assert error is not None
        assert error.code() == KafkaError._MSG_TIMED_OUT, error
        plain = Producer(
            {"bootstrap.servers": cluster.bootstrap, "acks": "all", "retries": 0,
             "message.timeout.ms": int(REFUSED_DELIVERY_TIMEOUT * 1000)}
        )  # fmt: skip
        (error,) = _produce(plain, topic, [b"refused-plain"])
        _closed(plain)
        assert error is not None
        assert error.code() == KafkaError.NOT_ENOUGH_REPLICAS, error
        assert _high_watermark(cluster.bootstrap, topic) == 2 * RECORDS
    finally:
        _closed(producer)
        for node in down:
            cluster.start_node(node)
