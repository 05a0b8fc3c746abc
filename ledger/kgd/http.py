"""The KGD over HTTP/JSON (proto/kgd/openapi.yaml), with aiohttp.

aiohttp rather than httpx: it is the asyncio client with a pooled keep-alive connector and
per-request timeouts, and the same library serves the simulated KGD (simulators/kgd.py), so both
ends of the wire share one HTTP implementation the tests exercise. One session per adapter.

Answers map onto the error taxonomy: a connection failure, a timeout, 429 and 5xx are
retriable KgdErrors; any other non-2xx is a refusal (not retriable), its reason in the message.
"""

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from ledger.kgd import (
    Ack,
    Acknowledgement,
    Application,
    ApplicationStatus,
    Decision,
    Document,
    KgdError,
)

DEFAULT_TIMEOUT = 10.0  # seconds for one call, connect included
MAX_CONNECTIONS = 8
MAX_ERROR_TEXT = 300  # characters of a KGD error answer kept in a message


@dataclass(frozen=True, slots=True)
class KgdSettings:
    url: str  # base URL, e.g. http://127.0.0.1:7790
    ofd_id: str = "ofd-gateway"  # the X-OFD-Id header: who the OFD is to the KGD
    token: str = ""  # a bearer token, when the KGD wants one
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"KGD URL must be http:// or https://, not {self.url!r}")
        if not self.timeout > 0:
            raise ValueError("KGD timeout must be positive")


def document_json(document: Document) -> dict[str, Any]:
    return {
        "document_id": document.document_id,
        "device_id": document.device_id,
        "protocol_version": document.protocol_version,
        "command": document.command,
        "received_at_us": document.received_at_us,
        "fiscal_sign": document.fiscal_sign,
        "offline": document.offline,
        "body": base64.b64encode(document.body).decode("ascii"),
    }


def application_json(application: Application) -> dict[str, Any]:
    return {
        **application.payload,
        "application_id": application.application_id,
        "kind": application.kind.value,
        "system_id": application.system_id,
    }


def _status(answer: Any) -> ApplicationStatus:
    try:
        return ApplicationStatus(
            str(answer["application_id"]),
            Decision(answer["status"]),
            str(answer.get("reason") or ""),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise KgdError(f"KGD answered an application with {answer!r}", retriable=True) from err


class HttpKgd:
    """`Kgd` over HTTP. Create it inside the event loop that uses it; `close` when done."""

    def __init__(self, settings: KgdSettings) -> None:
        self._settings = settings
        self._base = settings.url.rstrip("/")
        headers = {"X-OFD-Id": settings.ofd_id}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
        )

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self._base}{path}"
        try:
            async with self._session.request(method, url, json=body) as response:
                if response.status == 200:
                    return await response.json()
                text = (await response.text())[:MAX_ERROR_TEXT]
                retriable = response.status == 429 or response.status >= 500
                raise KgdError(
                    f"KGD {method} {path}: {response.status} {text}", retriable=retriable
                )
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            # ValueError: an answer that is not JSON (a proxy's error page): try again later.
            raise KgdError(f"KGD {method} {path}: {err!r}", retriable=True) from err

    async def submit_application(self, application: Application) -> ApplicationStatus:
        return _status(await self._call("POST", "/v1/applications", application_json(application)))

    async def application_status(self, application_id: str) -> ApplicationStatus:
        return _status(await self._call("GET", f"/v1/applications/{application_id}"))

    async def forward_documents(self, documents: Sequence[Document]) -> list[Acknowledgement]:
        answer = await self._call(
            "POST", "/v1/documents", {"documents": [document_json(d) for d in documents]}
        )
        try:
            acks = [
                Acknowledgement(str(a["document_id"]), Ack(a["status"]))
                for a in answer["acknowledgements"]
            ]
        except (KeyError, TypeError, ValueError) as err:
            raise KgdError(f"KGD answered a batch with {answer!r:.300}", retriable=True) from err
        return acks

    async def close(self) -> None:
        await self._session.close()
