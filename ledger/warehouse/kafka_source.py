"""The loader's Kafka source: a member of the loaders' consumer group on the journal topic.

Loaders of one topic join one consumer group (`DEFAULT_GROUP`), and the group splits the topic's
partitions between them; one device's documents are in one partition, so no two loaders hold the
same identity at once. The offset a partition is read from is the position the warehouse stores
after each insert (`loader_positions`), not the group's committed offset: on assignment each
partition is placed there. The committed offset follows the warehouse position (it is written
after it) only so that standard tools can show the group's lag.

The member polls once per loader step (`__call__`); the group's callbacks run inside that poll,
between batches, so a partition is revoked only while no batch of it is in flight. A partition
that arrives in a poll is offered from the next one: a partition revoked and given back in one
poll is thus missing from one list, and the loader reads its position from the warehouse again
(another member may have moved it). A batch must end within MAX_POLL_INTERVAL_MS: a member that
overruns it is dropped from the group while still inserting.

Measured against Apache Kafka 4.1.1 (one KRaft node, group.initial.rebalance.delay.ms 0 as in
the tests; a production broker's default of 3 s delays a new group's first assignment by that
much) with confluent-kafka 2.16, eager assignment, a topic of 4 partitions, heartbeat.interval.ms
1000, each member polling every 0.1 s; times from `subscribe()` (or the close, or the kill) to
`on_assign`:

- the first member gets every partition about 1.1 s after `subscribe()`;
- a second member: both hold their halves about 1.0 s after the second's `subscribe()`;
- a member that leaves (`close()`): the other holds its partitions about 1.0 s later;
- a member killed (SIGKILL): the other holds its partitions 6.0 s later (SESSION_TIMEOUT_MS).

Kafka refuses session timeouts below its group.min.session.timeout.ms (6000 ms by default), so
SESSION_TIMEOUT_MS stays there. The eager protocol is used because `_on_assign`/`_on_revoke`
assign and unassign whole sets: cooperative-sticky would need incremental_assign/unassign.

Kafka's high watermark is the offset after the last committed record, and the loader's stored
position is never above it. A log that ends below the stored position therefore lost records:
the topic was deleted and made again, or an unclean leader election truncated it. Kafka answers
a fetch past the end as out of range and the consumer resets to the earliest offset, but the
partition here would skip what lies below the stored position; so an idle partition's
watermarks are looked at (at most every WATERMARK_CHECK seconds), and a high watermark below the
position starts the partition over from its first record; what is read twice collapses by
document identity. A log lost and refilled past the position before the loader looks is not
noticed: its records below the position are skipped (offsets alone cannot tell the two logs
apart).
"""

import itertools
import time
from collections import deque
from collections.abc import Callable

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from ledger.journal.kafka import PLAINTEXT, KafkaSecurity
from ledger.warehouse.loader import Source

log = structlog.get_logger(__name__)

DEFAULT_GROUP = "ofd-warehouse"
CONSUME_TIMEOUT = 0.2  # seconds one poll waits for records; bounds how fast an idle loader steps
MAX_FETCH_BYTES = 16 * 1024 * 1024
SESSION_TIMEOUT_MS = 6_000  # a killed loader's partitions move on after about 6 s (measured)
HEARTBEAT_INTERVAL_MS = 1_000
MAX_POLL_INTERVAL_MS = 60_000  # the longest one batch may take to insert; far above a batch
ASSIGNMENT_STRATEGY = "range"  # eager: the callbacks below assign and revoke whole sets
WATERMARK_CHECK = 2.0  # seconds between looks at an idle partition's end
WATERMARK_TIMEOUT = 2.0

Positions = Callable[[str], int]  # a source name -> the position the warehouse holds for it


def source_name(topic: str, partition: int) -> str:
    return f"kafka:{topic}:{partition}"


class KafkaPartition:
    """One partition for as long as this member holds it; a new object each assignment.

    Records the member polled wait in `_buffered` until the loader stored a position past them;
    the partition is paused while a batch's worth waits, so the buffer stays bounded.
    """

    unit = "records"

    def __init__(self, member: "KafkaGroupMember", partition: int, position: int) -> None:
        self.name = source_name(member.topic, partition)
        self.partition = partition
        self.revoked = False
        self._member = member
        self._start = position  # the position the buffer starts at
        self._next = position  # the offset the consumer delivers next
        self._buffered: deque[tuple[int, bytes]] = deque()
        self._high: int | None = None
        self._checked = time.monotonic()
        self._rewound_to: int | None = None

    def take(self, offset: int, value: bytes) -> None:
        if offset >= self._next:  # older ones were fetched before a seek
            self._buffered.append((offset + 1, value))
            self._next = offset + 1

    def full(self, limit: int) -> bool:
        return len(self._buffered) >= limit

    def read(self, position: int, limit: int) -> list[tuple[int, bytes]]:
        if self.revoked:
            return []
        if self._rewound_to is not None:
            position = self._rewound_to  # the log was lost: ahead of the stored position
        if position != self._start:
            self._drop_through(position)
        if position != self._start:
            self._seek(position)
        if self._buffered:
            return list(itertools.islice(self._buffered, limit))
        if time.monotonic() - self._checked >= WATERMARK_CHECK:
            self._checked = time.monotonic()
            self._restart_if_truncated(position)
        return []

    def _drop_through(self, position: int) -> None:
        if not self._start < position <= self._next:
            return
        while self._buffered and self._buffered[0][0] <= position:
            self._buffered.popleft()
        self._start = position

    def _seek(self, position: int) -> bool:
        try:
            self._member.seek(self.partition, position)
        except KafkaException as err:  # not fetching yet: the next read tries again
            log.warning("warehouse_kafka_seek", source=self.name, error=str(err))
            return False
        self._buffered.clear()
        self._start = self._next = position
        return True

    def _restart_if_truncated(self, position: int) -> None:
        try:
            low, high = self._member.watermarks(self.partition)
        except KafkaException as err:
            log.warning("warehouse_kafka_watermarks", source=self.name, error=str(err))
            return
        self._high = high
        if high >= position:
            return
        log.warning(
            "warehouse_kafka_log_behind_position",
            source=self.name,
            position=position,
            low=low,
            high=high,
        )
        self._rewound_to = low
        self._seek(low)

    def committed(self, position: int) -> None:
        # Once a batch after a rewind is stored, the stored position is the one to follow again.
        self._rewound_to = None
        self._drop_through(position)
        if not self.revoked:
            self._member.commit(self.partition, position)

    def end(self) -> int | None:
        high = self._member.cached_high(self.partition)
        return high if high is not None else self._high


class KafkaGroupMember:
    """The loader's sources from a consumer group: `()` polls and lists the held partitions."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        positions: Positions,
        *,
        group: str = DEFAULT_GROUP,
        batch_records: int,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.topic = topic
        self._positions = positions
        self._limit = batch_records
        self._held: dict[int, KafkaPartition] = {}
        # The partitions held, replaced whole (other threads read it: tests, a status page).
        self.assigned: frozenset[int] = frozenset()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                **security.client_config(),
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
                "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
                "partition.assignment.strategy": ASSIGNMENT_STRATEGY,
                "fetch.max.bytes": MAX_FETCH_BYTES,
                "log_level": 3,
            }
        )
        self._consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )

    def __call__(self) -> list[Source]:
        offered = list(self._held.values())  # what arrives in this poll is offered next time
        for message in self._consumer.consume(self._limit, timeout=CONSUME_TIMEOUT):
            self._take(message)
        self._pause_full()
        return [p for p in offered if not p.revoked]

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("warehouse_kafka_read", topic=self.topic, error=str(error))
            return
        partition, offset, value = message.partition(), message.offset(), message.value()
        held = None if partition is None else self._held.get(partition)
        if held is not None and offset is not None and value is not None:
            held.take(offset, value)

    def _pause_full(self) -> None:
        # Every partition every poll: a pause can outlive a revocation in librdkafka, so a
        # record of which ones this member paused would drift from the consumer's own.
        full: list[TopicPartition] = []
        room: list[TopicPartition] = []
        for number, held in self._held.items():
            (full if held.full(self._limit) else room).append(TopicPartition(self.topic, number))
        if full:
            self._consumer.pause(full)
        if room:
            self._consumer.resume(room)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        start = []
        for where in partitions:
            name = source_name(self.topic, where.partition)
            try:
                position = self._positions(name)
            except Exception as err:  # the warehouse is away: the loader's read seeks later
                log.warning("warehouse_kafka_position_unread", source=name, error=str(err))
                position = 0
            held = KafkaPartition(self, where.partition, position)
            self._held[where.partition] = held
            start.append(TopicPartition(self.topic, where.partition, position))
        consumer.assign(start)
        self.assigned = frozenset(self._held)
        log.info("warehouse_kafka_assigned", partitions=[p.partition for p in start])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Called between batches: the buffered records are dropped, no position moves for them.
        for where in partitions:
            held = self._held.pop(where.partition, None)
            if held is not None:
                held.revoked = True
        self.assigned = frozenset(self._held)
        consumer.unassign()
        log.info("warehouse_kafka_revoked", partitions=[p.partition for p in partitions])

    def seek(self, partition: int, position: int) -> None:
        self._consumer.seek(TopicPartition(self.topic, partition, position))

    def watermarks(self, partition: int) -> tuple[int, int]:
        where = TopicPartition(self.topic, partition)
        low, high = self._consumer.get_watermark_offsets(where, timeout=WATERMARK_TIMEOUT)
        return int(low), int(high)

    def cached_high(self, partition: int) -> int | None:
        """The high watermark of the last fetch response (no request to the broker)."""
        where = TopicPartition(self.topic, partition)
        cached = self._consumer.get_watermark_offsets(where, cached=True)
        high = None if cached is None else int(cached[1])
        return high if high is not None and high >= 0 else None

    def commit(self, partition: int, position: int) -> None:
        """The group's offset, for lag tools: after the warehouse stored `position`."""
        where = TopicPartition(self.topic, partition, position)
        try:
            self._consumer.commit(offsets=[where], asynchronous=True)
        except KafkaException as err:  # a rebalance under way: the next batch commits again
            log.info("warehouse_kafka_commit", topic=self.topic, error=str(err))

    def close(self) -> None:
        self._consumer.close()
