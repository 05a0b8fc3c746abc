"""One error taxonomy.

Refusals carry the result code they are answered with. Sink errors (journal, state store) say
whether a retry may succeed; the device is answered 254 either way, since it retries on its own.
"""

from ledger.results import ResultCode


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
