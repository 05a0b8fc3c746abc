"""Which journal a gateway writes to: chosen once at start-up from its settings.

The local journal (segment files in the data directory) is the embedded default, so one command
runs everything on one machine; with Kafka settings the gateway journals to a Kafka topic
instead, as in production. Both honour the same `Journal` contract: durable on return.
"""

from ingest.settings import Settings
from ledger.journal import Journal, LocalJournal
from ledger.kafka_journal import KafkaJournal


def open_journal(settings: Settings) -> Journal:
    if settings.kafka is not None:
        return KafkaJournal(settings.kafka)
    return LocalJournal(settings.journal_dir)
