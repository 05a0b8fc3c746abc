"""Apache Kafka on this machine: KRaft nodes run from the org.apache.kafka jars on Maven Central.

The tests, the benchmarks and anyone trying the Kafka journal by hand start real Kafka through
this module. Nothing is installed system-wide: `fetch_jars` asks Maven (`mvn`, Maven Central) for
`org.apache.kafka:kafka_2.13` and its runtime dependencies once, into a cache shared by every
checkout (`~/.cache/ofd-gateway/kafka/<version>/libs`; `OFD_KAFKA_HOME` replaces
`~/.cache/ofd-gateway/kafka`). Two processes fetching at once take turns on a lock file, and the
jars appear by an atomic rename, so nobody starts a JVM on half a download.

`KafkaCluster` runs N nodes in KRaft combined mode (each one broker and controller; N voters, so
three nodes keep a quorum with one down), each a `java ... kafka.Kafka server.properties` child
process with a small heap and the serial collector (two cores are shared with the tests), its
output in `<work dir>/node-<id>/server.log`. Storage is formatted with Kafka's StorageTool and
lives in the work directory, so a node stopped or killed and started again keeps its log, as a
real broker does. Ports are scanned below the ephemeral range (32768-60999), a range apart from
the other services' (simulators/stage/ports.py), and each node takes two: its client listener and
its controller listener.

No JVM outlives its starter: `stop()` (and the context manager, and an atexit hook for a
cluster somebody forgot) SIGTERMs every node and SIGKILLs what has not exited after a grace
period; and every JVM is started with PR_SET_PDEATHSIG, so a starter killed outright (SIGKILL,
where no Python code runs) takes its nodes with it. The death signal follows the thread that
forked, not the process, so all forks happen on one long-lived thread; that thread ends at
interpreter exit before atexit hooks run, so a forgotten cluster's nodes are in fact SIGKILLed
then (their storage is scratch).
"""

import argparse
import atexit
import base64
import concurrent.futures
import contextlib
import ctypes
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from simulators.stage.ports import HOST, port_is_free
from simulators.stage.processes import end_process, log_tail

# 4.x brokers need Java 17, which the machines have. LOG4J_VERSION is the log4j-core that this
# Kafka depends on: its SLF4J binding is added so that the broker's log reaches server.log.
KAFKA_VERSION = "4.1.1"
KAFKA_ARTIFACT = "org.apache.kafka:kafka_2.13"
LOG4J_VERSION = "2.24.3"
HOME_ENV = "OFD_KAFKA_HOME"
DEFAULT_HOME = Path("~/.cache/ofd-gateway/kafka")

# Tests scan 29100-29499, benchmarks 29500-29599 (PostgreSQL scans from 15432, Mosquitto from
# 11883), so a test session and a benchmark can run at once.
TEST_PORTS = range(29100, 29500)
BENCH_PORTS = range(29500, 29600)

HEAP = "512m"
JVM_OPTIONS = (
    "-Xms64m",
    "-XX:+UseSerialGC",  # one GC thread: two cores are shared with the tests
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dlog4j2.shutdownHookEnabled=false",  # Kafka's own hook logs the shutdown
)
# Small pools: a test broker serves a few clients.
BROKER_SETTINGS = {
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
    "log.cleaner.threads": "1",
    "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),  # 128 MiB of heap by default
    # A killed node's session must expire before the controller fences it (and moves its
    # partitions' leadership) and before its restart may register again: 9 s by default.
    "broker.session.timeout.ms": "4000",
    "broker.heartbeat.interval.ms": "500",
    # A group's first member is assigned at once instead of after 3 s.
    "group.initial.rebalance.delay.ms": "0",
    "offsets.topic.num.partitions": "8",  # 50 by default: slow to create on a first group join
    # Topics are made on purpose (ensure_topic), as in production: a typo fails, it does not
    # create a topic.
    "auto.create.topics.enable": "false",
}
FORMAT_TIMEOUT = 60.0
READY_TIMEOUT = 60.0  # measured: 2-3 s for one node, more for three on two busy cores
READY_PROBE_TIMEOUT = 1.0
STOP_TIMEOUT = 15.0  # a clean shutdown takes about a second; then SIGKILL
START_ATTEMPTS = 3  # a port found free may be taken before the JVM binds it: new ports
FETCH_TIMEOUT = 600.0
PR_SET_PDEATHSIG = 1

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
"""

_POM = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.ofd-gateway</groupId>
  <artifactId>kafka-server-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>{group}</groupId>
      <artifactId>{artifact}</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


class KafkaStartError(RuntimeError):
    """Kafka could not be fetched or did not start; the message says where to look."""


# --- the jars ---


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    root = os.environ.get(HOME_ENV) or str(DEFAULT_HOME)
    return Path(root).expanduser() / version


def fetch_jars(version: str = KAFKA_VERSION) -> Path:
    """Blocking: the directory of the server's jars, fetched from Maven Central the first time.

    Safe when several processes call it at once: one fetches under the lock, the others wait
    for it and then find the finished directory.
    """
    home = kafka_home(version)
    libs = home / "libs"
    if libs.is_dir():
        return libs
    home.parent.mkdir(parents=True, exist_ok=True)
    with (home.parent / f".{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if libs.is_dir():  # fetched by whoever held the lock before us
            return libs
        _download(version, home)
    return libs


def _download(version: str, home: Path) -> None:
    """Fetches into a staging directory beside `home`, then renames it into place."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaStartError("Kafka's jars come from Maven Central: install Maven (`mvn`)")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=home.parent))
    try:
        _copy_dependencies(mvn, version, staging)
        (staging / "log4j2.properties").write_text(_LOG4J2)
        staging.chmod(0o755)  # mkdtemp's 0700 would keep the cache from other users
        if home.exists():  # a directory left without libs/ by an older layout or by hand
            shutil.rmtree(home)
        staging.rename(home)  # atomic: others see no directory or a whole one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _copy_dependencies(mvn: str, version: str, staging: Path) -> None:
    group, artifact = KAFKA_ARTIFACT.split(":")
    pom = staging / "pom.xml"
    pom.write_text(
        _POM.format(group=group, artifact=artifact, version=version, log4j=LOG4J_VERSION)
    )
    fetched = subprocess.run(
        [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={staging / 'libs'}"],
        capture_output=True, text=True, timeout=FETCH_TIMEOUT, check=False,
    )  # fmt: skip
    if fetched.returncode != 0 or not list((staging / "libs").glob("kafka_*.jar")):
        output = (fetched.stdout + fetched.stderr)[-4000:]
        raise KafkaStartError(f"mvn could not fetch {KAFKA_ARTIFACT}:{version}:\n{output}")


def java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise KafkaStartError("Kafka needs Java 17 or later (`java` not found)")
    return found


# --- child processes that die with their starter ---

_LIBC = ctypes.CDLL(None, use_errno=True)
# Forks happen on this one thread, which lives as long as the process: PR_SET_PDEATHSIG fires
# when the forking *thread* ends, so a fork from a short-lived worker would kill its JVM early.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-spawn")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn(argv: Sequence[str], log_path: Path) -> "subprocess.Popen[bytes]":
    def popen() -> "subprocess.Popen[bytes]":
        with log_path.open("ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509  # only a ctypes call, no locks
            )

    return _SPAWNER.submit(popen).result()


# --- ports ---

_claimed: set[int] = set()  # ports of this process's clusters, which may be down for a while
_claimed_lock = threading.Lock()


def _claim_ports(ports: range, count: int, host: str = HOST) -> list[int]:
    """`count` ports of `ports` free now on `host`, from a random start so that two sessions
    scanning at once rarely pick the same."""
    start = random.randrange(len(ports))  # spreading, not secrecy
    candidates = [*ports[start:], *ports[:start]]
    with _claimed_lock:
        picked = [p for p in candidates if p not in _claimed and port_is_free(p, host)][:count]
        if len(picked) < count:
            raise KafkaStartError(f"no {count} free ports for Kafka in {ports.start}-{ports.stop}")
        _claimed.update(picked)
    return picked


def _release_ports(ports: Sequence[int]) -> None:
    with _claimed_lock:
        _claimed.difference_update(ports)


# --- the cluster ---


class KafkaNode:
    """One KRaft node (broker and controller) of a cluster: its ports, files and process."""

    def __init__(
        self, node_id: int, directory: Path, port: int, controller_port: int, host: str = HOST
    ) -> None:
        self.node_id = node_id
        self.directory = directory
        self.host = host
        self.port = port
        self.controller_port = controller_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


_live: "weakref.WeakSet[KafkaCluster]" = weakref.WeakSet()


@atexit.register
def _stop_forgotten_clusters() -> None:
    for cluster in list(_live):
        cluster.stop()


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 random bytes, URL-safe base64 without padding.

    One id in 64 would begin with "-", and StorageTool's argument parser then reads it as an
    option ("--cluster-id: expected one argument"). Kafka's own Uuid.randomUuid draws again in
    that case, and so do we.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaCluster:
    """N Apache Kafka nodes in KRaft combined mode on loopback; started by the constructor.

    Replication settings follow the size: internal topics (consumer offsets, transactions)
    replicate to min(3, N) nodes with min.insync.replicas min(2, N), so a three-node cluster
    keeps committing offsets with one node down. A topic's own min.insync.replicas is left at
    Kafka's default (1) unless the topic sets it: the journal's topics are created with the
    replication factor the settings ask for, 1 in the tests.
    """

    def __init__(
        self,
        work_dir: Path,
        nodes: int = 1,
        *,
        ports: range = TEST_PORTS,
        version: str = KAFKA_VERSION,
        heap: str = HEAP,
        host: str = HOST,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.work_dir = work_dir
        self.size = nodes
        self.host = host  # every node listens there: loopback, or a test network's address
        self._ports = ports
        self._heap = heap
        self._libs = fetch_jars(version)
        self._log4j = self._libs.parent / "log4j2.properties"
        self._java = java_binary()
        self._nodes: dict[int, KafkaNode] = {}
        self._lock = threading.Lock()
        self.started_in = 0.0  # seconds the first start took (formatting included)
        started = time.monotonic()
        self._start_fresh()
        self.started_in = time.monotonic() - started
        _live.add(self)

    # -- addresses --

    @property
    def node_ids(self) -> list[int]:
        return sorted(self._nodes)

    @property
    def bootstrap(self) -> str:
        """host:port of every node, comma-separated: clients find whichever is up."""
        return ",".join(self._nodes[n].bootstrap for n in self.node_ids)

    def node(self, node_id: int) -> KafkaNode:
        return self._nodes[node_id]

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(n.process.pid for n in self._nodes.values() if n.process and n.running)

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    def leader(self, topic: str, partition: int = 0) -> int:
        """Blocking: the node id leading `partition` of `topic` now."""
        metadata = self.admin().list_topics(topic, timeout=READY_TIMEOUT)
        return int(metadata.topics[topic].partitions[partition].leader)

    # -- starting --

    def _start_fresh(self) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            ports = _claim_ports(self._ports, 2 * self.size, self.host)
            self._configure(ports)
            try:
                self._format()
                for node in self._nodes.values():
                    self._launch(node)
                self._wait_ready(self.node_ids)
                self._await_producer_ids(self.bootstrap)
            except KafkaStartError:
                exited = any(
                    n.process is not None and n.process.poll() is not None
                    for n in self._nodes.values()
                )
                self._stop_all()
                _release_ports(ports)
                if not exited or attempt == START_ATTEMPTS:
                    raise
                # A node that exited did most likely not get its port: others, once more.
                shutil.rmtree(self.work_dir / "kafka", ignore_errors=True)
                continue
            return

    def _configure(self, ports: Sequence[int]) -> None:
        base = self.work_dir / "kafka"
        self._nodes = {
            n: KafkaNode(n, base / f"node-{n}", ports[2 * i], ports[2 * i + 1], self.host)
            for i, n in enumerate(range(1, self.size + 1))
        }
        host = self.host
        voters = ",".join(f"{n.node_id}@{host}:{n.controller_port}" for n in self._nodes.values())
        replicas, min_isr = str(min(3, self.size)), str(min(2, self.size))
        for node in self._nodes.values():
            node.directory.mkdir(parents=True, exist_ok=True)
            settings = {
                "process.roles": "broker,controller",
                "node.id": str(node.node_id),
                "controller.quorum.voters": voters,
                "listeners": f"PLAINTEXT://{host}:{node.port},CONTROLLER://{host}:{node.controller_port}",
                "advertised.listeners": f"PLAINTEXT://{host}:{node.port}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "log.dirs": str(node.directory / "data"),
                "offsets.topic.replication.factor": replicas,
                "transaction.state.log.replication.factor": replicas,
                "transaction.state.log.min.isr": min_isr,
                "share.coordinator.state.topic.replication.factor": replicas,
                "share.coordinator.state.topic.min.isr": min_isr,
                **BROKER_SETTINGS,
            }
            node.config_path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))

    def _java_argv(self, main: str, *args: str, short_lived: bool = False) -> list[str]:
        return [
            self._java,
            f"-Xmx{self._heap}",
            *JVM_OPTIONS,
            # A tool that runs a second needs no optimising compiler: 40% less CPU (measured).
            *(["-XX:TieredStopAtLevel=1"] if short_lived else []),
            f"-Dlog4j2.configurationFile={self._log4j}",
            "-cp",
            f"{self._libs}/*",
            main,
            *args,
        ]

    def _format(self) -> None:
        """Formats every node's storage with one cluster id (in parallel: a JVM start each)."""
        cluster_id = new_cluster_id()
        formats = [
            (node, _spawn(
                self._java_argv("kafka.tools.StorageTool", "format", "--cluster-id", cluster_id,
                                "--config", str(node.config_path), short_lived=True),
                node.directory / "format.log",
            ))
            for node in self._nodes.values()
        ]  # fmt: skip
        for node, process in formats:
            try:
                code = process.wait(FORMAT_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                code = -1
            if code != 0:
                log = node.directory / "format.log"
                raise KafkaStartError(f"formatting node {node.node_id} failed:\n{log_tail(log)}")

    def _launch(self, node: KafkaNode) -> None:
        argv = self._java_argv("kafka.Kafka", str(node.config_path))
        node.process = _spawn(argv, node.log_path)

    def _wait_ready(self, node_ids: Sequence[int]) -> None:
        """Until the metadata, asked of each of `node_ids` itself, lists all running nodes."""
        deadline = time.monotonic() + READY_TIMEOUT
        for node_id in node_ids:
            node = self._nodes[node_id]
            admin = AdminClient({"bootstrap.servers": node.bootstrap, "log_level": 0})
            while True:
                assert node.process is not None
                if node.process.poll() is not None:
                    raise KafkaStartError(
                        f"Kafka node {node_id} exited with {node.process.returncode}; "
                        f"{node.log_path}:\n{log_tail(node.log_path)}"
                    )
                with contextlib.suppress(KafkaException):
                    brokers = admin.list_topics(timeout=READY_PROBE_TIMEOUT).brokers
                    wanted = {n.node_id for n in self._nodes.values() if n.running}
                    if wanted <= set(brokers):
                        break
                if time.monotonic() > deadline:
                    raise KafkaStartError(
                        f"Kafka node {node_id} not ready in {READY_TIMEOUT} s; "
                        f"{node.log_path}:\n{log_tail(node.log_path)}"
                    )
                time.sleep(0.1)

    def _await_producer_ids(self, bootstrap: str) -> None:
        """Until an idempotent producer gets its producer id. A KRaft broker asks the controller
        for a block of ids only when the first producer asks it for one, and answers "coordinator
        load in progress" until then: measured up to 2 s after a start on a busy machine, which a
        test's first append (delivery timeout 1.5-3 s) would pay. librdkafka's statistics say
        when the id is assigned; the producer asks one broker of the cluster, so with several
        nodes this warms one of them."""
        assigned = threading.Event()

        def on_stats(raw: str) -> None:
            if json.loads(raw).get("eos", {}).get("idemp_state") == "Assigned":
                assigned.set()

        producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "log_level": 0,
             "statistics.interval.ms": 100, "stats_cb": on_stats}
        )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            while not assigned.is_set():
                if time.monotonic() > deadline:
                    raise KafkaStartError(f"Kafka at {bootstrap} gave no producer id in time")
                producer.poll(0.1)
        finally:
            producer.close()

    # -- faults --

    def kill(self, node_id: int = 1) -> None:
        """Blocking: SIGKILL, as a crashed machine; its log stays on disk."""
        with self._lock:
            process = self._nodes[node_id].process
            if process is not None:
                process.kill()
                process.wait(STOP_TIMEOUT)
                self._nodes[node_id].process = None

    def stop_node(self, node_id: int = 1) -> None:
        """Blocking: a clean shutdown (SIGTERM; SIGKILL after STOP_TIMEOUT)."""
        with self._lock:
            process = self._nodes[node_id].process
            if process is not None:
                end_process(process, STOP_TIMEOUT)
                self._nodes[node_id].process = None

    def start_node(self, node_id: int = 1) -> None:
        """Blocking: starts a stopped or killed node on its ports and storage, and returns once
        it is back in the cluster's metadata."""
        with self._lock:
            node = self._nodes[node_id]
            if node.running:
                raise RuntimeError(f"Kafka node {node_id} is already running")
            self._launch(node)
        try:
            self._wait_ready([node_id])
            self._await_producer_ids(node.bootstrap)
        except KafkaStartError:
            self.kill(node_id)
            raise

    def restart_node(self, node_id: int = 1) -> None:
        self.stop_node(node_id)
        self.start_node(node_id)

    # -- stopping --

    def _stop_all(self) -> None:
        running = [n.process for n in self._nodes.values() if n.process is not None]
        for process in running:  # all at once: a node waits for no one already gone
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in running:
            end_process(process, STOP_TIMEOUT)
        for node in self._nodes.values():
            node.process = None

    def stop(self) -> None:
        """Blocking: stops every node (SIGTERM, then SIGKILL); safe to call twice."""
        with self._lock:
            self._stop_all()
            _release_ports([p for n in self._nodes.values() for p in (n.port, n.controller_port)])
        _live.discard(self)

    def __enter__(self) -> "KafkaCluster":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m simulators.stage.kafka fetch` fetches the jars (make kafka-jars);
    `... run [--nodes N] DIR` runs a cluster in DIR until Ctrl-C, printing its bootstrap."""
    parser = argparse.ArgumentParser(prog="python -m simulators.stage.kafka")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch the Kafka jars from Maven Central into the cache")
    run = commands.add_parser("run", help="run a cluster until interrupted")
    run.add_argument("directory", type=Path)
    run.add_argument("--nodes", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(fetch_jars())
        return 0
    with KafkaCluster(args.directory, args.nodes) as cluster:
        print(
            f"kafka ready bootstrap={cluster.bootstrap} in {cluster.started_in:.1f} s", flush=True
        )
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
