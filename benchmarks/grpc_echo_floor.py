"""The gRPC echo floor: the gateway's gRPC transport with no work behind it.

    python -m benchmarks.grpc_echo_floor [--port P] [--host H] [--version 203]

A grpc.aio server (on uvloop, like the gateway) serving ofdproto.ingest.v1.Ingest/Exchange with
the gateway's server options; every call is answered at once with a precomputed TICKET OK body of
the gateway's own making (same fields, same size) and initial metadata echoing the call's header
values, as the gateway's answer metadata does. Nothing is parsed, checked, stored or rotated:
what it costs per request is the floor a Python gRPC gateway on this machine cannot go below,
the gRPC counterpart of `benchmarks.echo_floor`.

Prints `grpc echo floor ready tcp=HOST:PORT answer_bytes=N` once listening (the ready line
`simulators.stage.processes` reads); stops on SIGTERM or SIGINT.
"""

import asyncio
import signal
from collections.abc import Sequence

import grpc
import grpc.aio

from benchmarks.echo_floor import floor_main
from ingest.grpc_ingest import HEADER_KEYS, SERVER_OPTIONS, SERVICE
from ofdproto.ingest.v1 import ingest_pb2 as pb

STOP_GRACE = 1.0


class EchoIngest:
    __slots__ = ("_answer",)

    def __init__(self, answer: bytes) -> None:
        self._answer = pb.Frame(body=answer)

    async def exchange(
        self, _request: pb.Frame, context: grpc.aio.ServicerContext[pb.Frame, pb.Frame]
    ) -> pb.Frame:
        echoed = tuple(
            (key, value) for key, value in context.invocation_metadata() or () if key in HEADER_KEYS
        )
        await context.send_initial_metadata(echoed)
        return self._answer

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Exchange": grpc.unary_unary_rpc_method_handler(
                    self.exchange,
                    request_deserializer=pb.Frame.FromString,
                    response_serializer=pb.Frame.SerializeToString,
                ),
            },
        )


async def start(host: str, port: int, answer: bytes) -> tuple[grpc.aio.Server, int]:
    """A started server and the port it listens on (port 0: one the kernel picks)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((EchoIngest(answer).generic_handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


async def serve(host: str, port: int, answer: bytes) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server, bound = await start(host, port, answer)
    print(f"grpc echo floor ready tcp={host}:{bound} answer_bytes={len(answer)}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(STOP_GRACE)
    print("grpc echo floor stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    return floor_main("python -m benchmarks.grpc_echo_floor", serve, argv)


if __name__ == "__main__":
    raise SystemExit(main())
