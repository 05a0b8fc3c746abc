"""The loader's Kafka source: a journal topic's partition, read from the warehouse's position.

Partitions are assigned, not subscribed: the position that matters is the one stored in the
warehouse after each insert (so it moves only after the insert, and a crash replays from it),
and tansu, the broker the tests run, completes a group join only after the rebalance timeout.
Loaders split a topic's partitions between them (`partitions`); one device's documents are in one
partition, so no two loaders ever hold the same identity at once.

A broker that lost its log (tansu's memory storage after a restart, a topic recreated) has its
end below the stored offset. Kafka answers such a fetch as out of range (and the consumer resets
to the earliest record); tansu just answers nothing. So an idle partition's watermarks are looked
at (at most every WATERMARK_CHECK seconds): an end below the position starts the partition over
from its first record, and what is read twice collapses by document identity. tansu's high
watermark can be low (it counts batches), which then costs a re-read, never a loss.
"""

import time
import uuid
from collections.abc import Sequence

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from ledger.warehouse.loader import Source

log = structlog.get_logger(__name__)

CONSUME_TIMEOUT = 0.2  # seconds one read waits for records; bounds how fast an idle loader steps
METADATA_TIMEOUT = 10.0
MAX_FETCH_BYTES = 16 * 1024 * 1024
WATERMARK_CHECK = 2.0  # seconds between looks at an idle partition's end
WATERMARK_TIMEOUT = 2.0


class KafkaPartitionSource:
    def __init__(self, bootstrap: str, topic: str, partition: int) -> None:
        self.name = f"kafka:{topic}:{partition}"
        self._topic, self._partition = topic, partition
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                # Required by librdkafka, never joined: positions live in the warehouse.
                "group.id": f"ofd-warehouse-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": MAX_FETCH_BYTES,
                "log_level": 3,
            }
        )
        self._next: int | None = None  # the offset the consumer will deliver next
        self._checked = time.monotonic()
        self._rewound_to: int | None = None

    def read(self, position: int, limit: int) -> list[tuple[int, bytes]]:
        if self._rewound_to is not None:
            position = self._rewound_to  # the log was lost: ahead of the stored position
        if self._next != position:
            where = TopicPartition(self._topic, self._partition, position)
            if self._next is None:
                self._consumer.assign([where])
            else:
                self._consumer.seek(where)
            self._next = position
        out: list[tuple[int, bytes]] = []
        for message in self._consumer.consume(limit, timeout=CONSUME_TIMEOUT):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("warehouse_kafka_read", source=self.name, error=str(error))
                continue
            offset, value = message.offset(), message.value()
            if offset is None or value is None:
                continue
            out.append((offset + 1, value))
        if out:
            self._next = out[-1][0]
        elif time.monotonic() - self._checked >= WATERMARK_CHECK:
            self._checked = time.monotonic()
            return self._restart_if_truncated(position, limit)
        return out

    def _restart_if_truncated(self, position: int, limit: int) -> list[tuple[int, bytes]]:
        where = TopicPartition(self._topic, self._partition)
        try:
            low, high = self._consumer.get_watermark_offsets(where, timeout=WATERMARK_TIMEOUT)
        except KafkaException as err:
            log.warning("warehouse_kafka_watermarks", source=self.name, error=str(err))
            return []
        if high >= position or position == low:
            return []
        log.warning(
            "warehouse_kafka_log_behind_position",
            source=self.name,
            position=position,
            low=low,
            high=high,
        )
        self._rewound_to = low
        return self.read(low, limit)

    def committed(self, position: int) -> None:
        # The warehouse holds the position (Kafka group offsets are not used); once a batch
        # after a rewind is stored, the stored position is the one to follow again.
        self._rewound_to = None

    def close(self) -> None:
        self._consumer.close()


def partition_count(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ofd-warehouse-metadata"})
    try:
        metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            raise RuntimeError(f"kafka topic {topic} is not there")
        return len(described.partitions)
    finally:
        consumer.close()


def kafka_sources(
    bootstrap: str, topic: str, partitions: Sequence[int] | None = None
) -> list[Source]:
    """A source per partition of `topic` (all of them unless `partitions` names some)."""
    chosen = range(partition_count(bootstrap, topic)) if partitions is None else partitions
    return [KafkaPartitionSource(bootstrap, topic, p) for p in chosen]
