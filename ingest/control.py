"""The control API over gRPC (service ofdproto.control.v1.Control) and its client.

One table of methods serves both sides: the server registers a handler per entry and the client
calls by the same names, so a method can never be renamed on one side only.
"""

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import grpc.aio

from ledger import registry
from ledger.registry import RegistryError
from ledger.state_store import load_state
from ofdproto.control.v1 import control_pb2 as pb

SERVICE = "ofdproto.control.v1.Control"
CALL_TIMEOUT = 10.0  # seconds a CLI call may take

# name -> (request type, response type)
METHODS: dict[str, tuple[Any, Any]] = {
    "AddOrganization": (pb.Organization, pb.Organization),
    "AddTradePoint": (pb.TradePoint, pb.TradePoint),
    "AddDevice": (pb.Device, pb.Device),
    "ActivateDevice": (pb.DeviceRef, pb.Device),
    "IssueToken": (pb.DeviceRef, pb.TokenIssued),
    "ShowDevice": (pb.DeviceRef, pb.DeviceState),
}

_STATUS_TO_PB = {
    "awaiting_registration": pb.DEVICE_STATUS_AWAITING_REGISTRATION,
    "registered": pb.DEVICE_STATUS_REGISTERED,
    "awaiting_deregistration": pb.DEVICE_STATUS_AWAITING_DEREGISTRATION,
    "deregistered": pb.DEVICE_STATUS_DEREGISTERED,
}
_KIND_TO_CODE = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "exists": grpc.StatusCode.ALREADY_EXISTS,
}


def _device_pb(device: registry.Device) -> pb.Device:
    return pb.Device(
        system_id=device.system_id,
        kgd_registration_number=device.kgd_registration_number,
        serial_number=device.serial_number,
        model=device.model,
        year=device.year,
        trade_point_id=device.trade_point_id,
        status=_STATUS_TO_PB[device.status],
    )


class ControlService:
    """The server side. `on_device_changed` lets the local pipeline drop its cached state."""

    def __init__(self, pool: asyncpg.Pool, on_device_changed: Callable[[int], None]) -> None:
        self._pool = pool
        self._changed = on_device_changed

    async def AddOrganization(self, req: pb.Organization) -> pb.Organization:  # noqa: N802
        org = registry.Organization(0, req.iin, req.title, req.address, req.address_kz, req.oked)
        async with self._pool.acquire() as conn:
            added = await registry.add_organization(conn, org)
        return pb.Organization(
            id=added.id,
            iin=added.iin,
            title=added.title,
            address=added.address,
            address_kz=added.address_kz,
            oked=added.oked,
        )

    async def AddTradePoint(self, req: pb.TradePoint) -> pb.TradePoint:  # noqa: N802
        point = registry.TradePoint(
            0,
            req.organization_id,
            req.title,
            req.address,
            req.address_kz,
            req.latitude,
            req.longitude,
        )
        async with self._pool.acquire() as conn:
            added = await registry.add_trade_point(conn, point)
        response = pb.TradePoint()
        response.CopyFrom(req)
        response.id = added.id
        return response

    async def AddDevice(self, req: pb.Device) -> pb.Device:  # noqa: N802
        device = registry.Device(
            req.system_id,
            req.kgd_registration_number,
            req.serial_number,
            req.model,
            req.year,
            req.trade_point_id,
            "",
        )
        async with self._pool.acquire() as conn:
            return _device_pb(await registry.add_device(conn, device))

    async def ActivateDevice(self, req: pb.DeviceRef) -> pb.Device:  # noqa: N802
        async with self._pool.acquire() as conn:
            device = await registry.set_status(conn, req.system_id, "registered")
        self._changed(req.system_id)
        return _device_pb(device)

    async def IssueToken(self, req: pb.DeviceRef) -> pb.TokenIssued:  # noqa: N802
        async with self._pool.acquire() as conn:
            token = await registry.issue_token(conn, req.system_id)
        self._changed(req.system_id)
        return pb.TokenIssued(system_id=req.system_id, token=token)

    async def ShowDevice(self, req: pb.DeviceRef) -> pb.DeviceState:  # noqa: N802
        async with self._pool.acquire() as conn:
            device = await registry.get_device(conn, req.system_id)
            state = await load_state(conn, req.system_id, timeout=CALL_TIMEOUT)
        assert state is not None  # a device always has its state row
        return pb.DeviceState(
            device=_device_pb(device),
            token=state.token or 0,
            has_last_request=state.last_request_number is not None,
            last_request_number=state.last_request_number or 0,
            last_command=state.last_command or 0,
            shift_number=state.shift_number,
            shift_open=state.shift_open,
            last_document_shift=state.last_document_shift,
            last_document_number=state.last_document_number,
            documents_accepted=state.documents_accepted,
            last_contact_us=int(state.last_contact.timestamp() * 1e6) if state.last_contact else 0,
            protocol_version=state.protocol_version or 0,
        )

    def generic_handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._guarded(getattr(self, name)),
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
            for name, (request_type, response_type) in METHODS.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    @staticmethod
    def _guarded(
        method: Callable[[Any], Awaitable[Any]],
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        """Turns registry refusals and an unreachable database into gRPC statuses."""

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await method(request)
            except RegistryError as err:
                await context.abort(_KIND_TO_CODE[err.kind], str(err))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"state store: {err!r}")

        return call


class ControlClient:
    """A blocking client for the CLI, the demo and tests."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target)

    def call(self, method: str, request: Any) -> Any:
        request_type, response_type = METHODS[method]
        if not isinstance(request, request_type):
            raise TypeError(f"{method} takes {request_type.__name__}")
        stub = self._channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return stub(request, timeout=CALL_TIMEOUT)

    def close(self) -> None:
        self._channel.close()
