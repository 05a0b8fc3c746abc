"""A real MQTT broker: the system's Mosquitto (Debian's mosquitto package), on loopback.

Started by the tests on a free port below the ephemeral range with a configuration of its own
(anonymous clients on 127.0.0.1 only, no persistence), so that nothing of the machine's is used.
"""

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from simulators.stage.ports import HOST, free_ports
from simulators.stage.processes import end_process

PORTS = range(11883, 12083)
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class MosquittoFailed(RuntimeError):
    """The broker did not start."""


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise MosquittoFailed("mosquitto is not installed: apt-get install mosquitto")
    return found


class MosquittoBroker:
    def __init__(
        self, process: subprocess.Popen[bytes], port: int, directory: Path, host: str = HOST
    ) -> None:
        self._process = process
        self.host = host
        self.port = port
        self._directory = directory

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @classmethod
    def start(cls, host: str = HOST) -> Self:
        """On loopback, or on a test network's address (`host`)."""
        directory = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        binary = mosquitto_binary()
        for port in free_ports(PORTS, host):
            config = directory / f"{port}.conf"
            config.write_text(
                f"listener {port} {host}\nallow_anonymous true\npersistence false\n"
                "log_dest stdout\n"
            )
            config.chmod(0o644)
            log = (directory / f"{port}.log").open("ab")
            process = subprocess.Popen(
                [binary, "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            log.close()
            broker = cls(process, port, directory, host)
            if broker._wait_ready():
                return broker
            broker.stop()
        raise MosquittoFailed(f"no free port for Mosquitto in {PORTS.start}-{PORTS.stop - 1}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)
                continue
            return True
        return False

    def stop(self) -> None:
        end_process(self._process, STOP_TIMEOUT)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
