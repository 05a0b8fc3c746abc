"""The journal topic as the durability contract needs it, on real Apache Kafka: created with three
replicas and min.insync.replicas 2 where there are three brokers (acks=all then means two brokers
hold a record before a device is answered OK), and an existing topic with fewer replicas or a
lower min.insync.replicas refused at start rather than trusted. The client security settings map
to librdkafka's.
"""

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from ledger.errors import SinkError
from ledger.journal.kafka import (
    KafkaSecurity,
    KafkaSettings,
    TopicUnsafe,
    ensure_topic,
    producer_config,
)
from simulators.stage.kafka import KafkaCluster

TIMEOUT = 30.0


def _topic() -> str:
    return f"test.settings.{uuid.uuid4().hex[:10]}"


def _shape(bootstrap: str, topic: str) -> tuple[int, int]:
    """(fewest replicas of a partition, min.insync.replicas) of `topic`."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=TIMEOUT).topics[topic].partitions
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(TIMEOUT)
    fewest = min(len(p.replicas) for p in partitions.values())
    return fewest, int(configs["min.insync.replicas"].value)


def _create(bootstrap: str, topic: str, replication: int, min_insync: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(
        topic, num_partitions=2, replication_factor=replication,
        config={"min.insync.replicas": str(min_insync)},
    )  # fmt: skip
    admin.create_topics([new])[topic].result(TIMEOUT)


@pytest.mark.topology
def test_three_brokers_get_three_replicas_two_in_sync(kafka_cluster: KafkaCluster) -> None:
    topic = _topic()
    settings = KafkaSettings(kafka_cluster.bootstrap, topic=topic, partitions=3)
    assert ensure_topic(settings) is True
    assert _shape(kafka_cluster.bootstrap, topic) == (3, 2)
    assert ensure_topic(settings) is False  # as asked: accepted as it is


@pytest.mark.topology
@pytest.mark.parametrize(("replication", "min_insync", "refused"), [
    (1, 1, "has 1 replicas where 3 are asked"),
    (3, 1, "has min.insync.replicas 1 where 2 is asked"),
])  # fmt: skip
def test_an_existing_topic_with_less_is_refused(
    kafka_cluster: KafkaCluster, replication: int, min_insync: int, refused: str
) -> None:
    topic = _topic()
    _create(kafka_cluster.bootstrap, topic, replication, min_insync)
    with pytest.raises(TopicUnsafe, match=refused) as caught:
        ensure_topic(KafkaSettings(kafka_cluster.bootstrap, topic=topic))
    assert not caught.value.retriable
    assert "--kafka-replication-factor" in str(caught.value)


def test_one_broker_gets_one_replica(kafka_bootstrap: str) -> None:
    topic = _topic()
    assert ensure_topic(KafkaSettings(kafka_bootstrap, topic=topic, partitions=1)) is True
    assert _shape(kafka_bootstrap, topic) == (1, 1)


def test_more_replicas_than_brokers_is_not_created(kafka_bootstrap: str) -> None:
    settings = KafkaSettings(kafka_bootstrap, topic=_topic(), replication_factor=3)
    with pytest.raises(SinkError, match="needs 3 replicas but only 1 brokers answer"):
        ensure_topic(settings)


def test_security_settings_map_to_librdkafka() -> None:
    sasl = KafkaSecurity(
        protocol="SASL_SSL", ca_file="/etc/ofd/kafka-ca.pem", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="ofd-gateway", sasl_password="s3cret",
    )  # fmt: skip
    config = producer_config(KafkaSettings("b:9093", security=sasl))
    assert {k: config[k] for k in sasl.client_config()} == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": "/etc/ofd/kafka-ca.pem",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "ofd-gateway",
        "sasl.password": "s3cret",
    }
    assert config["acks"] == "all"  # security never loosens the durability settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"protocol": "TLS"}, "security protocol must be one of"),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, "needs a SASL mechanism"),
        ({"protocol": "SSL", "sasl_username": "x"}, "need a SASL_ protocol"),
        ({"protocol": "PLAINTEXT", "ca_file": "/ca.pem"}, "TLS files need SSL or SASL_SSL"),
        ({"protocol": "SSL", "cert_file": "/c.pem"}, "needs its key"),
    ],
)
def test_contradictory_security_is_refused(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KafkaSecurity(**kwargs)


@pytest.mark.topology
def test_ofd_serve_refuses_an_under_replicated_topic_in_one_line(
    kafka_cluster: KafkaCluster, database_url: str, tmp_path: Path
) -> None:
    topic = _topic()
    _create(kafka_cluster.bootstrap, topic, 1, 1)
    done = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "serve", "--data-dir", str(tmp_path / "data"),
         "--database-url", database_url, "--port", "0", "--control-port", "0",
         "--metrics-port", "0", "--grpc-port", "0",
         "--journal", "kafka", "--kafka-bootstrap", kafka_cluster.bootstrap,
         "--kafka-topic", topic],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert f"kafka topic {topic} has 1 replicas where 3 are asked" in errors[0]
    assert "Traceback" not in done.stderr


def test_an_unreadable_sasl_password_file_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "serve", "--data-dir", str(tmp_path / "data"),
         "--journal", "kafka", "--kafka-bootstrap", "127.0.0.1:1",
         "--kafka-security-protocol", "SASL_SSL", "--kafka-sasl-mechanism", "SCRAM-SHA-512",
         "--kafka-sasl-username", "ofd", "--kafka-sasl-password-file", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot read --kafka-sasl-password-file" in done.stderr
    assert "Traceback" not in done.stderr
