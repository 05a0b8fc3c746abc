"""The control API's method table: one table serves both sides, so a method can never be renamed
on one side only. It also names each method's module, which ledger.access's roles are granted
by."""

from typing import Any

from ofdproto.control.v1 import control_pb2 as pb

SERVICE = "ofdproto.control.v1.Control"
CALL_TIMEOUT = 10.0  # seconds a client call may take

# name -> (request type, response type, module)
METHODS: dict[str, tuple[Any, Any, str]] = {
    "AddOrganization": (pb.Organization, pb.Organization, "admin"),
    "UpdateOrganization": (pb.Organization, pb.Organization, "organization"),
    "ListOrganizations": (pb.OrganizationFilter, pb.OrganizationList, "show"),
    "ListTradePoints": (pb.TradePointFilter, pb.TradePointList, "show"),
    "AddTradePoint": (pb.TradePoint, pb.TradePoint, "points"),
    "UpdateTradePoint": (pb.TradePoint, pb.TradePoint, "points"),
    "AddDevice": (pb.Device, pb.Device, "devices"),
    "ActivateDevice": (pb.DeviceRef, pb.Device, "kgd"),
    "RequestDeregistration": (pb.DeviceRef, pb.Device, "lifecycle"),
    "CancelDeregistration": (pb.DeviceRef, pb.Device, "lifecycle"),
    "Deregister": (pb.DeviceRef, pb.Device, "kgd"),
    "Reregister": (pb.Reregistration, pb.Device, "lifecycle"),
    "BlockDevice": (pb.BlockRequest, pb.Device, "block"),
    "UnblockDevice": (pb.DeviceRef, pb.Device, "block"),
    "SetSubscription": (pb.SubscriptionRequest, pb.Device, "subscription"),
    "IssueToken": (pb.DeviceRef, pb.TokenIssued, "token"),
    "GetToken": (pb.DeviceRef, pb.TokenIssued, "token"),
    "ShowDevice": (pb.DeviceRef, pb.DeviceState, "show"),
    "ListDevices": (pb.DeviceFilter, pb.DeviceList, "show"),
    "ListAudit": (pb.AuditQuery, pb.AuditLog, "audit"),
    "CreateApiKey": (pb.ApiKeySpec, pb.ApiKeyCreated, "admin"),
    "RevokeApiKey": (pb.ApiKeyRef, pb.ApiKeyRef, "admin"),
    "ListApiKeys": (pb.Empty, pb.ApiKeyList, "admin"),
    "WhoAmI": (pb.Empty, pb.Caller, ""),
}
