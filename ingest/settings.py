"""One typed, frozen settings object, built once at start-up from flags and environment.

Each component gets only its own section. Secrets never have defaults baked into code: the
embedded default keeps a random one in the data directory.
"""

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ingest.limits import DEFAULT_CONTROL_AUTH_FAILURES, FailureBudget
from ingest.logs import REFUSAL_LOGS_PER_DEVICE
from ingest.notifications import MqttSettings
from ingest.tcp_server import ServerSettings
from ingest.tls import ServerTls
from ledger.fiscal import FiscalSettings
from ledger.group_commit import CommitSettings
from ledger.journal.kafka import KafkaSettings

DEFAULT_DATA_DIR = Path("data")
DEFAULT_TCP_PORT = 7777
DEFAULT_CONTROL_PORT = 7778
DEFAULT_GRPC_PORT = 7780
MIN_SECRET_BYTES = 16
SECRET_BYTES = 32
DEFAULT_GATEWAY_ID = "gw1"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    # None: start the embedded PostgreSQL (pgserver) in data_dir/pg.
    database_url: str | None
    gateway_id: str
    server: ServerSettings
    # The operator surfaces listen apart from the devices' server.host: loopback unless asked.
    control_host: str
    control_port: int
    commit: CommitSettings
    fiscal: FiscalSettings
    # Prometheus /metrics on metrics_host: None serves none, 0 a port the kernel picks.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # TLS (from PEM files) for the control API, mutual when a client CA is given, and for the
    # gRPC device ingest: None speaks plaintext, for loopback or a private network only.
    control_tls: ServerTls | None = None
    grpc_tls: ServerTls | None = None
    # None: the local journal in data_dir; set: the Kafka topic it names (ledger/journal/kafka.py).
    kafka: KafkaSettings | None = None
    # gRPC device ingest on server.host, apart from the control API (which devices must not
    # reach): None serves none, 0 a port the kernel picks.
    grpc_port: int | None = None
    # Control API callers present an API key (ledger/access.py); off only where every
    # caller is trusted (tests of other components). `ofd serve` always has it on.
    control_auth: bool = True
    # Failed control keys one address may have per window before it is refused until the
    # window ends (ingest/limits.py): keys are 256-bit, so this is about noise and load.
    control_auth_failures: FailureBudget = DEFAULT_CONTROL_AUTH_FAILURES
    # MQTT notifications (ingest/notifications.py): None publishes none.
    mqtt_url: str | None = None
    # A device silent this long is reported offline (over MQTT and in the cabinet); well
    # before the 72 hours after which its offline queue blocks it.
    offline_alert_seconds: float = 6 * 3600.0
    # How often the offline / long-shift scan and the cabinet's scan (ingest/notice_scan.py)
    # run.
    alert_scan_seconds: float = 60.0
    # A subscription term ending within this many days is noticed in the cabinet.
    subscription_ending_days: int = 7
    # "debug" adds one line per answered request; "info" logs refusals and failures only.
    log_level: str = "info"
    # Refusal log lines one device may cause per minute (ingest/logs.LogCap).
    refusal_logs_per_device: int = REFUSAL_LOGS_PER_DEVICE

    def __post_init__(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")
        self.mqtt()  # a bad MQTT URL is refused here, before any database is opened

    def mqtt(self) -> MqttSettings | None:
        """The notifier's section of these settings (None: no notifications)."""
        if self.mqtt_url is None:
            return None
        return MqttSettings.from_url(self.mqtt_url, self.gateway_id)

    @property
    def journal_dir(self) -> Path:
        # Each gateway process owns its journal (its own group commit, DESIGN.md item 7).
        return self.data_dir / "journal" / self.gateway_id

    @property
    def spool_dir(self) -> Path:
        # Where a Kafka outage is spooled (--kafka-outage spool); one writer per gateway, too.
        return self.data_dir / "spool" / self.gateway_id


def _parse_secret(secret_hex: str, source: str) -> bytes:
    try:
        secret = bytes.fromhex(secret_hex.strip())
    except ValueError as err:
        raise ValueError(f"the secret ({source}) must be hexadecimal") from err
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the secret ({source}) must be at least {MIN_SECRET_BYTES} bytes"
            f" ({2 * MIN_SECRET_BYTES} hex digits)"
        )
    return secret


def load_secret(data_dir: Path, secret_hex: str | None, secret_file: Path | None = None) -> bytes:
    """The server secret for fiscal signs and tokens: from a file (which does not show in
    /proc like a flag or an environment variable does), given as hex, or kept in
    data_dir/secret. Gateways that share devices must share it."""
    if secret_file is not None:
        try:
            text = secret_file.read_text()
        except OSError as err:
            raise ValueError(f"cannot read --secret-file {secret_file}: {err.strerror}") from err
        return _parse_secret(text, f"in {secret_file}")
    if secret_hex:
        return _parse_secret(secret_hex, "--secret-hex")
    path = data_dir / "secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(SECRET_BYTES))
    return bytes.fromhex(path.read_text().strip())


def default_gateway_id() -> str:
    return os.environ.get("OFD_GATEWAY_ID") or DEFAULT_GATEWAY_ID
