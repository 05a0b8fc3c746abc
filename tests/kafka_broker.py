"""The session's Kafka-protocol broker for the tests (tansu, see simulators/stage/tansu.py).

The fixture `kafka_bootstrap` starts one broker for every test that only needs topics (each test
makes its own); a test that kills the broker starts its own `TansuBroker`.
"""

from collections.abc import Iterator

import pytest

from simulators.stage.tansu import TansuBroker

__all__ = ["TansuBroker", "kafka_bootstrap"]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a tansu broker shared by the session; each test uses topics of its own."""
    broker = TansuBroker(tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
