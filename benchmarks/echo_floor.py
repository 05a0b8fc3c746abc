"""The echo floor: the gateway's transport and codec with no work behind them.

    python -m benchmarks.echo_floor [--port P] [--host H] [--version 203]

uvloop, one asyncio.Protocol per connection and the same FrameDecoder and encode as the gateway;
every request frame is answered at once, in the callback, with a precomputed TICKET OK body of
the gateway's own making (same fields, same size), its header echoing the device's id, token and
request number. Nothing is parsed, stored or rotated: what it costs per request is the floor a
Python gateway on this machine cannot go below, and the benchmark divides by it.

Prints `echo floor ready tcp=HOST:PORT answer_bytes=N` once listening; stops on SIGTERM or SIGINT.
"""

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

import uvloop

from benchmarks.bodies import build_pool, ticket_ok_body
from ingest.codec import FrameDecoder, encode

LISTEN_BACKLOG = 4096


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("_answer", "_decoder", "_transport")

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._decoder.feed(data)
        frames, error = self._decoder.frames()
        for frame in frames:
            h = frame.header
            transport.write(encode(h.version, h.device_id, h.token, h.request_number, self._answer))
        if error is not None:
            transport.abort()  # the load generator never sends garbage: fail loudly

    def eof_received(self) -> bool:
        return False  # close: every frame read was answered in data_received

    # A closed-loop client never lets answers pile up, but a floor must not grow without bound.
    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()


async def serve(host: str, port: int, answer: bytes) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(
        lambda: EchoProtocol(answer), host, port, backlog=LISTEN_BACKLOG
    )
    bound = server.sockets[0].getsockname()
    print(f"echo floor ready tcp={bound[0]}:{bound[1]} answer_bytes={len(answer)}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        # Newer Pythons wait here for open connections too: a floor being stopped need not.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await server.wait_closed()
    print("echo floor stopped", flush=True)


def floor_main(
    prog: str,
    serve_floor: Callable[[str, int, bytes], Coroutine[Any, Any, None]],
    argv: Sequence[str] | None,
) -> int:
    """The command line every echo floor shares: where to listen and which version to answer."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--version", type=int, choices=(203, 204), default=203)
    args = parser.parse_args(argv)
    answer = ticket_ok_body(build_pool(args.version, size=1))
    uvloop.run(serve_floor(args.host, args.port, answer))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return floor_main("python -m benchmarks.echo_floor", serve, argv)


if __name__ == "__main__":
    raise SystemExit(main())
