"""Which journal a gateway writes to: chosen once at start-up from its settings.

The local journal (segment files in the data directory) is the embedded default, so one command
runs everything on one machine; with Kafka settings the gateway journals to a Kafka topic
instead, as in production, and with the "spool" outage policy keeps a local spool for the times
the broker is down. All honour the same `Journal` contract: durable on return.
"""

from ingest.settings import Settings
from ledger.journal import Journal, LocalJournal
from ledger.kafka_journal import KafkaJournal
from ledger.spool_journal import SpoolingJournal


def open_journal(settings: Settings) -> Journal:
    """The gateway's journal (called on its event loop: the spool's replayer is a task)."""
    if settings.kafka is None:
        return LocalJournal(settings.journal_dir)
    kafka = KafkaJournal(settings.kafka)
    if settings.kafka.on_outage == "spool":
        return SpoolingJournal(kafka, settings.spool_dir)
    return kafka
