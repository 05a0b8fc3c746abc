"""`ofd web`'s one settings object, validated once at start-up."""

from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from ingest.limits import FailureBudget
from ingest.notifications import MqttSettings
from ledger.cabinet_sessions import SessionPolicy
from ledger.receipt_check import CHECK_PATH, DEFAULT_WEB_PORT
from ledger.warehouse.reports import ReportLimits

# Failed logins one address may have per minute; past it the address is refused for the rest of
# the minute before any password is checked (each check costs scrypt's 16 MiB and ~50 ms).
DEFAULT_LOGIN_FAILURES = FailureBudget(failures=10, window_seconds=60.0)
# Checks of receipts that match nothing, per address and minute: an honest customer scans a
# receipt that exists; a stream of misses is someone guessing signs.
DEFAULT_CHECK_MISSES = FailureBudget(failures=60, window_seconds=60.0)
# Sign-ups one address may start per hour: each costs a scrypt hash and a message to a phone.
DEFAULT_SIGNUP_STARTS = FailureBudget(failures=5, window_seconds=3600.0)

Network = IPv4Network | IPv6Network
WEB_ID = "web"  # the cabinet's name in MQTT topics and client ids


@dataclass(frozen=True, slots=True)
class WebSettings:
    data_dir: Path
    # None: the embedded PostgreSQL of DATA_DIR/pg (the one `ofd serve` starts).
    database_url: str | None
    host: str = "127.0.0.1"
    port: int = DEFAULT_WEB_PORT
    # None: the warehouse through the `ofd load` query service of data_dir (chDB admits one
    # process per directory); set: a ClickHouse server.
    clickhouse_url: str | None = None
    # The public address of the check page, as printed in QR codes ("" : this server's own).
    qr_base_url: str = ""
    # Secure cookies: on wherever the cabinet is reached over TLS (any non-loopback use).
    secure_cookie: bool = False
    sessions: SessionPolicy = field(default_factory=SessionPolicy)
    login_failures: FailureBudget = DEFAULT_LOGIN_FAILURES
    check_misses: FailureBudget = DEFAULT_CHECK_MISSES
    signup_starts: FailureBudget = DEFAULT_SIGNUP_STARTS
    # The notification channel one-time codes go out on (cabinet/codes.py), mqtt://host:1883;
    # None: no codes can be sent, and sign-up is closed.
    mqtt_url: str | None = None
    # Proxies whose X-Forwarded-For names the client (cabinet/client_address.py); none: the
    # limits count the TCP peer and the header is ignored.
    trusted_proxies: tuple[Network, ...] = ()
    # How long after its printed time a receipt not yet in the warehouse is "not yet received"
    # rather than "no such receipt": offline registers send theirs when they reconnect.
    check_pending: timedelta = timedelta(minutes=15)
    report_limits: ReportLimits = field(default_factory=ReportLimits)
    # Warehouse reads at once (each in a worker thread); more wait.
    warehouse_concurrency: int = 4
    # Documents an archive download reads from the warehouse at once, and so what it holds in
    # memory however long its period (a receipt in full is some kilobytes).
    archive_batch: int = 200
    # Password checks at once (scrypt: 16 MiB each, tens of ms); more wait, up to kdf_queue.
    kdf_concurrency: int = 2
    kdf_queue: int = 32
    # Largest request body: forms are small.
    max_body: int = 64 * 1024

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"web port {self.port} is not a port")
        if min(self.warehouse_concurrency, self.kdf_concurrency, self.kdf_queue) < 1:
            raise ValueError("concurrency limits must be at least 1")
        if self.archive_batch < 1:
            raise ValueError("an archive batch is at least 1 document")
        self.mqtt()  # a bad MQTT URL is refused here, before any database is opened

    def mqtt(self) -> MqttSettings | None:
        return None if self.mqtt_url is None else MqttSettings.from_url(self.mqtt_url, WEB_ID)

    def check_url(self, port: int) -> str:
        """The QR base URL: the setting, else this server's own check page on `port`."""
        if self.qr_base_url:
            return self.qr_base_url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}{CHECK_PATH}"
