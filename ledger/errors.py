"""One error taxonomy.

Refusals carry the result code they are answered with. Sink errors (journal, state store) say
whether a retry may succeed; the device is answered 254 either way, since it retries on its own.
Control requests that cannot be carried out are `RegistryError`s, one subclass per kind, each
naming the gRPC status the edge answers with (by name: the domain does not import gRPC).
"""

from ledger.wire import ResultCode


class OfdError(Exception):
    """Base of every error this project raises on purpose."""


class Refusal(OfdError):
    """A request answered with a non-OK result code; nothing is written."""

    def __init__(self, code: ResultCode, text: str) -> None:
        super().__init__(f"{code.name}: {text}")
        self.code = code
        self.text = text


class SinkError(OfdError):
    """A durable write failed (journal or state store)."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class StateConflict(OfdError):
    """The device's state changed under us (another request or another gateway won)."""


class RegistryError(OfdError):
    """A control request that cannot be carried out; `status` names the gRPC status code."""

    status = "INVALID_ARGUMENT"


class InvalidRequest(RegistryError):
    status = "INVALID_ARGUMENT"


class NotFound(RegistryError):
    status = "NOT_FOUND"


class AlreadyExists(RegistryError):
    status = "ALREADY_EXISTS"


class PreconditionFailed(RegistryError):
    """The request is valid but the device (or key) is not in a state that allows it."""

    status = "FAILED_PRECONDITION"


class PermissionDenied(RegistryError):
    status = "PERMISSION_DENIED"


class Unauthenticated(RegistryError):
    status = "UNAUTHENTICATED"


class TooManyFailures(RegistryError):
    """The caller's address spent its budget of failed attempts; it may try again later."""

    status = "RESOURCE_EXHAUSTED"
