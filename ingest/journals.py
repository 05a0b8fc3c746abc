"""Which journal a gateway writes to: chosen once at start-up from its settings.

The local journal (segment files in the data directory) is the embedded default, so one command
runs everything on one machine; with Kafka settings the gateway journals to a Kafka topic
instead, as in production, and with the "spool" outage policy keeps a local spool for the times
the broker is down. All honour the same `Journal` contract: durable on return.
"""

import asyncio

import structlog

from ingest.settings import Settings
from ledger.errors import SinkError
from ledger.journal import Journal
from ledger.journal.kafka import KafkaJournal, TopicUnsafe, ensure_topic
from ledger.journal.local import LocalJournal
from ledger.journal.spool import SpoolingJournal

log = structlog.get_logger(__name__)


async def open_journal(settings: Settings) -> Journal:
    """The gateway's journal (on its event loop: the spool's replayer is a task). A Kafka topic
    that does not exist yet is created; a broker that cannot be asked is not fatal here (it
    may come up later: until then batches are answered 254 or spooled, as configured); a topic
    with fewer replicas than the settings ask is (TopicUnsafe)."""
    if settings.kafka is None:
        return LocalJournal(settings.journal_dir)
    try:
        if await asyncio.to_thread(ensure_topic, settings.kafka):
            log.info("kafka_topic_created", topic=settings.kafka.topic)
    except TopicUnsafe:
        raise  # an under-replicated topic would break the durability contract: refuse to start
    except SinkError as err:
        log.warning("kafka_topic_unchecked", topic=settings.kafka.topic, error=str(err))
    kafka = KafkaJournal(settings.kafka)
    if settings.kafka.on_outage == "spool":
        return SpoolingJournal(kafka, settings.spool_dir)
    return kafka
