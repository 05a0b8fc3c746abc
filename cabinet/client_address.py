"""Whose request it is, for the per-address limits (failed logins, check misses), behind a proxy.

Without `--trusted-proxy` the address is the TCP peer's and X-Forwarded-For is ignored: anyone
can write that header, and a client choosing its own address would dodge every limit. With it,
and only when the peer is one of the trusted proxies, the header is read from the right: each
trusted proxy appends the address it saw, so the right-most entry that is not itself a trusted
proxy is the client as the nearest trusted hop saw it. Entries to its left are the client's own
words and are never read.
"""

import argparse
import ipaddress
from ipaddress import IPv4Address, IPv6Address

from aiohttp import hdrs, web

from cabinet.settings import Network
from cabinet.web import cabinet

UNKNOWN = "unknown"


def trusted_networks(text: str) -> tuple[Network, ...]:
    """`--trusted-proxy`: addresses or CIDRs, comma-separated ("" : none)."""
    found = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            found.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"{item.strip()!r} is not an address or a CIDR (such as 10.0.0.0/8)"
            ) from err
    return tuple(found)


def _address(text: str) -> IPv4Address | IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(address: IPv4Address | IPv6Address | None, trusted: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in trusted)


def client_address(peer: str | None, forwarded: list[str], trusted: tuple[Network, ...]) -> str:
    """The client's address: `peer`, unless `peer` is a trusted proxy; then the right-most
    entry of the X-Forwarded-For headers (`forwarded`, in the order received) that is not a
    trusted proxy. An entry no proxy could have written (not an address) ends the walk at the
    hop that passed it on, so garbage never becomes an address of its own."""
    if not peer or not _trusted(_address(peer), trusted):
        return peer or UNKNOWN
    nearest = peer
    entries = [entry for header in forwarded for entry in header.split(",")]
    for entry in reversed(entries):
        address = _address(entry)
        if address is None:
            return nearest
        nearest = str(address)
        if not _trusted(address, trusted):
            return nearest
    return nearest  # every hop a trusted proxy: the farthest one is the best known


def client_of(request: web.Request) -> str:
    """The address the cabinet's limits count for `request`."""
    return client_address(
        request.remote,
        request.headers.getall(hdrs.X_FORWARDED_FOR, []),
        cabinet(request).settings.trusted_proxies,
    )
