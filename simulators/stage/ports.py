"""Free TCP ports for the services the harness starts.

Ports are below the ephemeral range (32768-60999 here) so that no client connection can hold
them, and are scanned because other processes (another test session, too) may hold some. Free now
may be taken a moment later: callers that fail to bind move on to the next candidate.
"""

import socket
from collections.abc import Iterator

HOST = "127.0.0.1"


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(ports: range, host: str = HOST) -> Iterator[int]:
    """The ports of `ports` that are free when the caller asks for the next one."""
    return (port for port in ports if port_is_free(port, host))
