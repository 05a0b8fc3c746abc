"""The control API's server side (service ofdproto.control.v1.Control): each call authenticated,
held to the caller's scope (before anything about the target is read), then carried out through
the registry.

Every change is written to the audit log (control_audit) with the caller's key name, in the
transaction that makes it; lifecycle, token and block changes also go out as notifications.
"""

import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import grpc.aio
import structlog

from ingest.control.convert import (
    ROLE_FROM_PB,
    ROLE_TO_PB,
    STATUS_FROM_PB,
    device_pb,
    iso,
    organization_pb,
    point_pb,
)
from ingest.control.methods import CALL_TIMEOUT, METHODS, SERVICE
from ingest.limits import (
    DEFAULT_CONTROL_AUTH_FAILURES,
    FailureBudget,
    FailureLimiter,
    peer_address,
)
from ingest.notifications import Notify, no_notify
from ledger import registry
from ledger.access import (
    OPERATOR,
    ORGANIZATION,
    ROLES,
    SERVICE_CENTRE,
    Caller,
    authenticate,
    create_key,
    list_keys,
    revoke_key,
)
from ledger.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    RegistryError,
    TooManyFailures,
    Unauthenticated,
)
from ledger.kgd.filing import latest_application
from ledger.lifecycle import Action, DeviceStatus
from ledger.state_store import DATABASE_ERRORS, Conn, load_state
from ofdproto.control.v1 import control_pb2 as pb

log = structlog.get_logger(__name__)


ANONYMOUS_OPERATOR = Caller(0, "anonymous", OPERATOR, None, frozenset(), frozenset())


def bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The key of an `authorization: Bearer <key>` metadata entry, if there is one."""
    for name, value in metadata or ():
        if name.lower() == "authorization" and isinstance(value, str):
            scheme, _, key = value.partition(" ")
            if scheme.lower() == "bearer" and key.strip():
                return key.strip()
    return None


def _denied(caller: Caller, what: str) -> PermissionDenied:
    return PermissionDenied(f"{caller.role} key {caller.name!r} may not {what}")


class ControlService:
    """The server side. `on_device_changed` lets the local pipeline drop its cached state;
    `notify` hands events to the notifier; with `require_auth` off every caller is an operator."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        on_device_changed: Callable[[int], None],
        *,
        require_auth: bool = True,
        notify: Notify = no_notify,
        auth_failures: FailureBudget = DEFAULT_CONTROL_AUTH_FAILURES,
    ) -> None:
        self._pool = pool
        self._changed = on_device_changed
        self._require_auth = require_auth
        self._notify = notify
        # Failed keys per caller address: past the budget the address is refused before its
        # key is even looked at, so guessing keys costs a minute per handful of tries.
        self.auth_failures = FailureLimiter(auth_failures)

    # --- scope ---

    @staticmethod
    def _module(caller: Caller, module: str) -> None:
        if not caller.may_use(module):
            raise _denied(caller, f"use {module}")

    async def _scope_device(self, conn: Conn, caller: Caller, module: str, system_id: int) -> None:
        self._module(caller, module)
        if caller.role == OPERATOR:
            return
        if caller.role == SERVICE_CENTRE:
            if system_id not in caller.system_ids:
                raise _denied(caller, f"reach device {system_id}")
            return
        placement = await registry.placement_of_device(conn, system_id)
        if placement is None or not caller.reaches_point(*placement):
            raise _denied(caller, f"reach device {system_id}")

    async def _scope_point(self, conn: Conn, caller: Caller, module: str, point_id: int) -> None:
        self._module(caller, module)
        if caller.role == OPERATOR:
            return
        organization_id = await registry.organization_of_point(conn, point_id)
        if not caller.reaches_point(organization_id, point_id):
            raise _denied(caller, f"reach trade point {point_id}")

    # --- methods ---

    @staticmethod
    def _own_organization(
        caller: Caller, module: str, organization_id: int, what: str, *, whole: bool = False
    ) -> int:
        """The organization a call may touch: any for operators (0: all), its own for an
        organization's key (0 meaning it), none for a service centre. A call on the
        organization as a whole (`whole`) also refuses a key narrowed to some trade points."""
        ControlService._module(caller, module)
        if caller.role == OPERATOR:
            return organization_id
        if caller.role != ORGANIZATION or organization_id not in (0, caller.organization_id):
            raise _denied(caller, what)
        if whole and not caller.organization_wide:
            raise _denied(caller, f"{what}: the key reaches some trade points only")
        return caller.organization_id or 0

    async def AddOrganization(self, req: pb.Organization, caller: Caller) -> pb.Organization:  # noqa: N802
        self._module(caller, "admin")
        org = registry.Organization(
            0, req.iin, req.title, req.address, req.address_kz, req.oked, req.head
        )
        async with self._pool.acquire() as conn, conn.transaction():
            added = await registry.add_organization(conn, org)
            await registry.audit(conn, caller.name, "AddOrganization", None, id=added.id)
        return organization_pb(added)

    async def UpdateOrganization(self, req: pb.Organization, caller: Caller) -> pb.Organization:  # noqa: N802
        if not req.id:
            raise InvalidRequest("which organization: its id is required")
        self._own_organization(
            caller, "organization", req.id, f"change organization {req.id}", whole=True
        )
        org = registry.Organization(
            req.id, "", req.title, req.address, req.address_kz, req.oked, req.head
        )
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                current = (await registry.list_organizations(conn, organization_id=req.id))[:1]
                if not current:
                    raise NotFound(f"no organization {req.id}")
                if req.iin and req.iin != current[0].iin:
                    raise InvalidRequest(
                        "an organization's IIN never changes: add the new taxpayer"
                    )
                updated = await registry.update_organization(conn, org)
                await registry.audit(
                    conn, caller.name, "UpdateOrganization", None, id=req.id, title=req.title
                )
            ids = [d.system_id for d in await registry.list_devices(conn, organization_id=req.id)]
        for system_id in ids:
            self._changed(system_id)
        return organization_pb(updated)

    async def ListOrganizations(  # noqa: N802
        self, req: pb.OrganizationFilter, caller: Caller
    ) -> pb.OrganizationList:
        only = self._own_organization(caller, "show", 0, "list organizations")
        async with self._pool.acquire() as conn:
            found = await registry.list_organizations(
                conn, organization_id=only, iin=req.iin, after=req.after, limit=req.limit
            )
        return pb.OrganizationList(organizations=[organization_pb(o) for o in found])

    async def ListTradePoints(self, req: pb.TradePointFilter, caller: Caller) -> pb.TradePointList:  # noqa: N802
        wanted = req.organization_id
        organization_id = self._own_organization(
            caller, "show", wanted, f"list points of organization {wanted}"
        )
        async with self._pool.acquire() as conn:
            found = await registry.list_trade_points(
                conn,
                organization_id=organization_id,
                point_ids=caller.trade_point_ids or None,
                after=req.after,
                limit=req.limit,
            )
        return pb.TradePointList(trade_points=[point_pb(p) for p in found])

    def _point(self, req: pb.TradePoint) -> registry.TradePoint:
        return registry.TradePoint(
            req.id,
            req.organization_id,
            req.title,
            req.address,
            req.address_kz,
            req.latitude,
            req.longitude,
        )

    async def AddTradePoint(self, req: pb.TradePoint, caller: Caller) -> pb.TradePoint:  # noqa: N802
        wanted = req.organization_id
        owner = self._own_organization(
            caller, "points", wanted, f"add points to organization {wanted}", whole=True
        )
        point = dataclasses.replace(self._point(req), organization_id=owner)
        async with self._pool.acquire() as conn, conn.transaction():
            added = await registry.add_trade_point(conn, point)
            await registry.audit(conn, caller.name, "AddTradePoint", None, id=added.id)
        return point_pb(added)

    async def UpdateTradePoint(self, req: pb.TradePoint, caller: Caller) -> pb.TradePoint:  # noqa: N802
        async with self._pool.acquire() as conn:
            await self._scope_point(conn, caller, "points", req.id)
            async with conn.transaction():
                current = await registry.get_trade_point(conn, req.id)
                # The owner of a point never changes here: keep it whatever the request says.
                point = self._point(req)
                point = registry.TradePoint(
                    point.id,
                    current.organization_id,
                    point.title,
                    point.address,
                    point.address_kz,
                    point.latitude,
                    point.longitude,
                )
                updated = await registry.update_trade_point(conn, point)
                await registry.audit(
                    conn,
                    caller.name,
                    "UpdateTradePoint",
                    None,
                    id=req.id,
                    latitude=req.latitude,
                    longitude=req.longitude,
                )
            ids = [d.system_id for d in await registry.list_devices(conn, trade_point_id=req.id)]
        for system_id in ids:
            self._changed(system_id)
        return point_pb(updated)

    async def AddDevice(self, req: pb.Device, caller: Caller) -> pb.Device:  # noqa: N802
        if req.system_id and caller.role != OPERATOR:
            # The registry numbers devices: a taxpayer's key picking ids could squat the ids
            # other organizations' registers are configured with.
            raise _denied(caller, "choose a system id (the registry assigns one)")
        device = registry.Device(
            req.system_id,
            req.kgd_registration_number,
            req.serial_number,
            req.model,
            req.year,
            req.trade_point_id,
            DeviceStatus.AWAITING_REGISTRATION,
        )
        async with self._pool.acquire() as conn:
            await self._scope_point(conn, caller, "devices", req.trade_point_id)
            async with conn.transaction():
                added = await registry.add_device(conn, device)
                # Its first token, as the cabinet's registration issues one: `ofd kkm get-token`
                # shows it; a new one is `ofd kkm reset-token`'s to issue.
                await registry.issue_token(conn, added.system_id)
                await registry.audit(
                    conn, caller.name, "AddDevice", added.system_id, point=req.trade_point_id
                )
        return device_pb(added)

    async def _transition(
        self,
        caller: Caller,
        method: str,
        system_id: int,
        action: Action,
        trade_point_id: int = 0,
        **detail: object,
    ) -> pb.Device:
        async with self._pool.acquire() as conn:
            # Scope first: a caller that may not reach the device learns nothing of its status.
            await self._scope_device(conn, caller, METHODS[method][2], system_id)
            if trade_point_id:
                # Re-registration moves a device only to a point the caller may reach as well.
                await self._scope_point(conn, caller, "lifecycle", trade_point_id)
            async with conn.transaction():
                device = await registry.transition(
                    conn, system_id, action, trade_point_id=trade_point_id
                )
                await registry.audit(
                    conn,
                    caller.name,
                    method,
                    system_id,
                    status=device.status.value,
                    point=device.trade_point_id,
                    **detail,
                )
        self._changed(system_id)
        self._notify(
            system_id,
            device.status.value,
            {"status": device.status.value, "trade_point_id": device.trade_point_id},
        )
        return device_pb(device)

    async def ActivateDevice(self, req: pb.DeviceRef, caller: Caller) -> pb.Device:  # noqa: N802
        # Registration is the KGD's to accept (ledger/kgd/applications.py); an operator's
        # activation overrides it, and the audit log says so.
        return await self._transition(
            caller, "ActivateDevice", req.system_id, Action.ACTIVATE, override="kgd_application"
        )

    async def RequestDeregistration(self, req: pb.DeviceRef, caller: Caller) -> pb.Device:  # noqa: N802
        return await self._transition(
            caller, "RequestDeregistration", req.system_id, Action.REQUEST_DEREGISTRATION
        )

    async def CancelDeregistration(self, req: pb.DeviceRef, caller: Caller) -> pb.Device:  # noqa: N802
        return await self._transition(
            caller, "CancelDeregistration", req.system_id, Action.CANCEL_DEREGISTRATION
        )

    async def Deregister(self, req: pb.DeviceRef, caller: Caller) -> pb.Device:  # noqa: N802
        return await self._transition(caller, "Deregister", req.system_id, Action.DEREGISTER)

    async def Reregister(self, req: pb.Reregistration, caller: Caller) -> pb.Device:  # noqa: N802
        return await self._transition(
            caller, "Reregister", req.system_id, Action.REREGISTER, req.trade_point_id
        )

    async def _standing(
        self,
        caller: Caller,
        method: str,
        system_id: int,
        *,
        change: Callable[[Conn], Awaitable[registry.Device]],
        event: str,
        detail: dict[str, object],
    ) -> pb.Device:
        async with self._pool.acquire() as conn:
            await self._scope_device(conn, caller, METHODS[method][2], system_id)
            async with conn.transaction():
                device = await change(conn)
                await registry.audit(conn, caller.name, method, system_id, **detail)
        self._changed(system_id)
        self._notify(system_id, event, detail)
        return device_pb(device)

    async def BlockDevice(self, req: pb.BlockRequest, caller: Caller) -> pb.Device:  # noqa: N802
        return await self._standing(
            caller,
            "BlockDevice",
            req.system_id,
            change=lambda conn: registry.set_blocked(conn, req.system_id, True, req.message),
            event="blocked",
            detail={"message": req.message},
        )

    async def UnblockDevice(self, req: pb.DeviceRef, caller: Caller) -> pb.Device:  # noqa: N802
        return await self._standing(
            caller,
            "UnblockDevice",
            req.system_id,
            change=lambda conn: registry.set_blocked(conn, req.system_id, False),
            event="unblocked",
            detail={},
        )

    async def SetSubscription(self, req: pb.SubscriptionRequest, caller: Caller) -> pb.Device:  # noqa: N802
        return await self._standing(
            caller,
            "SetSubscription",
            req.system_id,
            change=lambda conn: registry.set_subscription(conn, req.system_id, req.active),
            event="subscription_on" if req.active else "subscription_off",
            detail={"active": req.active},
        )

    async def IssueToken(self, req: pb.DeviceRef, caller: Caller) -> pb.TokenIssued:  # noqa: N802
        async with self._pool.acquire() as conn:
            await self._scope_device(conn, caller, "token", req.system_id)
            async with conn.transaction():
                token = await registry.issue_token(conn, req.system_id)
                # The token itself stays out of the log: the log is read by more people.
                await registry.audit(conn, caller.name, "IssueToken", req.system_id)
        self._changed(req.system_id)
        self._notify(req.system_id, "token_reset", {"by": caller.name})
        return pb.TokenIssued(system_id=req.system_id, token=token)

    async def GetToken(self, req: pb.DeviceRef, caller: Caller) -> pb.TokenIssued:  # noqa: N802
        async with self._pool.acquire() as conn:
            await self._scope_device(conn, caller, "token", req.system_id)
            async with conn.transaction():
                token = await registry.current_token(conn, req.system_id)
                if token is None:
                    await registry.get_device(conn, req.system_id)  # not_found if it is none
                    raise PreconditionFailed("no token issued yet: issue one (ofd kkm reset-token)")
                await registry.audit(conn, caller.name, "GetToken", req.system_id)
        return pb.TokenIssued(system_id=req.system_id, token=token)

    async def ShowDevice(self, req: pb.DeviceRef, caller: Caller) -> pb.DeviceState:  # noqa: N802
        async with self._pool.acquire() as conn:
            await self._scope_device(conn, caller, "show", req.system_id)
            device = await registry.get_device(conn, req.system_id)
            state = await load_state(conn, req.system_id, timeout=CALL_TIMEOUT)
            reported = await registry.reported_by_device(conn, req.system_id)
            application = await latest_application(conn, req.system_id)
        assert state is not None  # a device always has its state row
        opened = state.tally.opened_at if state.shift_open else None
        return pb.DeviceState(
            device=device_pb(device),
            token=(state.token or 0) if caller.role == OPERATOR else 0,
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
            shift_opened_at=opened.isoformat() if opened else "",
            offline_since=iso(reported.offline_since),
            offline_until=iso(reported.offline_until),
            software=reported.software,
            kgd_application_kind=application.kind.value if application else "",
            kgd_application_status=application.status if application else "",
            kgd_application_reason=application.reason if application else "",
            kgd_application_error=application.last_error if application else "",
        )

    async def ListDevices(self, req: pb.DeviceFilter, caller: Caller) -> pb.DeviceList:  # noqa: N802
        self._module(caller, "show")
        organization_id = req.organization_id
        system_ids: frozenset[int] | None = None
        if caller.role == ORGANIZATION:
            if organization_id and organization_id != caller.organization_id:
                raise _denied(caller, f"list devices of organization {organization_id}")
            organization_id = caller.organization_id or 0
            if req.trade_point_id and not caller.reaches_point(organization_id, req.trade_point_id):
                raise _denied(caller, f"list devices of trade point {req.trade_point_id}")
        elif caller.role == SERVICE_CENTRE:
            system_ids = caller.system_ids
        status = STATUS_FROM_PB.get(req.status)
        async with self._pool.acquire() as conn:
            devices = await registry.list_devices(
                conn,
                organization_id=organization_id,
                trade_point_id=req.trade_point_id,
                point_ids=caller.trade_point_ids or None,
                status=status,
                system_ids=system_ids,
                after=req.after,
                limit=req.limit,
            )
        return pb.DeviceList(devices=[device_pb(d) for d in devices])

    async def ListAudit(self, req: pb.AuditQuery, caller: Caller) -> pb.AuditLog:  # noqa: N802
        async with self._pool.acquire() as conn:
            if req.system_id:
                await self._scope_device(conn, caller, "audit", req.system_id)
            elif caller.role != OPERATOR:
                raise _denied(caller, "read the whole audit log")
            entries = await registry.list_audit(conn, req.system_id or None, req.limit)
        return pb.AuditLog(
            entries=[
                pb.AuditEntry(
                    at_us=int(e.at.timestamp() * 1e6),
                    actor=e.actor,
                    action=e.action,
                    system_id=e.system_id or 0,
                    detail_json=e.detail,
                )
                for e in entries
            ]
        )

    async def CreateApiKey(self, req: pb.ApiKeySpec, caller: Caller) -> pb.ApiKeyCreated:  # noqa: N802
        self._module(caller, "admin")
        role = ROLE_FROM_PB.get(req.role)
        if role not in ROLES or not req.name:
            raise InvalidRequest("a key needs a name and a role")
        async with self._pool.acquire() as conn, conn.transaction():
            key_id, key = await create_key(
                conn,
                name=req.name,
                role=role,
                organization_id=req.organization_id or None,
                system_ids=frozenset(req.system_ids),
                modules=frozenset(req.modules),
                trade_point_ids=frozenset(req.trade_point_ids),
            )
            await registry.audit(
                conn, caller.name, "CreateApiKey", None, id=key_id, name=req.name, role=role
            )
        return pb.ApiKeyCreated(id=key_id, key=key)

    async def RevokeApiKey(self, req: pb.ApiKeyRef, caller: Caller) -> pb.ApiKeyRef:  # noqa: N802
        self._module(caller, "admin")
        async with self._pool.acquire() as conn, conn.transaction():
            await revoke_key(conn, req.id)
            await registry.audit(conn, caller.name, "RevokeApiKey", None, id=req.id)
        return pb.ApiKeyRef(id=req.id)

    async def ListApiKeys(self, req: pb.Empty, caller: Caller) -> pb.ApiKeyList:  # noqa: N802
        del req
        self._module(caller, "admin")
        async with self._pool.acquire() as conn:
            keys = await list_keys(conn)
        return pb.ApiKeyList(
            keys=[
                pb.ApiKeyInfo(
                    id=k.id,
                    name=k.name,
                    role=ROLE_TO_PB[k.role],
                    organization_id=k.organization_id or 0,
                    system_ids=k.system_ids,
                    modules=k.modules,
                    trade_point_ids=k.trade_point_ids,
                    created_at_us=_micros(k.created_at),
                    revoked_at_us=_micros(k.revoked_at) if k.revoked_at else 0,
                )
                for k in keys
            ]
        )

    async def WhoAmI(self, req: pb.Empty, caller: Caller) -> pb.Caller:  # noqa: N802
        del req
        return pb.Caller(
            name=caller.name,
            role=ROLE_TO_PB[caller.role],
            organization_id=caller.organization_id or 0,
            trade_point_ids=sorted(caller.trade_point_ids),
        )

    # --- wiring ---

    def generic_handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._guarded(getattr(self, name)),
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
            for name, (request_type, response_type, _) in METHODS.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    async def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        if not self._require_auth:
            return ANONYMOUS_OPERATOR
        source = peer_address(context.peer())
        if self.auth_failures.over_budget(source):
            raise TooManyFailures("too many failed authentications from this address: wait")
        key = bearer(context.invocation_metadata())
        caller = None
        if key is not None:
            async with self._pool.acquire() as conn:
                caller = await authenticate(conn, key)
        if caller is None:
            reason = "no key" if key is None else "unknown or revoked key"
            failures = self.auth_failures.failed(source)
            # Logged until the address is over budget; past it, refusals are counted only.
            if failures <= self.auth_failures.budget.failures:
                log.warning(
                    "control authentication failed",
                    source=source,
                    reason=reason,
                    failures_in_window=failures,
                )
            if key is None:
                raise Unauthenticated("no `authorization: Bearer <key>` metadata")
            raise Unauthenticated("unknown or revoked key")
        return caller

    def _guarded(
        self,
        method: Callable[[Any, Caller], Awaitable[Any]],
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        """Authenticates the caller; turns registry refusals and an unreachable database into
        gRPC statuses."""

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await method(request, await self._caller(context))
            except RegistryError as err:
                await context.abort(grpc.StatusCode[err.status], str(err))
            except DATABASE_ERRORS as err:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"state store: {err!r}")

        return call


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    """A moment as microseconds since the epoch, exactly (no float on the way)."""
    return (moment - EPOCH) // timedelta(microseconds=1)
