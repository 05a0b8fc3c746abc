"""The tests' Apache Kafka (KRaft, from Maven Central's jars; see simulators/stage/kafka.py).

- `kafka_bootstrap` (session): one node, for every test that only needs topics (each test makes
  its own);
- `kafka_cluster` (session, started only when a test asks for it): three nodes, a three-voter
  quorum, for topology tests; a test that kills nodes starts them again before it ends;
- `own_kafka` (per test): a node of the test's own, for tests that stop or kill the broker.

The first use fetches the jars with `mvn` (`make kafka-jars` does it ahead).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.stage.kafka import KafkaCluster

__all__ = ["KafkaCluster", "kafka_bootstrap", "kafka_cluster", "own_kafka"]

TOPOLOGY_NODES = 3


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a one-node Kafka shared by the session; each test uses topics of its own."""
    with KafkaCluster(tmp_path_factory.mktemp("kafka")) as cluster:
        yield cluster.bootstrap


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three Kafka nodes shared by the session's topology tests."""
    with KafkaCluster(tmp_path_factory.mktemp("kafka3"), TOPOLOGY_NODES) as cluster:
        yield cluster


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[KafkaCluster]:
    """A one-node Kafka for this test alone, stopped after it whatever happened."""
    with KafkaCluster(tmp_path / "own-kafka") as cluster:
        yield cluster
