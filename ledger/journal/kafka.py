"""The Kafka journal: the production implementation of the `Journal` interface.

`append` returns only after the broker acknowledged every record of the batch with acks=all
(DESIGN.md, durability contract item 1); the group committer calls it inside the PostgreSQL
transaction, so a failure here rolls the device's state back and the device is answered 254.

How it talks to Kafka, and why:
- confluent-kafka (librdkafka) with an idempotent producer: it did idempotence at several times
  aiokafka's throughput when the choice was made (aiokafka's idempotent producer failed against
  the broker the tests ran then), and this configuration is the one the tests run against Apache
  Kafka (tests/kafka_broker.py; three replicas in tests/test_kafka_topology.py).
- Records are keyed by device id as 4 big-endian bytes (the u32 system id; KEY_BYTES), and
  partitioned with murmur2 like the Java clients, so one device's documents stay in order in one
  partition whichever language's client produced them.
- Delivery reports are served by one background thread per producer that polls librdkafka; each
  report of a batch is counted there and the batch's asyncio future is settled on the event loop
  through `call_soon_threadsafe`, so waiting for the broker never blocks the loop.
- A record of a batch that failed or timed out may still reach the topic later. That is allowed:
  it carries the identity its resend will carry, and the duplicates collapse downstream
  (DESIGN.md items 2 and 6).
- After a fatal producer error (for instance a broker that no longer knows our producer id) or
  a delivery timeout, the producer is replaced by a new one before the next batch: an idempotent
  producer whose sequence state the broker rejects cannot produce again.
"""

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from ledger.errors import SinkError
from ledger.journal import MAX_RECORD_BYTES, JournalEntry, check_record_size

log = structlog.get_logger(__name__)

DEFAULT_TOPIC = "ofd.documents.v1"
DEFAULT_CLIENT_ID = "ofd-gateway"
# A device gives up after 5 s; the state write before the append is normally milliseconds.
DEFAULT_DELIVERY_TIMEOUT = 3.0
# Chosen on tansu (712-byte records, two workers appending batches of 1024: lz4 about 330k
# records/s, zstd 310k, none 180k). Against Apache Kafka 4.1.1 on the same two shared, busy cores
# the three were within run-to-run noise (lz4 57k-109k, zstd 81k-96k, none 124k-133k; a
# single-record append 0.3-0.5 ms each): a broker on the same cores decompresses each batch to
# validate it. lz4 stays for what it saves on disk and on the wire with three replicas;
# re-measure on an idle machine before changing it.
DEFAULT_COMPRESSION = "lz4"
COMPRESSIONS = frozenset({"none", "gzip", "snappy", "lz4", "zstd"})
# What a broker outage does: "reject" answers 254 (the device keeps the document and resends);
# "spool" keeps it in a local spool and replays it in order later (ledger/journal/spool.py).
OUTAGE_POLICIES = ("reject", "spool")
# A topic the gateway creates at start (an existing one is left as it is): partitions bound how
# many loaders share the work, and a device's documents stay in one partition whatever the count.
DEFAULT_PARTITIONS = 12
MAX_PARTITIONS = 10_000
KEY_BYTES = 4  # the device id, a u32, big-endian
# We produce whole group-commit batches at once, so waiting for more records only adds latency:
# measured, a one-record append takes 0.15 ms with linger 0 and 1.5-1.9 ms with linger 1, while
# batches of 1024 go as fast either way (librdkafka batches what queues behind a request).
LINGER_MS = 0
# Bounds librdkafka's local queue: far above two group-commit batches of 1024 records in flight.
MAX_QUEUED_MESSAGES = 100_000
# A produce request may carry one record of MAX_RECORD_BYTES plus protocol overhead.
MAX_REQUEST_BYTES = MAX_RECORD_BYTES + 64 * 1024
# How long one poll of the delivery thread waits for an event; bounds how fast it stops.
POLL_INTERVAL = 0.1
# Creating a topic and reading metadata are start-up calls; they get this long.
ADMIN_TIMEOUT = 10.0
# A retired producer gets this long to hand back its purged records before it is destroyed.
RETIRE_TIMEOUT = 5.0


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# Replicas a topic gets when the settings leave it to the cluster: three where there are three
# brokers or more (a broker may die without losing an acknowledged record), else every broker.
AUTOMATIC_REPLICATION = 3


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How every Kafka client of ours (the gateways' producers, the loaders' and the KGD
    forwarder's consumers, the topic check) authenticates and encrypts. The SASL password is
    read from a file at start, never taken from a flag or an environment variable."""

    protocol: str = "PLAINTEXT"
    ca_file: str | None = None  # PEM: the CA that signed the brokers' certificates
    cert_file: str | None = None  # PEM: this client's certificate (mutual TLS)
    key_file: str | None = None  # PEM: its private key
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"kafka security protocol must be one of {SECURITY_PROTOCOLS}")
        sasl = self.protocol.startswith("SASL_")
        if sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError(
                f"kafka {self.protocol} needs a SASL mechanism, a username and a password file"
            )
        if self.sasl_mechanism is not None and self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"kafka SASL mechanism must be one of {SASL_MECHANISMS}")
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError(f"kafka SASL settings need a SASL_ protocol, not {self.protocol}")
        if not self.protocol.endswith("SSL") and (self.ca_file or self.cert_file or self.key_file):
            raise ValueError(f"kafka TLS files need SSL or SASL_SSL, not {self.protocol}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a kafka client certificate needs its key, and a key its certificate")

    def client_config(self) -> dict[str, str]:
        """librdkafka's settings for this security (empty for plaintext)."""
        config = {"security.protocol": self.protocol}
        optional = {
            "ssl.ca.location": self.ca_file,
            "ssl.certificate.location": self.cert_file,
            "ssl.key.location": self.key_file,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
        }
        config.update({name: value for name, value in optional.items() if value})
        return config


PLAINTEXT = KafkaSecurity()


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: str  # host:port[,host:port...]
    topic: str = DEFAULT_TOPIC
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT  # seconds until a batch counts as failed
    compression: str = DEFAULT_COMPRESSION
    client_id: str = DEFAULT_CLIENT_ID
    on_outage: str = "reject"
    partitions: int = DEFAULT_PARTITIONS
    # None: AUTOMATIC_REPLICATION, or every broker where there are fewer. The start-up check
    # refuses a topic with fewer replicas than this, or a lower min.insync.replicas.
    replication_factor: int | None = None
    # None: one less than the replication factor, at least 1 (2 of 3: acks=all then means the
    # record is on two brokers before a device is answered OK).
    min_insync_replicas: int | None = None
    security: KafkaSecurity = PLAINTEXT

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ValueError("kafka bootstrap servers must not be empty")
        if not self.topic.strip():
            raise ValueError("kafka topic must not be empty")
        if not self.delivery_timeout > 0:
            raise ValueError("kafka delivery timeout must be positive")
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ValueError(f"kafka partitions must be 1..{MAX_PARTITIONS}")
        if self.replication_factor is not None and self.replication_factor < 1:
            raise ValueError("kafka replication factor must be at least 1")
        if self.min_insync_replicas is not None and not (
            1 <= self.min_insync_replicas <= (self.replication_factor or self.min_insync_replicas)
        ):
            raise ValueError("kafka min.insync.replicas must be 1..the replication factor")
        if self.on_outage not in OUTAGE_POLICIES:
            raise ValueError(f"kafka outage policy must be one of {', '.join(OUTAGE_POLICIES)}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(
                f"kafka compression {self.compression!r} is not one of {sorted(COMPRESSIONS)}"
            )


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    """The producer configuration: the same in production and in the tests."""
    timeout_ms = max(int(settings.delivery_timeout * 1000), 1)
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        **settings.security.client_config(),
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": settings.compression,
        "linger.ms": LINGER_MS,
        # librdkafka gives up on a record at the same moment the batch's waiter does.
        "message.timeout.ms": timeout_ms,
        "request.timeout.ms": timeout_ms,
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": MAX_QUEUED_MESSAGES,
        "message.max.bytes": MAX_REQUEST_BYTES,
        "logger": _ClientLog(),
    }


def encode_key(device_id: int) -> bytes:
    """The record key: the device id as 4 big-endian bytes."""
    return device_id.to_bytes(KEY_BYTES, "big")


def decode_key(key: bytes) -> int:
    return int.from_bytes(key, "big")


class _ClientLog:
    """Hands librdkafka's log lines (served by the poll thread) to structlog."""

    def log(self, level: int, fmt: str, *args: object) -> None:
        log.log(level, "kafka_client", detail=fmt % args)


class _Delivery:
    """The delivery reports of one batch: counted on a poll thread, settled on the event loop.

    The future's result is the first error, or None once every record was acknowledged. It
    carries errors as results rather than exceptions: a waiter that timed out never reads it.
    """

    __slots__ = ("_future", "_loop", "_remaining", "_settled")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self._loop = loop
        self._future: asyncio.Future[KafkaError | None] = loop.create_future()
        self._remaining = count
        self._settled = False

    @property
    def future(self) -> "asyncio.Future[KafkaError | None]":
        return self._future

    def report(self, error: KafkaError | None, _message: Message) -> None:
        # Runs on the poll thread of one producer (never two at once); must never raise, or
        # librdkafka's poll would raise it on that thread.
        if self._settled:
            return
        if error is None:
            self._remaining -= 1
            if self._remaining > 0:
                return
        self._settled = True
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._settle, error)

    def _settle(self, error: KafkaError | None) -> None:
        if not self._future.done():
            self._future.set_result(error)


class _PolledProducer:
    """A librdkafka producer and the thread that serves its callbacks."""

    def __init__(self, config: dict[str, Any], name: str) -> None:
        self.failed: KafkaError | None = None  # set on a fatal error: this producer is done
        self.producer = Producer({**config, "error_cb": self._on_error})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=name, daemon=True)
        self._thread.start()

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.failed = error
            log.error("kafka_producer_fatal", error=str(error))
        # Other errors (a broker unreachable for a while) are transient: librdkafka retries,
        # and the batches waiting on it fail by their delivery timeout.

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.producer.poll(POLL_INTERVAL)
            except Exception:  # a callback's bug must not stop every later delivery report
                log.exception("kafka_poll_failed")

    def _stop_polling(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def close(self, timeout: float) -> int:
        """Blocking: delivers what is queued (bounded), then destroys. Returns records left."""
        self._stop_polling()
        left = self.producer.flush(timeout)
        if left:
            self.producer.purge()
            self.producer.poll(0)  # their waiters are told, not left to time out
        self.producer.close()
        return left

    def abandon(self) -> None:
        """Blocking: drops everything queued or in flight, then destroys."""
        self._stop_polling()
        self.producer.purge(in_queue=True, in_flight=True, blocking=False)
        self.producer.flush(RETIRE_TIMEOUT)  # serves the purge reports
        self.producer.close()


class KafkaJournal:
    """The journal on a Kafka topic; one per gateway process, shared by its commit workers."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._config = producer_config(settings)
        self._current: _PolledProducer | None = None
        self._retiring: list[threading.Thread] = []
        self._generation = 0
        self._closed = False

    def _producer(self) -> _PolledProducer:
        current = self._current
        if current is not None and current.failed is not None:
            self._retire(current, f"fatal error: {current.failed}")
            current = None
        if current is None:
            self._generation += 1
            current = _PolledProducer(
                self._config, f"kafka-poll-{self._settings.client_id}-{self._generation}"
            )
            self._current = current
        return current

    def _retire(self, polled: _PolledProducer, reason: str) -> None:
        """Stops using `polled`; the next batch gets a new producer."""
        if self._current is not polled:
            return  # another batch retired it already
        self._current = None
        log.warning("kafka_producer_replaced", reason=reason, topic=self._settings.topic)
        # Destroying a producer waits on its broker threads: never on the event loop.
        thread = threading.Thread(target=polled.abandon, name="kafka-retire", daemon=True)
        thread.start()
        self._retiring = [t for t in self._retiring if t.is_alive()] + [thread]

    async def append(self, entries: Sequence[JournalEntry]) -> None:
        """Produces the batch and waits until the broker acknowledged all of it (acks=all)."""
        if self._closed:
            raise SinkError("kafka journal is closed", retriable=False)
        if not entries:
            return
        keys = _checked_keys(entries)  # refusals happen here, before any record is produced
        polled = self._producer()
        delivery = _Delivery(asyncio.get_running_loop(), len(entries))
        topic = self._settings.topic
        try:
            for entry, key in zip(entries, keys, strict=True):
                polled.producer.produce(topic, entry.payload, key, on_delivery=delivery.report)
        except BufferError as err:
            raise SinkError("kafka producer queue is full", retriable=True) from err
        except KafkaException as err:
            error = err.args[0] if err.args and isinstance(err.args[0], KafkaError) else None
            if error is not None and error.fatal():
                self._retire(polled, f"fatal error: {error}")
            raise SinkError(f"kafka produce failed: {err}", retriable=True) from err
        timeout = self._settings.delivery_timeout
        try:
            async with asyncio.timeout(timeout):
                error = await delivery.future
        except TimeoutError as err:
            self._retire(polled, f"no acknowledgement within {timeout} s")
            raise SinkError(
                f"kafka: {topic} did not acknowledge within {timeout} s", retriable=True
            ) from err
        if error is not None:
            if error.fatal() or error.code() == KafkaError._MSG_TIMED_OUT:
                self._retire(polled, str(error))
            raise SinkError(f"kafka delivery to {topic} failed: {error}", retriable=True) from (
                KafkaException(error)
            )

    async def close(self) -> None:
        """Delivers what is still queued (bounded by the delivery timeout) and stops."""
        self._closed = True
        current, self._current = self._current, None
        if current is not None:
            left = await asyncio.to_thread(current.close, self._settings.delivery_timeout)
            if left:
                log.warning("kafka_journal_closed_undelivered", records=left)
        for thread in self._retiring:
            await asyncio.to_thread(thread.join, RETIRE_TIMEOUT)
        self._retiring = []


def _checked_keys(entries: Sequence[JournalEntry]) -> list[bytes]:
    keys: list[bytes] = []
    for entry in entries:
        check_record_size(entry)
        try:
            keys.append(encode_key(entry.key))
        except OverflowError as err:
            raise SinkError(f"journal key {entry.key} is not a u32", retriable=False) from err
    return keys


class TopicUnsafe(SinkError):
    """The journal topic exists with fewer replicas, or a lower min.insync.replicas, than the
    settings ask: acks=all would then not mean what the durability contract needs."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False)


def admin_config(settings: KafkaSettings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        **settings.security.client_config(),
        "logger": _ClientLog(),  # librdkafka's own lines as our JSON logs, not raw stderr
    }


def ensure_topic(settings: KafkaSettings, partitions: int | None = None) -> bool:
    """Blocking: creates the topic (`partitions`, else the settings') unless it exists, with the
    replication and min.insync.replicas the settings ask for (else as many replicas as the
    cluster gives, up to three, and one less in sync); an existing topic with less is refused
    (TopicUnsafe). Returns whether it was created.

    Production topics are provisioned with the cluster (deploy/); this serves tests, the
    embedded demo and first start-up. The topic admits records of MAX_RECORD_BYTES.
    """
    admin = AdminClient(admin_config(settings))
    try:
        brokers = len(admin.list_topics(timeout=ADMIN_TIMEOUT).brokers)
    except KafkaException as err:
        raise SinkError(
            f"cannot reach kafka to check topic {settings.topic}: {err}", retriable=True
        ) from err
    replication = settings.replication_factor or min(AUTOMATIC_REPLICATION, brokers)
    min_insync = settings.min_insync_replicas or max(1, replication - 1)
    if replication > brokers:
        raise SinkError(
            f"kafka topic {settings.topic} needs {replication} replicas but only {brokers}"
            " brokers answer",
            retriable=True,
        )
    topic = NewTopic(
        settings.topic,
        num_partitions=partitions or settings.partitions,
        replication_factor=replication,
        config={
            "max.message.bytes": str(MAX_REQUEST_BYTES),
            "min.insync.replicas": str(min_insync),
        },
    )
    futures = admin.create_topics(
        [topic], operation_timeout=ADMIN_TIMEOUT, request_timeout=ADMIN_TIMEOUT
    )
    try:
        futures[settings.topic].result(ADMIN_TIMEOUT)
    except TimeoutError as err:
        raise SinkError(
            f"cannot create kafka topic {settings.topic}: no answer within {ADMIN_TIMEOUT} s",
            retriable=True,
        ) from err
    except KafkaException as err:
        error = err.args[0] if err.args else None
        if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            _check_existing(admin, settings.topic, replication, min_insync)
            return False
        raise SinkError(
            f"cannot create kafka topic {settings.topic}: {err}", retriable=True
        ) from err
    return True


def _check_existing(admin: AdminClient, topic: str, replication: int, min_insync: int) -> None:
    """Refuses a topic that holds fewer replicas or a lower min.insync.replicas than asked."""
    try:
        described = admin.list_topics(topic, timeout=ADMIN_TIMEOUT).topics[topic]
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        configs = admin.describe_configs([resource])[resource].result(ADMIN_TIMEOUT)
    except (KafkaException, TimeoutError, KeyError) as err:
        raise SinkError(f"cannot check kafka topic {topic}: {err}", retriable=True) from err
    fewest = min((len(p.replicas) for p in described.partitions.values()), default=0)
    in_sync = int(configs["min.insync.replicas"].value)
    fix = (
        "raise it (kafka-reassign-partitions / kafka-configs --alter) or start with"
        " --kafka-replication-factor / --kafka-min-insync-replicas that match it"
    )
    if fewest < replication:
        raise TopicUnsafe(
            f"kafka topic {topic} has {fewest} replicas where {replication} are asked: {fix}"
        )
    if in_sync < min_insync:
        raise TopicUnsafe(
            f"kafka topic {topic} has min.insync.replicas {in_sync} where {min_insync} is asked:"
            f" {fix}"
        )
