"""The production topology on one machine, each piece on an address of its own so faults can cut
links: three Apache Kafka brokers, a PostgreSQL primary with a synchronous streaming replica,
gateways (each in a network namespace) behind HAProxy with PROXY protocol, a warehouse loader,
Mosquitto. `make cluster` runs it (simulators/stage/cluster.py); the topology fault test
(tests/test_topology.py) breaks it.

Addresses (10.<octet>.0.0/24 on a bridge of the harness's own): .1 PostgreSQL (primary and
replica, two ports) and Mosquitto, .2 the Kafka brokers (three ports), .101... the gateways. The
balancer and the loader run on the host and reach everything over the bridge; devices reach the
balancer on loopback.
"""

import dataclasses
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from confluent_kafka.admin import AdminClient, NewTopic

from simulators.stage.haproxy import Backend, Haproxy
from simulators.stage.kafka import KafkaCluster
from simulators.stage.mosquitto import MosquittoBroker
from simulators.stage.network import TestNetwork
from simulators.stage.ports import HOST, free_ports
from simulators.stage.postgres import PostgresServer
from simulators.stage.processes import ServerProcess, spawn, stop, wait_ready

TOPIC_TIMEOUT = 30.0
GATEWAY_PORT = 7777  # each gateway has an address of its own: the same ports everywhere
CONTROL_PORT = 7778
METRICS_PORT = 7779
BALANCER_PORTS = range(17777, 17877)


@dataclass(frozen=True, slots=True)
class TopologySettings:
    gateways: int = 2
    brokers: int = 3
    partitions: int = 6
    replication: int = 3
    min_insync: int = 2
    topic: str = "ofd.journal"
    tag: str = "tp"  # names of the bridge and namespaces
    octet: int = 77  # the subnet 10.octet.0.0/24
    # The gateways' commit timeout: a device waits at most this long for a 254 in an outage.
    kafka_delivery_timeout: float = 10.0


@dataclass
class Gateway:
    name: str
    namespace: str
    address: str
    process: ServerProcess | None = None

    @property
    def control(self) -> str:
        return f"{self.address}:{CONTROL_PORT}"


class Topology:
    """Started by `start()`, stopped by `stop()` (or as a context manager); each piece can be
    killed, restarted or cut off by the fault tests."""

    def __init__(self, work_dir: Path, settings: TopologySettings = TopologySettings()) -> None:
        self.work_dir = work_dir
        self.settings = settings
        self.net = TestNetwork(settings.tag, settings.octet)
        self.secret_file = work_dir / "secret.hex"
        self.kafka: KafkaCluster | None = None
        self.primary: PostgresServer | None = None
        self.replica: PostgresServer | None = None
        self.mqtt: MosquittoBroker | None = None
        self.gateways: list[Gateway] = []
        self.balancer: Haproxy | None = None
        self.loader: ServerProcess | None = None
        self.db_address = ""
        self.kafka_address = ""

    # --- addresses ---

    @property
    def database_url(self) -> str:
        assert self.primary is not None
        assert self.replica is not None
        hosts = ",".join(f"{s.host}:{s.port}" for s in (self.primary, self.replica))
        return f"postgresql://postgres@{hosts}/ofd?target_session_attrs=read-write"

    @property
    def bootstrap(self) -> str:
        assert self.kafka is not None
        return self.kafka.bootstrap

    @property
    def device_endpoint(self) -> tuple[str, int]:
        assert self.balancer is not None
        return self.balancer.address, self.balancer.port

    # --- lifecycle ---

    def start(self) -> Self:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.secret_file.write_text(secrets.token_hex(32) + "\n")
        self.secret_file.chmod(0o600)
        self.net.up()
        self.db_address = self.net.host_address()
        self.kafka_address = self.net.host_address()
        self.kafka = KafkaCluster(
            self.work_dir / "kafka", self.settings.brokers, host=self.kafka_address
        )
        self._create_topic()
        self.primary = PostgresServer.create(
            fast=False, settings=("synchronous_standby_names=*",), host=self.db_address
        )
        self.replica = PostgresServer.replica_of(self.primary)
        self._create_database()
        self.mqtt = MosquittoBroker.start(self.db_address)
        for index in range(1, self.settings.gateways + 1):
            namespace, address = self.net.guest(f"gw{index}")
            gateway = Gateway(f"gw{index}", namespace, address)
            self.gateways.append(gateway)
            self.start_gateway(gateway)
        port = next(free_ports(BALANCER_PORTS))
        self.balancer = Haproxy.start(
            self.work_dir,
            (HOST, port),
            [Backend(g.name, g.address, GATEWAY_PORT, METRICS_PORT) for g in self.gateways],
        )
        self.loader = self._start_loader()
        return self

    def _create_topic(self) -> None:
        """The journal topic as production has it: replicated, min.insync.replicas enforced."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        topic = NewTopic(
            self.settings.topic,
            num_partitions=self.settings.partitions,
            replication_factor=self.settings.replication,
            config={"min.insync.replicas": str(self.settings.min_insync)},
        )
        for future in admin.create_topics([topic], request_timeout=TOPIC_TIMEOUT).values():
            future.result(TOPIC_TIMEOUT)

    def _create_database(self) -> None:
        import asyncio  # noqa: PLC0415  # one statement at start: no loop of our own otherwise

        import asyncpg  # noqa: PLC0415

        async def create() -> None:
            assert self.primary is not None
            conn = await asyncpg.connect(f"{self.primary.url}/postgres")
            try:
                await conn.execute("CREATE DATABASE ofd")
            finally:
                await conn.close()

        asyncio.run(create())

    def start_gateway(self, gateway: Gateway) -> None:
        """`ofd serve` inside the gateway's namespace, one of several: the shared secret from
        its file, PROXY protocol from the balancer, the replicated topic."""
        data_dir = self.work_dir / gateway.name
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            *self.net.exec_prefix(gateway.namespace),
            sys.executable, "-m", "ingest.cli", "serve",
            "--data-dir", str(data_dir),
            "--gateway-id", gateway.name,
            "--secret-file", str(self.secret_file),
            "--host", gateway.address, "--port", str(GATEWAY_PORT),
            "--control-host", gateway.address, "--control-port", str(CONTROL_PORT),
            "--metrics-host", gateway.address, "--metrics-port", str(METRICS_PORT),
            "--grpc-port", "0",
            "--proxy-protocol",
            "--database-url", self.database_url,
            "--mqtt-url", self.mqtt.url if self.mqtt else "",
            "--journal", "kafka",
            "--kafka-bootstrap", self.bootstrap,
            "--kafka-topic", self.settings.topic,
            "--kafka-partitions", str(self.settings.partitions),
        ]  # fmt: skip
        gateway.process = spawn(gateway.name, argv, data_dir / "gateway.log")
        wait_ready(gateway.process)

    def _start_loader(self) -> ServerProcess:
        data_dir = self.work_dir / "loader"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "ingest.cli", "load",
            "--data-dir", str(data_dir),
            "--kafka-bootstrap", self.bootstrap,
            "--kafka-topic", self.settings.topic,
            "--kafka-group", "ofd-warehouse",
            "--port", "0", "--metrics-port", "0",
        ]  # fmt: skip
        return spawn("loader", argv, data_dir / "loader.log")

    def kill_gateway(self, gateway: Gateway) -> None:
        if gateway.process is not None:
            gateway.process.proc.kill()
            gateway.process.proc.wait(10)
            gateway.process = None

    def cut_from_kafka(self, gateway: Gateway) -> None:
        self.net.cut(gateway.namespace, [self.kafka_address])

    def heal_kafka(self, gateway: Gateway) -> None:
        self.net.heal(gateway.namespace, [self.kafka_address])

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
        for gateway in self.gateways:
            if gateway.process is not None:
                stop(gateway.process)
                gateway.process = None
        if self.loader is not None:
            stop(self.loader)
        if self.mqtt is not None:
            self.mqtt.remove()
        for server in (self.replica, self.primary):
            if server is not None:
                server.remove()
        if self.kafka is not None:
            self.kafka.stop()
        self.net.down()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def describe(topology: Topology) -> dict[str, object]:
    """Where everything is, for a person (make cluster) or a script."""
    return {
        "devices": "{}:{}".format(*topology.device_endpoint),
        "gateways": [
            {
                "name": g.name,
                "address": g.address,
                "control": g.control,
                "metrics": f"{g.address}:{METRICS_PORT}",
                "operator_key_file": str(topology.work_dir / g.name / "operator.key"),
            }
            for g in topology.gateways
        ],
        "kafka": topology.bootstrap,
        "topic": dataclasses.asdict(topology.settings)["topic"],
        "database_url": topology.database_url,
        "mqtt": topology.mqtt.url if topology.mqtt else "",
    }
