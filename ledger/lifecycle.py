"""A device's registration lifecycle: its statuses, the actions that move it, and which statuses
are served (protocol.md, "Duties of an OFD").

    awaiting_registration --activate--> registered --request_deregistration-->
    awaiting_deregistration --deregister--> deregistered --reregister(point)-->
    awaiting_registration (at another trade point) ...

awaiting_deregistration may go back to registered (cancel_deregistration). Blocking and the
subscription are apart from the status: a registered device may be blocked or switched off.

The table is keyed by action, not by target status: two actions may lead to the same status
(activate and cancel_deregistration both end in registered) from different ones, and each must
check its own starting point under the same row lock that moves it (ledger.registry.transition).
"""

from enum import StrEnum


class DeviceStatus(StrEnum):
    AWAITING_REGISTRATION = "awaiting_registration"
    REGISTERED = "registered"
    AWAITING_DEREGISTRATION = "awaiting_deregistration"
    DEREGISTERED = "deregistered"


class Action(StrEnum):
    ACTIVATE = "activate"  # the KGD accepted the registration (or an operator's override)
    REQUEST_DEREGISTRATION = "request_deregistration"
    CANCEL_DEREGISTRATION = "cancel_deregistration"
    DEREGISTER = "deregister"
    REREGISTER = "reregister"  # the only action that may move the device to another point


# action -> (the status it starts from, the status it leads to)
TRANSITIONS: dict[Action, tuple[DeviceStatus, DeviceStatus]] = {
    Action.ACTIVATE: (DeviceStatus.AWAITING_REGISTRATION, DeviceStatus.REGISTERED),
    Action.REQUEST_DEREGISTRATION: (DeviceStatus.REGISTERED, DeviceStatus.AWAITING_DEREGISTRATION),
    Action.CANCEL_DEREGISTRATION: (DeviceStatus.AWAITING_DEREGISTRATION, DeviceStatus.REGISTERED),
    Action.DEREGISTER: (DeviceStatus.AWAITING_DEREGISTRATION, DeviceStatus.DEREGISTERED),
    Action.REREGISTER: (DeviceStatus.DEREGISTERED, DeviceStatus.AWAITING_REGISTRATION),
}

# A device in these statuses is answered; the others are refused (ledger.session says with what).
SERVED_STATUSES = frozenset({DeviceStatus.REGISTERED, DeviceStatus.AWAITING_DEREGISTRATION})
