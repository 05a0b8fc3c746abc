"""Where the cabinet's one-time codes go: the notification channel (MQTT), for the operator's
SMS or e-mail gateway to deliver, as the reference cabinet sends its SMS codes.

Topic `ofd/<web id>/cabinet/codes/<purpose>`, QoS 1, never retained; payload one JSON object:

    {"schema": 1, "id": "...", "purpose": "signup", "phone": "+7...", "email": "...",
     "code": "123456", "expires_at": "2026-12-06T06:10:00+00:00"}

The code is a secret in transit: the broker must admit only the delivering gateway to this
topic (an ACL), as DESIGN.md's trust boundaries say of every broker. Without `--mqtt-url` the
cabinet has no way to send a code, and what needs one (sign-up) is closed with a page saying so.
"""

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Protocol

from ingest.notifications import Notifier

SCHEMA_VERSION = 1


class CodeChannel(Protocol):
    def send(self, purpose: str, *, phone: str, email: str, code: str, lifetime: timedelta) -> None:
        """Hands a code over for delivery; never blocks, never raises."""


class MqttCodes:
    def __init__(self, notifier: Notifier, web_id: str) -> None:
        self._notifier = notifier
        self._web_id = web_id

    def send(self, purpose: str, *, phone: str, email: str, code: str, lifetime: timedelta) -> None:
        body = {
            "schema": SCHEMA_VERSION,
            "id": uuid.uuid4().hex,
            "purpose": purpose,
            "phone": phone,
            "email": email,
            "code": code,
            "expires_at": (datetime.now(UTC) + lifetime).isoformat(),
        }
        self._notifier.publish_message(
            f"ofd/{self._web_id}/cabinet/codes/{purpose}",
            json.dumps(body, ensure_ascii=False).encode(),
        )
