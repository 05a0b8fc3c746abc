"""The servers under test as subprocesses: the echo floors and the gateway on the embedded default.

Starting, waiting and stopping are simulators/stage/processes.py's; this adds free fixed ports and
the echo floors (TCP and gRPC).
"""

import socket
import sys
from pathlib import Path

from ledger.journal.kafka import KafkaSettings
from simulators.stage.processes import ServerFailed, ServerProcess, ready_or_stopped, spawn, stop
from simulators.stage.processes import start_gateway as start_gateway_process

HOST = "127.0.0.1"
LOAD_CONNECTIONS_PER_SOURCE = 100_000
# Fixed ports below the ephemeral range (32768-60999): a client connection opened in between
# cannot take them, and a scan finds ones nobody else holds.
PORT_RANGE = range(17801, 17900)

__all__ = [
    "ServerProcess",
    "free_ports",
    "start_echo_floor",
    "start_gateway",
    "start_grpc_echo_floor",
    "stop",
]


def free_ports(count: int) -> list[int]:
    """`count` ports of PORT_RANGE that nothing listens on now."""
    found: list[int] = []
    for port in PORT_RANGE:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise ServerFailed(f"fewer than {count} free ports in {PORT_RANGE.start}-{PORT_RANGE.stop}")


def _start_floor(name: str, module: str, log_path: Path, port: int, version: int) -> ServerProcess:
    server = spawn(
        name,
        [sys.executable, "-m", module, "--host", HOST, "--port", str(port),
         "--version", str(version)],
        log_path,
    )  # fmt: skip
    ready_or_stopped(server)
    return server


def start_echo_floor(log_path: Path, port: int, version: int) -> ServerProcess:
    return _start_floor("echo floor", "benchmarks.echo_floor", log_path, port, version)


def start_grpc_echo_floor(log_path: Path, port: int, version: int) -> ServerProcess:
    return _start_floor("grpc echo floor", "benchmarks.grpc_echo_floor", log_path, port, version)


def start_gateway(
    data_dir: Path,
    port: int,
    control_port: int,
    secret_hex: str,
    grpc_port: int = 0,
    *,
    kafka: KafkaSettings | None = None,
) -> ServerProcess:
    """`ofd serve` on the embedded default: no --database-url, PostgreSQL in data_dir/pg;
    gRPC device ingest on `grpc_port` unless it is 0; the journal in data_dir, or the Kafka
    topic `kafka` names."""
    grpc_args = ("--grpc-port", str(grpc_port)) if grpc_port else ()
    kafka_args = (
        ("--journal", "kafka", "--kafka-bootstrap", kafka.bootstrap_servers,
         "--kafka-topic", kafka.topic, "--kafka-partitions", str(kafka.partitions))
        if kafka
        else ()
    )  # fmt: skip
    return start_gateway_process(
        data_dir,
        "--host",
        HOST,
        # The whole load comes from one loopback address: a fleet of one-shot connections
        # would be one source far past what a NAT in front of registers opens at once.
        "--max-connections-per-source",
        str(LOAD_CONNECTIONS_PER_SOURCE),
        "--secret-hex",
        secret_hex,
        *grpc_args,
        *kafka_args,
        port=port,
        control_port=control_port,
    )
