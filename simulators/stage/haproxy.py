"""An L4 balancer in front of the gateways: Debian's HAProxy in TCP mode.

Devices connect to the balancer; it hands each connection to a healthy gateway with a PROXY
protocol v2 header (`send-proxy-v2`), so the gateway's per-source limits count the device's own
address. Health is the gateway's /healthz on its metrics port (200 once it is ready and while it
can make documents durable): a gateway that is killed, stuck or cut off from the journal is taken
out within a few seconds and put back when it is healthy again.
"""

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from simulators.stage.processes import end_process

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
CHECK_INTERVAL_MS = 500  # a dead gateway is out after `fall` failed checks, 1.5 s
FALL, RISE = 3, 2


class HaproxyFailed(RuntimeError):
    """HAProxy did not start; the message carries its output."""


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    address: str
    port: int  # the gateway's device port
    health_port: int  # its /metrics port


def config(listen: tuple[str, int], backends: list[Backend], *, proxy_protocol: bool) -> str:
    send_proxy = " send-proxy-v2" if proxy_protocol else ""
    servers = "\n".join(
        f"    server {b.name} {b.address}:{b.port} check port {b.health_port}"
        f" inter {CHECK_INTERVAL_MS} fall {FALL} rise {RISE}{send_proxy}"
        for b in backends
    )
    return f"""global
    maxconn 5000

defaults
    mode tcp
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    retries 2
    option redispatch

frontend devices
    bind {listen[0]}:{listen[1]}
    default_backend gateways

backend gateways
    balance leastconn
    option httpchk GET /healthz
    http-check expect status 200
{servers}
"""


class Haproxy:
    def __init__(self, process: subprocess.Popen[bytes], address: str, port: int) -> None:
        self._process = process
        self.address = address
        self.port = port

    @classmethod
    def start(
        cls,
        directory: Path,
        listen: tuple[str, int],
        backends: list[Backend],
        *,
        proxy_protocol: bool = True,
        prefix: list[str] | None = None,
    ) -> Self:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise HaproxyFailed("haproxy is not installed: apt-get install haproxy")
        path = directory / "haproxy.cfg"
        path.write_text(config(listen, backends, proxy_protocol=proxy_protocol))
        checked = subprocess.run(
            [binary, "-c", "-f", str(path)], capture_output=True, text=True, check=False
        )
        if checked.returncode != 0:
            raise HaproxyFailed(f"haproxy -c: {checked.stdout}{checked.stderr}")
        with (directory / "haproxy.log").open("ab") as log:
            process = subprocess.Popen(
                [*(prefix or []), binary, "-db", "-f", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        balancer = cls(process, *listen)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise HaproxyFailed(f"haproxy exited: {(directory / 'haproxy.log').read_text()}")
            try:
                socket.create_connection(listen, timeout=0.5).close()
            except OSError:
                time.sleep(0.05)
                continue
            return balancer
        balancer.stop()
        raise HaproxyFailed(f"haproxy not listening on {listen[0]}:{listen[1]}")

    @property
    def pid(self) -> int:
        return self._process.pid

    def stop(self) -> None:
        end_process(self._process, STOP_TIMEOUT)
