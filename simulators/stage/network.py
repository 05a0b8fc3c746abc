"""Test hosts on one machine: network namespaces on a bridge, so that faults can cut links.

The host side holds the bridge and the services' addresses (PostgreSQL, each Kafka broker on an
address of its own, Mosquitto); each gateway runs in a namespace of its own with one address on
the bridge. Cutting a link is a blackhole route inside the namespace to one address: that
namespace loses exactly that peer (a broker, the database) while the balancer still reaches it.

Everything here is root-only (`ip netns`, `ip link`) and made by the harness itself: the addresses
are the project's own test hosts, reachable from this machine only. The subnet and names carry a
tag so that two harnesses (a test run and `make cluster`) never share them.
"""

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

IP = "/usr/sbin/ip"
PREFIX = 24


class NetworkFailed(RuntimeError):
    """An `ip` command failed; the message carries its stderr."""


def ip(*args: str, namespace: str | None = None) -> None:
    argv = [IP, *args] if namespace is None else [IP, "netns", "exec", namespace, IP, *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetworkFailed(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _kill_processes_in(namespace: str) -> None:
    """What a killed harness left running inside `namespace` (deleting it would not stop them)."""
    listed = subprocess.run(
        [IP, "netns", "pids", namespace], capture_output=True, text=True, check=False
    )
    for pid in listed.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class TestNetwork:
    """A bridge `ofd<tag>` on 10.<octet>.0.0/24 with host addresses .1, .2, ... on demand and a
    namespace per guest at .101, .102, ..."""

    tag: str  # a few letters: bridge and namespace names must stay under 15 characters
    octet: int  # the second octet of the subnet (10.octet.0.0/24)
    _host_addresses: list[str] = field(default_factory=list)
    _guests: dict[str, str] = field(default_factory=dict)  # namespace -> address

    @property
    def bridge(self) -> str:
        return f"ofd{self.tag}"

    def address(self, host: int) -> str:
        return f"10.{self.octet}.0.{host}"

    def up(self) -> None:
        self.down()  # what a killed harness of the same tag left behind
        ip("link", "add", self.bridge, "type", "bridge")
        ip("link", "set", self.bridge, "up")

    def host_address(self) -> str:
        """One more address on the host side (a service that faults may cut on its own)."""
        address = self.address(len(self._host_addresses) + 1)
        ip("addr", "add", f"{address}/{PREFIX}", "dev", self.bridge)
        self._host_addresses.append(address)
        return address

    def guest(self, name: str) -> tuple[str, str]:
        """A namespace on the bridge; returns (namespace, its address)."""
        namespace = f"{self.bridge}-{name}"
        address = self.address(101 + len(self._guests))
        outside, inside = f"{self.bridge}{len(self._guests)}a", f"{self.bridge}{len(self._guests)}b"
        ip("netns", "add", namespace)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", namespace)
        ip("link", "set", outside, "master", self.bridge)
        ip("link", "set", outside, "up")
        ip("addr", "add", f"{address}/{PREFIX}", "dev", inside, namespace=namespace)
        ip("link", "set", inside, "up", namespace=namespace)
        ip("link", "set", "lo", "up", namespace=namespace)
        self._guests[namespace] = address
        return namespace, address

    def cut(self, namespace: str, peers: Sequence[str]) -> None:
        """`namespace` can no longer reach `peers` (addresses); everyone else still reaches it."""
        for peer in peers:
            ip("route", "add", "blackhole", f"{peer}/32", namespace=namespace)

    def heal(self, namespace: str, peers: Sequence[str]) -> None:
        for peer in peers:
            with contextlib.suppress(NetworkFailed):
                ip("route", "del", "blackhole", f"{peer}/32", namespace=namespace)

    def exec_prefix(self, namespace: str) -> list[str]:
        """The argv prefix that runs a command inside `namespace`."""
        return [IP, "netns", "exec", namespace]

    def down(self) -> None:
        """Removes the namespaces and the bridge (the veth pairs go with their namespaces)."""
        listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, check=False)
        for line in listed.stdout.splitlines():
            namespace = line.split()[0] if line.strip() else ""
            if namespace.startswith(f"{self.bridge}-"):
                _kill_processes_in(namespace)
                with contextlib.suppress(NetworkFailed):
                    ip("netns", "del", namespace)
        with contextlib.suppress(NetworkFailed):
            ip("link", "del", self.bridge)
        self._host_addresses.clear()
        self._guests.clear()
