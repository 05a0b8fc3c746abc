"""The forwarder's and the application worker's metrics, on the forwarder's own /metrics port.

The deadline as a number: `ofd_kgd_oldest_unforwarded_seconds{source}` (per journal source: a
Kafka partition, a gateway's local journal) and `ofd_kgd_lag_seconds` (all sources) are the age
of the oldest document the KGD has not acknowledged, 0 when caught up, computed at scrape time
so they keep growing while the KGD is down; `ofd_kgd_deadline_seconds` is the setting the alert
compares them with (deploy/prometheus/alerts.yml, OfdKgdDeadlineMissed).
"""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ledger.kgd.applications import ApplicationWorker
from ledger.kgd.forwarder import Forwarder

DELAY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 14400)


class ForwarderMetrics(Collector):
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.delay = Histogram(
            "ofd_kgd_delivery_seconds",
            "From the gateway receiving a document to the KGD acknowledging it",
            buckets=DELAY_BUCKETS,
            registry=self.registry,
        )
        self._forwarder: Forwarder | None = None
        self._worker: ApplicationWorker | None = None
        self.registry.register(self)

    def watch(self, forwarder: Forwarder | None, worker: ApplicationWorker | None) -> None:
        self._forwarder, self._worker = forwarder, worker

    def start_http(self, host: str, port: int) -> int:
        server, _ = start_http_server(port, host, registry=self.registry)
        return int(server.server_port)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        forwarder = self._forwarder
        if forwarder is not None:
            yield from _forwarder_families(forwarder)
        worker = self._worker
        if worker is not None:
            stats = worker.stats
            applications = CounterMetricFamily(
                "ofd_kgd_applications",
                "Applications to the KGD: submitted, and decisions carried out",
                labels=["event"],
            )
            for event, value in (
                ("submitted", stats.submitted),
                ("accepted", stats.accepted),
                ("refused", stats.refused),
                ("failed", stats.failures),
            ):
                applications.add_metric([event], value)
            yield applications


def _forwarder_families(forwarder: Forwarder) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    states = list(forwarder.states.values())
    oldest = GaugeMetricFamily(
        "ofd_kgd_oldest_unforwarded_seconds",
        "Age of the oldest document of a journal source the KGD has not acknowledged",
        labels=["source"],
    )
    backlog = GaugeMetricFamily(
        "ofd_kgd_backlog",
        "Journal past the forwarder's position, in records (Kafka) or bytes (local journal)",
        labels=["source", "unit"],
    )
    for state in states:
        oldest.add_metric([state.name], forwarder.oldest_age(state.name))
        backlog.add_metric([state.name, state.unit], state.backlog)
    yield oldest
    yield backlog
    yield GaugeMetricFamily(
        "ofd_kgd_lag_seconds",
        "Age of the oldest document the KGD has not acknowledged, over every source",
        value=forwarder.oldest_age(),
    )
    yield GaugeMetricFamily(
        "ofd_kgd_deadline_seconds",
        "The forwarding deadline (a setting): the lag alert fires past it",
        value=forwarder.settings.deadline,
    )
    stats = forwarder.stats
    documents = CounterMetricFamily(
        "ofd_kgd_documents",
        "Documents the KGD acknowledged: accepted now, or duplicate (it held them already)",
        labels=["ack"],
    )
    documents.add_metric(["accepted"], stats.forwarded)
    documents.add_metric(["duplicate"], stats.duplicates)
    yield documents
    failures = CounterMetricFamily(
        "ofd_kgd_batch_failures",
        "Batches not acknowledged: KGD unavailable (down, slow, 5xx) or refusing them (4xx)",
        labels=["kind"],
    )
    for kind, value in stats.failures.items():
        failures.add_metric([kind], value)
    yield failures
