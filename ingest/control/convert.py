"""Between the control API's messages and the registry's records: statuses, roles, devices,
organizations and trade points."""

from datetime import datetime

from ledger import registry
from ledger.access import OPERATOR, ORGANIZATION, SERVICE_CENTRE
from ledger.lifecycle import DeviceStatus
from ofdproto.control.v1 import control_pb2 as pb

STATUS_TO_PB = {
    DeviceStatus.AWAITING_REGISTRATION: pb.DEVICE_STATUS_AWAITING_REGISTRATION,
    DeviceStatus.REGISTERED: pb.DEVICE_STATUS_REGISTERED,
    DeviceStatus.AWAITING_DEREGISTRATION: pb.DEVICE_STATUS_AWAITING_DEREGISTRATION,
    DeviceStatus.DEREGISTERED: pb.DEVICE_STATUS_DEREGISTERED,
}
STATUS_FROM_PB = {value: key for key, value in STATUS_TO_PB.items()}
ROLE_TO_PB = {
    OPERATOR: pb.ROLE_OPERATOR,
    ORGANIZATION: pb.ROLE_ORGANIZATION,
    SERVICE_CENTRE: pb.ROLE_SERVICE_CENTRE,
}
ROLE_FROM_PB = {value: key for key, value in ROLE_TO_PB.items()}
# With authentication off (tests of other things, benchmarks on loopback) every call is this.


def device_pb(device: registry.Device) -> pb.Device:
    return pb.Device(
        system_id=device.system_id,
        kgd_registration_number=device.kgd_registration_number,
        serial_number=device.serial_number,
        model=device.model,
        year=device.year,
        trade_point_id=device.trade_point_id,
        status=STATUS_TO_PB[device.status],
        blocked=device.blocked,
        block_message=device.block_message,
        subscription_active=device.subscription_active,
    )


def iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat()


def organization_pb(org: registry.Organization) -> pb.Organization:
    return pb.Organization(
        id=org.id,
        iin=org.iin,
        title=org.title,
        address=org.address,
        address_kz=org.address_kz,
        oked=org.oked,
        head=org.head,
    )


def point_pb(point: registry.TradePoint) -> pb.TradePoint:
    return pb.TradePoint(
        id=point.id,
        organization_id=point.organization_id,
        title=point.title,
        address=point.address,
        address_kz=point.address_kz,
        latitude=point.latitude,
        longitude=point.longitude,
    )
