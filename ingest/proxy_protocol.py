"""PROXY protocol version 2 (the binary header an L4 balancer puts before a connection's first
byte): who the client really is. Sans-IO, like the frame codec: bytes in, an address out.

    12 bytes  signature \\r\\n\\r\\n\\0\\r\\nQUIT\\n
     1 byte   version (high nibble, 2) and command (low nibble: 0 LOCAL, 1 PROXY)
     1 byte   address family (high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and transport
              (low nibble: 0 UNSPEC, 1 STREAM, 2 DGRAM)
     2 bytes  length of what follows, big-endian: the addresses, then TLVs (ignored here)

LOCAL (the balancer's own health check) and PROXY with an UNSPEC family keep the socket's peer
address; PROXY over STREAM with INET or INET6 gives the client's. Anything else (version 1's text
header, a bad signature, a datagram transport, a header longer than MAX_HEADER_SIZE, addresses
shorter than their family needs) is an error: the connection is closed, never served under the
balancer's address. The declared length is checked as soon as the fixed 16 bytes are in, before
the rest is buffered.
"""

import ipaddress
import struct

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED_SIZE = 16
# The fixed part, the longest address block (UNIX: 216 bytes) and a few TLVs; the balancer's
# header is configured by us, so anything longer is not one.
MAX_HEADER_SIZE = 16 + 512
VERSION = 2
COMMAND_LOCAL = 0
COMMAND_PROXY = 1
FAMILY_UNSPEC = 0
FAMILY_INET = 1
FAMILY_INET6 = 2
FAMILY_UNIX = 3
TRANSPORT_UNSPEC = 0
TRANSPORT_STREAM = 1
_INET = struct.Struct("!4s4sHH")
_INET6 = struct.Struct("!16s16sHH")
_UNIX_SIZE = 216


class ProxyHeaderError(ValueError):
    """The connection did not start with a valid PROXY v2 header: close it."""


def build_header(
    source: tuple[str, int] | None,
    destination: tuple[str, int] = ("0.0.0.0", 0),
    *,
    tlvs: bytes = b"",
) -> bytes:
    """A PROXY v2 header: PROXY from `source` (IPv4 or IPv6), or LOCAL when `source` is None.
    What a balancer sends; tests and simulators use it."""
    if source is None:
        return (
            SIGNATURE
            + bytes([VERSION << 4 | COMMAND_LOCAL, 0])
            + struct.pack("!H", len(tlvs))
            + tlvs
        )
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    if src.version == 4:
        if dst.version != 4:
            dst = ipaddress.IPv4Address(0)
        block = _INET.pack(src.packed, dst.packed, source[1], destination[1])
        family = FAMILY_INET
    else:
        if dst.version != 6:
            dst = ipaddress.IPv6Address(0)
        block = _INET6.pack(src.packed, dst.packed, source[1], destination[1])
        family = FAMILY_INET6
    fixed = bytes([VERSION << 4 | COMMAND_PROXY, family << 4 | TRANSPORT_STREAM])
    return SIGNATURE + fixed + struct.pack("!H", len(block) + len(tlvs)) + block + tlvs


class ProxyHeaderParser:
    """Feed the connection's first bytes until `done`; then `source` is the client's address
    (None: keep the socket's peer) and `rest` the bytes after the header (frames)."""

    __slots__ = ("_buffer", "_need", "done", "rest", "source")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._need = FIXED_SIZE
        self.done = False
        self.source: str | None = None
        self.rest = b""

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """True once the header is whole. Raises ProxyHeaderError."""
        if self.done:
            raise ProxyHeaderError("header already read")
        # Never hold more than the header can be: the surplus is frames, kept aside once done.
        self._buffer += data
        if len(self._buffer) >= FIXED_SIZE and self._need == FIXED_SIZE:
            self._need = self._fixed()
        elif len(self._buffer) < FIXED_SIZE:
            self._check_prefix()
        if len(self._buffer) < self._need:
            return False
        self.source = self._address(bytes(self._buffer[FIXED_SIZE : self._need]))
        self.rest = bytes(self._buffer[self._need :])
        self._buffer = bytearray()
        self.done = True
        return True

    def _check_prefix(self) -> None:
        # Fail fast on a client that is not a balancer (a device speaking frames at once).
        got = bytes(self._buffer[: len(SIGNATURE)])
        if not SIGNATURE.startswith(got):
            raise ProxyHeaderError("no PROXY protocol v2 signature")

    def _fixed(self) -> int:
        head = self._buffer
        if bytes(head[:12]) != SIGNATURE:
            raise ProxyHeaderError("no PROXY protocol v2 signature")
        if head[12] >> 4 != VERSION:
            raise ProxyHeaderError(f"PROXY protocol version {head[12] >> 4}, expected 2")
        if head[12] & 0x0F not in (COMMAND_LOCAL, COMMAND_PROXY):
            raise ProxyHeaderError(f"PROXY command {head[12] & 0x0F} is not LOCAL or PROXY")
        total = FIXED_SIZE + (head[14] << 8 | head[15])
        if total > MAX_HEADER_SIZE:
            raise ProxyHeaderError(f"PROXY header of {total} bytes, limit {MAX_HEADER_SIZE}")
        return total

    def _address(self, block: bytes) -> str | None:
        command = self._buffer[12] & 0x0F
        family, transport = self._buffer[13] >> 4, self._buffer[13] & 0x0F
        if command == COMMAND_LOCAL or family == FAMILY_UNSPEC:
            return None  # the balancer itself: the socket's peer is the truth
        if transport != TRANSPORT_STREAM:
            raise ProxyHeaderError(f"PROXY transport {transport} is not a stream")
        if family == FAMILY_INET:
            if len(block) < _INET.size:
                raise ProxyHeaderError("PROXY IPv4 address block too short")
            return str(ipaddress.IPv4Address(block[:4]))
        if family == FAMILY_INET6:
            if len(block) < _INET6.size:
                raise ProxyHeaderError("PROXY IPv6 address block too short")
            return str(ipaddress.IPv6Address(block[:16]))
        if family == FAMILY_UNIX:
            if len(block) < _UNIX_SIZE:
                raise ProxyHeaderError("PROXY UNIX address block too short")
            return None  # a local socket path says nothing about a device's address
        raise ProxyHeaderError(f"PROXY address family {family} is unknown")
