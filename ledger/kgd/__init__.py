"""The tax authority (KGD): what the OFD sends it, behind one interface.

Two duties (protocol.md, "Duties of an OFD"): registration applications (a register becomes
registered only when the KGD accepts one) and every fiscal document, passed on unchanged within
minutes. `Kgd` is the interface both go through; `ledger.kgd.http` is its one real
implementation, over the HTTP/JSON wire described in proto/kgd/openapi.yaml, and
simulators/kgd.py is a KGD that speaks that wire for tests, the demo and benchmarks.

Both calls are idempotent on the KGD's side, which is what makes the OFD's retries safe:
an application by its `application_id`, a document by its `document_id` (the document's
identity, ledger/fiscal.py). A resend after a lost answer is acknowledged again and stored once.

`applications` files and watches applications (durable in PostgreSQL); `forwarder` reads the
journal and forwards documents with a durable position per journal source.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from ledger.errors import OfdError


class ApplicationKind(StrEnum):
    REGISTRATION = "registration"
    DEREGISTRATION = "deregistration"
    REREGISTRATION = "reregistration"


class Decision(StrEnum):
    PENDING = "pending"  # the KGD holds the application and has not decided yet
    ACCEPTED = "accepted"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Application:
    """What an application says: `payload` is the register, its organization and its trade
    point (with coordinates) as they stood when it was filed (applications.snapshot)."""

    application_id: str
    kind: ApplicationKind
    system_id: int
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ApplicationStatus:
    application_id: str
    decision: Decision
    reason: str = ""  # the KGD's reason for a refusal


@dataclass(frozen=True, slots=True)
class Document:
    """One journaled document as the KGD gets it: the body the device sent, byte for byte,
    and the OFD's answer fields (never a token: ledger/wire.py)."""

    document_id: str  # the identity: the KGD's idempotency key
    device_id: int
    protocol_version: int
    command: int
    received_at_us: int  # when the gateway received it
    fiscal_sign: str
    offline: bool
    body: bytes  # the request frame's protobuf body, as received


class Ack(StrEnum):
    ACCEPTED = "accepted"  # stored now
    DUPLICATE = "duplicate"  # the KGD already held it (a resend): stored once all the same


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    document_id: str
    ack: Ack


class KgdError(OfdError):
    """A call to the KGD that did not get its answer. `retriable`: the KGD was unreachable, slow
    or overloaded (a later try may succeed); otherwise it refused the request itself (the
    reason is in the message), which a person may have to look at. The forwarder retries both,
    since no document may be skipped; the difference is what it logs and counts."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class Kgd(Protocol):
    """The KGD as the OFD sees it. Every call has a timeout; failures raise KgdError."""

    async def submit_application(self, application: Application) -> ApplicationStatus:
        """Files the application (again, if it was: the same id is the same application) and
        returns what the KGD says of it now, usually PENDING."""

    async def application_status(self, application_id: str) -> ApplicationStatus:
        """The KGD's decision on an application filed earlier."""

    async def forward_documents(self, documents: Sequence[Document]) -> list[Acknowledgement]:
        """Hands a batch over; returns one acknowledgement per document, or raises having
        stored nothing the OFD may count on (it resends the whole batch)."""

    async def close(self) -> None: ...
