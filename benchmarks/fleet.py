"""Registers a benchmark fleet through a gateway's control API, as an operator would.

One organization and trade point, then per device: add, activate (registered at KGD), issue a
token. The KGD numbers follow `benchmarks.bodies.kgd_number`, so the gateway's QR URLs have the
length the echo floor's precomputed answer has.
"""

from benchmarks.bodies import DeviceKey, kgd_number
from ingest.control.client import ControlClient
from ofdproto.control.v1 import control_pb2 as pb

BENCH_IIN = "180240012342"


def register_devices(control: str, count: int, key: str | None = None) -> tuple[DeviceKey, ...]:
    """`count` registered devices with their first tokens; blocking (gRPC). `key` (else
    OFD_CONTROL_KEY) authenticates the calls."""
    client = ControlClient(control, key)
    try:
        org = client.call(
            "AddOrganization",
            pb.Organization(iin=BENCH_IIN, title="ТОО Бенч", address="Алматы", address_kz="Алматы",
                            oked="47111"),
        )  # fmt: skip
        point = client.call(
            "AddTradePoint",
            pb.TradePoint(organization_id=org.id, title="Дүкен 1", address="Абай 1",
                          address_kz="Абай 1"),
        )  # fmt: skip
        keys = []
        for index in range(1, count + 1):
            device = client.call(
                "AddDevice",
                pb.Device(kgd_registration_number=kgd_number(index), serial_number=f"SN-{index}",
                          model="Bench KKM", year=2025, trade_point_id=point.id),
            )  # fmt: skip
            client.call("ActivateDevice", pb.DeviceRef(system_id=device.system_id))
            issued = client.call("IssueToken", pb.DeviceRef(system_id=device.system_id))
            keys.append(DeviceKey(device.system_id, issued.token))
        return tuple(keys)
    finally:
        client.close()
