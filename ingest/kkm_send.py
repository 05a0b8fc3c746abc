"""`ofd kkm send`: a registered device's documents, sent as the device would, over TCP or gRPC.

ofd kkm send --id SYSTEM_ID --token T [--gateway HOST:PORT | --grpc HOST:PORT]
             [--shift-close | --x-report | --offline N] [--amount TENGE] [--payment KIND]

It first asks INFO (the OFD's last document of the device and its open shift, or the next one),
so the documents it sends carry the numbers the device would print. Every answer is printed: the
result, the fiscal sign and the QR URL of a receipt. A receipt, a shift close or a money placement
makes the OFD hand out the device's next token, which is printed last and clearly: the device
must present it from now on (`--token` of the next call). A refusal is one line naming the code,
and the exit code is 1.
"""

import argparse
import asyncio
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message

from ingest.cli_options import CliError, option
from ingest.grpc_ingest import ID_KEY, REQUEST_NUMBER_KEY, SERVICE, TOKEN_KEY, VERSION_KEY
from ingest.settings import DEFAULT_TCP_PORT
from ledger.schemas import SCHEMAS
from ledger.wire import KZ_TIME, Command, ResultCode
from ledger.zx_report import REPORT_X
from ofdproto.ingest.v1 import ingest_pb2
from simulators.documents import build_close_shift, build_offline_system, build_report
from simulators.kkm import MAX_REQUEST_NUMBER, MAX_TOKEN, BadResponse, DeviceOffline, SimulatedKkm
from simulators.receipts import PAYMENT_TYPES, Line, build_info, build_ticket

TIMEOUT = 10.0  # seconds an answer may take, as a device waits
OFFLINE_SPACING = timedelta(minutes=1)  # between the receipts of an offline backlog
MAX_OFFLINE = 1000
TIYN_PER_TENGE = 100


class Link(Protocol):
    """One device's exchange with the OFD: a request out, its answer back, token followed."""

    @property
    def token(self) -> int: ...

    @property
    def request_number(self) -> int: ...

    async def send(self, request: Message) -> Any: ...

    async def close(self) -> None: ...


class TcpLink:
    """The device protocol's framed TCP (simulators.kkm.SimulatedKkm does the framing)."""

    def __init__(self, address: str, version: int, system_id: int, token: int, first: int) -> None:
        host, port = _host_port(address, "--gateway")
        self.address = address
        self._kkm = SimulatedKkm(
            host,
            port,
            version=version,
            system_id=system_id,
            token=token,
            request_number=first - 1,
            timeout=TIMEOUT,
        )

    @property
    def token(self) -> int:
        return self._kkm.token

    @property
    def request_number(self) -> int:
        return self._kkm.request_number

    async def send(self, request: Message) -> Any:
        try:
            return await self._kkm.send(request)
        except DeviceOffline as err:
            raise CliError(
                f"no answer from the gateway at {self.address} ({err}): is `ofd serve`"
                " running there? Pass its device port with --gateway HOST:PORT"
            ) from err
        except BadResponse as err:
            raise CliError(f"the gateway at {self.address} answered nonsense: {err}") from err

    async def close(self) -> None:
        await self._kkm.close()


class GrpcLink:
    """Service ofdproto.ingest.v1.Ingest, Exchange: the frame's header values in metadata."""

    def __init__(self, address: str, version: int, system_id: int, token: int, first: int) -> None:
        _host_port(address, "--grpc")
        self.address = address
        self.version, self.system_id, self.token = version, system_id, token
        self.request_number = first - 1
        self._channel = grpc.aio.insecure_channel(address)
        self._exchange = self._channel.unary_unary(
            f"/{SERVICE}/Exchange",
            request_serializer=ingest_pb2.Frame.SerializeToString,
            response_deserializer=ingest_pb2.Frame.FromString,
        )

    async def send(self, request: Message) -> Any:
        self.request_number = self.request_number % MAX_REQUEST_NUMBER + 1
        metadata = (
            (ID_KEY, str(self.system_id)),
            (TOKEN_KEY, str(self.token)),
            (REQUEST_NUMBER_KEY, str(self.request_number)),
            (VERSION_KEY, str(self.version)),
        )
        call = self._exchange(
            ingest_pb2.Frame(body=request.SerializeToString()), metadata=metadata, timeout=TIMEOUT
        )
        try:
            frame = await call
            answered = dict(await call.initial_metadata() or ())
        except grpc.aio.AioRpcError as err:
            raise CliError(
                f"the gateway's gRPC ingest at {self.address} failed:"
                f" {err.code().name.lower()} ({err.details()}): is `ofd serve` running with"
                " --grpc-port? Pass its address with --grpc HOST:PORT"
            ) from err
        schema = SCHEMAS[int(answered.get(VERSION_KEY, self.version))]
        try:
            response = schema.Response.FromString(frame.body)
        except DecodeError as err:
            raise CliError(f"the gateway at {self.address} answered nonsense: {err}") from err
        if response.result.result_code == ResultCode.OK:
            self.token = int(answered[TOKEN_KEY])
        return response

    async def close(self) -> None:
        await self._channel.close()


def _host_port(address: str, flag: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise CliError(f"{flag} wants HOST:PORT, not {address!r}", 2)
    return host.strip("[]"), int(port)


@dataclass(slots=True)
class Answer:
    """One answer, as printed."""

    command: str
    request_number: int
    result: int
    text: str
    fiscal_sign: str | None = None
    qr_url: str | None = None

    def line(self) -> str:
        head = f"{self.command} (request {self.request_number}): {_result_name(self.result)}"
        if self.text and self.result != ResultCode.OK:
            head += f": {self.text}"
        if self.fiscal_sign:
            head += f"\n  fiscal sign  {self.fiscal_sign}\n  QR URL       {self.qr_url}"
        return head


def _result_name(code: int) -> str:
    try:
        return f"{ResultCode(code).name} ({code})"
    except ValueError:
        return str(code)


def _now() -> datetime:
    """Kazakh local time, as the protocol's times are (no zone)."""
    return datetime.now(KZ_TIME).replace(tzinfo=None, microsecond=0)


class Session:
    """The documents of one `ofd kkm send`, and what was answered."""

    def __init__(self, link: Link, system_id: int, version: int, as_json: bool) -> None:
        self.link = link
        self.system_id = system_id
        self.schema = SCHEMAS[version]
        self.as_json = as_json
        self.answers: list[Answer] = []
        self.shift = 0
        self.document = 0
        self.ofd_report: Any = None

    async def send(self, request: Any, command: Command) -> Any:
        response = await self.link.send(request)
        if response.result.result_code == ResultCode.INVALID_REQUEST_NUMBER:
            response = await self.link.send(request)  # the number was the last one: the next
        answer = Answer(
            command.name,
            self.link.request_number,
            response.result.result_code,
            response.result.result_text,
        )
        if command == Command.TICKET and response.HasField("ticket"):
            answer.fiscal_sign = response.ticket.ticket_number or None
            answer.qr_url = bytes(response.ticket.qr_code).decode(errors="replace") or None
        self.answers.append(answer)
        self._show(answer)
        return response

    def _show(self, answer: Answer) -> None:
        if self.as_json:
            data = {
                "command": answer.command,
                "request_number": answer.request_number,
                "result": answer.result,
                "result_name": _result_name(answer.result).split(" ")[0],
                "result_text": answer.text,
                "fiscal_sign": answer.fiscal_sign,
                "qr_url": answer.qr_url,
                "token": self.link.token,
            }
            print(json.dumps(data, ensure_ascii=False), flush=True)
        else:
            print(answer.line(), flush=True)

    async def info(self) -> None:
        """INFO: the last document the OFD has, and the open shift (or the next one)."""
        response = await self.send(build_info(self.schema), Command.INFO)
        if response.result.result_code != ResultCode.OK:
            raise _refused(self.answers[-1], self.system_id)
        last = response.service.last_document_info
        self.document = int(last.printed_document_number)
        self.shift = int(response.report.zx_report.shift_number) or 1
        self.ofd_report = response.report.zx_report

    async def receipt(self, amount_tiyn: int, payment: str, offline: datetime | None) -> Any:
        self.document += 1
        line = Line("Тауар / Товар", "1", 1000, amount_tiyn)
        when = offline or _now()
        request = build_ticket(
            self.schema,
            when=when,
            shift_number=self.shift,
            document_number=self.document,
            lines=[line],
            payment=payment,  # type: ignore[arg-type]
            offline_number=None if offline is None else int(when.timestamp()) & MAX_TOKEN,
        )
        return await self.send(request, Command.TICKET)

    async def close_shift(self) -> Any:
        self.document += 1
        request = build_close_shift(
            self.schema,
            when=_now(),
            shift_number=self.shift,
            document_number=self.document,
            z_report=self.ofd_report,  # the OFD's own count: nothing to flag
        )
        return await self.send(request, Command.CLOSE_SHIFT)

    async def x_report(self) -> Any:
        request = build_report(
            self.schema, kind=REPORT_X, when=_now(), zx_report=self.ofd_report,
            shift_number=self.shift,
        )  # fmt: skip
        return await self.send(request, Command.REPORT)

    async def offline_backlog(self, count: int, amount_tiyn: int, payment: str) -> None:
        """`count` receipts made offline a minute apart, oldest first, then the offline period
        in a SYSTEM request: the device is online again."""
        first = _now() - OFFLINE_SPACING * count
        for index in range(count):
            response = await self.receipt(amount_tiyn, payment, first + OFFLINE_SPACING * index)
            if response.result.result_code != ResultCode.OK:
                return
        period = build_offline_system(self.schema, begin=first, end=_now())
        await self.send(period, Command.SYSTEM)


def _refused(answer: Answer, system_id: int) -> CliError:
    code = answer.result
    hints: dict[int, str] = {
        ResultCode.INVALID_TOKEN: f" (the current token: ofd kkm get-token {system_id})",
        ResultCode.UNKNOWN_ID: f" (is it registered? ofd kkm show {system_id})",
        ResultCode.OPEN_SHIFT_TIMEOUT_EXPIRED: " (close it: ofd kkm send --shift-close)",
    }
    hint = hints.get(code, "")
    return CliError(
        f"the gateway refused {answer.command}: {_result_name(code)}: {answer.text}{hint}"
    )


async def _send(args: argparse.Namespace) -> int:
    first = secrets.randbelow(MAX_REQUEST_NUMBER) + 1  # not the last request's number, likely
    link: Link = (GrpcLink if args.grpc else TcpLink)(
        args.grpc or args.gateway, args.protocol, args.id, args.token, first
    )
    session = Session(link, args.id, args.protocol, args.json)
    try:
        await session.info()
        amount = round(args.amount * TIYN_PER_TENGE)
        if args.shift_close:
            await session.close_shift()
        elif args.x_report:
            await session.x_report()
        elif args.offline:
            await session.offline_backlog(args.offline, amount, args.payment)
        else:
            await session.receipt(amount, args.payment, None)
    finally:
        await link.close()
    _print_token(args, link.token)
    refused = [a for a in session.answers if a.result != ResultCode.OK]
    if refused:
        raise _refused(refused[-1], args.id)
    return 0


def _print_token(args: argparse.Namespace, token: int) -> None:
    if args.json:
        return  # each JSON line carries the token after its answer
    if token == args.token:
        print(f"token unchanged: {token}")
    else:
        print(
            f"NEXT TOKEN: {token}  (the device must present this one from now on:"
            f" ofd kkm send --id {args.id} --token {token})"
        )


def _run(args: argparse.Namespace) -> int:
    if args.token is None:
        raise CliError("ofd kkm send needs --token (or OFD_DEVICE_TOKEN): ofd kkm get-token ID", 2)
    if not 0 < args.amount <= 10_000_000:
        raise CliError(f"--amount {args.amount} is not a price in tenge (0 to 10,000,000)", 2)
    if not 0 <= args.offline <= MAX_OFFLINE:
        raise CliError(f"--offline takes 1 to {MAX_OFFLINE} receipts, not {args.offline}", 2)
    return asyncio.run(_send(args))


def _token(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_TOKEN:
        raise ValueError(text)
    return value


_token.__name__ = "token"


def add_send_command(kkm: Any) -> None:
    p = kkm.add_parser(
        "send",
        help="send a receipt (or a shift close, an X report, an offline backlog) as a device",
        description=__doc__,
    )
    option(p, "--id", type=int, required=True, help="the device's system id")
    option(
        p,
        "--token",
        type=_token,
        env="OFD_DEVICE_TOKEN",
        help="the device's current token (ofd kkm get-token ID)",
    )
    option(
        p,
        "--gateway",
        env="OFD_GATEWAY",
        default=f"127.0.0.1:{DEFAULT_TCP_PORT}",
        metavar="HOST:PORT",
        help="the gateway's device TCP port",
    )
    option(
        p,
        "--grpc",
        default="",
        metavar="HOST:PORT",
        help="send over the gateway's gRPC ingest instead (its --grpc-port)",
    )
    option(p, "--protocol", type=int, choices=sorted(SCHEMAS), default=204, help="protocol version")
    what = p.add_mutually_exclusive_group()
    option(what, "--shift-close", action="store_true", help="close the open shift (Z report)")
    option(what, "--x-report", action="store_true", help="an X report of the open shift")
    option(
        what,
        "--offline",
        type=int,
        default=0,
        metavar="N",
        help="N receipts made offline a minute apart, then the offline period (SYSTEM)",
    )
    option(p, "--amount", type=float, default=500.0, help="the receipt's total, in tenge")
    option(p, "--payment", choices=sorted(PAYMENT_TYPES), default="card", help="how it is paid")
    p.set_defaults(run=_run)
