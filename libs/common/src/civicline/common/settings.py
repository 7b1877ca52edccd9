"""Configuration from the environment (12-factor); every secret can also come from a file.

`Settings.from_env` takes a mapping so tests pass a plain dict. A secret `NAME` may be given
as `NAME_FILE`, a path whose contents (stripped) are the value — how Kubernetes mounts secrets.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/civicline"
DEFAULT_GRAPH_API_BASE_URL = "http://127.0.0.1:8090"
DEFAULT_GRAPH_API_VERSION = "v25.0"

SECRET_NAMES = frozenset(
    {
        "WHATSAPP_APP_SECRET",
        "WHATSAPP_VERIFY_TOKEN",
        "WHATSAPP_ACCESS_TOKEN",
        "CIVICLINE_AMQP_URL",
        "CIVICLINE_DATABASE_URL",
        "AUDIT_SIGNING_KEY",
        "AUDIT_PSEUDONYM_KEY",
        "AUDIT_MASTER_KEY",
        "CAMPAIGN_OPERATOR_TOKENS",
    }
)


class SettingsError(ValueError):
    """The environment does not describe a runnable service; the message lists every problem."""


def redact_url(url: str) -> str:
    """The URL with its password replaced, safe for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a civicline process can be configured with. Secrets never appear in repr."""

    app_secrets: tuple[str, ...] = field(default=(), repr=False)
    verify_token: str = field(default="", repr=False)
    access_token: str = field(default="", repr=False)
    graph_api_base_url: str = DEFAULT_GRAPH_API_BASE_URL
    graph_api_version: str = DEFAULT_GRAPH_API_VERSION
    amqp_url: str = field(default=DEFAULT_AMQP_URL, repr=False)
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    http_host: str = "127.0.0.1"
    ingress_port: int = 8080
    router_port: int = 8081
    responder_port: int = 8082
    audit_port: int = 8083
    max_body_bytes: int = 4 * 1024 * 1024
    body_read_timeout: float = 10.0
    publish_timeout: float = 5.0
    prefetch: int = 64
    shutdown_timeout: float = 20.0
    # Seconds a consumer holds a message through an outage before it parks it in a delay
    # queue: below RabbitMQ's consumer_timeout (30 min by default).
    park_after: float = 600.0
    responder_max_retries: int = 25
    responder_send_rate: int = 80
    router_batch_size: int = 100
    router_batch_linger: float = 0.005
    # Unique citizens who may get a business-initiated (campaign) message in any rolling 24 h;
    # None = unlimited (Meta's highest tier).
    responder_messaging_tier: int | None = 1000
    # The share of the send rate campaigns leave to replies, so citizens' questions are
    # answered during a broadcast.
    responder_reply_reserve: float = 0.2
    responder_broadcast_concurrency: int = 256
    campaign_operator_tokens: tuple[str, ...] = field(default=(), repr=False)
    topics_path: str | None = None
    audit_batch_size: int = 256
    audit_batch_linger: float = 0.02
    audit_signing_key: str = field(default="", repr=False)
    audit_checkpoint_interval: float = 60.0
    audit_checkpoint_size: int = 10_000
    audit_checkpoint_dir: str | None = None
    audit_pseudonym_key: str = field(default="", repr=False)
    audit_master_key: str = field(default="", repr=False)
    router_rules_path: str | None = None
    responder_catalog_path: str | None = None
    log_level: str = "info"
    service_name: str = "civicline"

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        require: Iterable[str] = (),
        service_name: str = "civicline",
    ) -> Settings:
        """Build settings from `env` (default: os.environ), failing with every problem at once."""
        source = dict(os.environ if env is None else env)
        problems: list[str] = []
        values: dict[str, str] = {}
        for name in _ALL_NAMES:
            value = _read(source, name, problems)
            if value is not None:
                values[name] = value
        for name in require:
            if not values.get(name):
                hint = f" (or {name}_FILE)" if name in SECRET_NAMES else ""
                problems.append(f"{name}{hint} is required")

        def integer(name: str, default: int) -> int:
            raw = values.get(name)
            if raw is None:
                return default
            try:
                number = int(raw)
            except ValueError:
                problems.append(f"{name} must be an integer, got {raw!r}")
                return default
            if number <= 0:
                problems.append(f"{name} must be positive, got {number}")
            return number

        def seconds(name: str, default: float) -> float:
            raw = values.get(name)
            if raw is None:
                return default
            try:
                number = float(raw)
            except ValueError:
                problems.append(f"{name} must be a number of seconds, got {raw!r}")
                return default
            if number <= 0:
                problems.append(f"{name} must be positive, got {number}")
            return number

        settings = cls(
            app_secrets=tuple(
                s.strip() for s in values.get("WHATSAPP_APP_SECRET", "").split(",") if s.strip()
            ),
            verify_token=values.get("WHATSAPP_VERIFY_TOKEN", ""),
            access_token=values.get("WHATSAPP_ACCESS_TOKEN", ""),
            graph_api_base_url=values.get("GRAPH_API_BASE_URL", DEFAULT_GRAPH_API_BASE_URL).rstrip(
                "/"
            ),
            graph_api_version=values.get("GRAPH_API_VERSION", DEFAULT_GRAPH_API_VERSION),
            amqp_url=values.get("CIVICLINE_AMQP_URL", DEFAULT_AMQP_URL),
            database_url=values.get("CIVICLINE_DATABASE_URL", DEFAULT_DATABASE_URL),
            http_host=values.get("CIVICLINE_HTTP_HOST", "127.0.0.1"),
            ingress_port=integer("INGRESS_PORT", 8080),
            router_port=integer("ROUTER_PORT", 8081),
            responder_port=integer("RESPONDER_PORT", 8082),
            audit_port=integer("AUDIT_PORT", 8083),
            max_body_bytes=integer("INGRESS_MAX_BODY_BYTES", 4 * 1024 * 1024),
            body_read_timeout=seconds("INGRESS_BODY_TIMEOUT", 10.0),
            publish_timeout=seconds("CIVICLINE_PUBLISH_TIMEOUT", 5.0),
            prefetch=integer("CIVICLINE_PREFETCH", 64),
            shutdown_timeout=seconds("CIVICLINE_SHUTDOWN_TIMEOUT", 20.0),
            park_after=seconds("CIVICLINE_PARK_AFTER", 600.0),
            responder_max_retries=integer("RESPONDER_MAX_RETRIES", 25),
            responder_send_rate=integer("RESPONDER_SEND_RATE", 80),
            router_batch_size=integer("ROUTER_BATCH_SIZE", 100),
            router_batch_linger=seconds("ROUTER_BATCH_LINGER", 0.005),
            responder_messaging_tier=_tier(values.get("RESPONDER_MESSAGING_TIER"), problems),
            responder_reply_reserve=_share(values.get("RESPONDER_REPLY_RESERVE"), problems),
            responder_broadcast_concurrency=integer("RESPONDER_BROADCAST_CONCURRENCY", 256),
            campaign_operator_tokens=tuple(
                t.strip()
                for t in values.get("CAMPAIGN_OPERATOR_TOKENS", "").replace("\n", ",").split(",")
                if t.strip()
            ),
            topics_path=values.get("CIVICLINE_TOPICS_PATH") or None,
            audit_batch_size=integer("AUDIT_BATCH_SIZE", 256),
            audit_batch_linger=seconds("AUDIT_BATCH_LINGER", 0.02),
            audit_signing_key=values.get("AUDIT_SIGNING_KEY", ""),
            audit_checkpoint_interval=seconds("AUDIT_CHECKPOINT_INTERVAL", 60.0),
            audit_checkpoint_size=integer("AUDIT_CHECKPOINT_SIZE", 10_000),
            audit_checkpoint_dir=values.get("AUDIT_CHECKPOINT_DIR") or None,
            audit_pseudonym_key=values.get("AUDIT_PSEUDONYM_KEY", ""),
            audit_master_key=values.get("AUDIT_MASTER_KEY", ""),
            router_rules_path=values.get("ROUTER_RULES_PATH") or None,
            responder_catalog_path=values.get("RESPONDER_CATALOG_PATH") or None,
            log_level=values.get("CIVICLINE_LOG_LEVEL", "info").lower(),
            service_name=service_name,
        )
        if settings.log_level not in {"debug", "info", "warning", "error"}:
            problems.append(
                "CIVICLINE_LOG_LEVEL must be debug, info, warning or error, "
                f"got {settings.log_level!r}"
            )
        if settings.responder_send_rate > 1000:
            # Meta's highest per-number throughput tier (reference §6).
            problems.append(
                "RESPONDER_SEND_RATE is at most 1000 messages/s, "
                f"got {settings.responder_send_rate}"
            )
        if problems:
            raise SettingsError("invalid configuration:\n  - " + "\n  - ".join(problems))
        return settings


# Every variable read, in the order of the README's table.
_ALL_NAMES = (
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_VERIFY_TOKEN",
    "WHATSAPP_ACCESS_TOKEN",
    "GRAPH_API_BASE_URL",
    "GRAPH_API_VERSION",
    "CIVICLINE_AMQP_URL",
    "CIVICLINE_DATABASE_URL",
    "CIVICLINE_HTTP_HOST",
    "INGRESS_PORT",
    "ROUTER_PORT",
    "RESPONDER_PORT",
    "AUDIT_PORT",
    "INGRESS_MAX_BODY_BYTES",
    "INGRESS_BODY_TIMEOUT",
    "CIVICLINE_PUBLISH_TIMEOUT",
    "CIVICLINE_PREFETCH",
    "CIVICLINE_SHUTDOWN_TIMEOUT",
    "CIVICLINE_PARK_AFTER",
    "RESPONDER_MAX_RETRIES",
    "RESPONDER_SEND_RATE",
    "RESPONDER_MESSAGING_TIER",
    "RESPONDER_REPLY_RESERVE",
    "RESPONDER_BROADCAST_CONCURRENCY",
    "CAMPAIGN_OPERATOR_TOKENS",
    "CIVICLINE_TOPICS_PATH",
    "AUDIT_BATCH_SIZE",
    "AUDIT_BATCH_LINGER",
    "AUDIT_SIGNING_KEY",
    "AUDIT_CHECKPOINT_INTERVAL",
    "AUDIT_CHECKPOINT_SIZE",
    "AUDIT_CHECKPOINT_DIR",
    "AUDIT_PSEUDONYM_KEY",
    "AUDIT_MASTER_KEY",
    "ROUTER_RULES_PATH",
    "RESPONDER_CATALOG_PATH",
    "CIVICLINE_LOG_LEVEL",
)


def _tier(raw: str | None, problems: list[str]) -> int | None:
    if raw is None:
        return 1000
    if raw.strip().lower() == "unlimited":
        return None
    try:
        tier = int(raw)
    except ValueError:
        problems.append(f"RESPONDER_MESSAGING_TIER must be a number or 'unlimited', got {raw!r}")
        return 1000
    if tier <= 0:
        problems.append(f"RESPONDER_MESSAGING_TIER must be positive, got {tier}")
    return tier


def _share(raw: str | None, problems: list[str]) -> float:
    if raw is None:
        return 0.2
    try:
        share = float(raw)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 0.9:
        problems.append(f"RESPONDER_REPLY_RESERVE must be a share from 0 to 0.9, got {raw!r}")
        return 0.2
    return share


def _read(source: Mapping[str, str], name: str, problems: list[str]) -> str | None:
    # An empty value means unset, as it does to most 12-factor tooling (and to Kubernetes
    # manifests that template a variable out).
    direct = source.get(name) or None
    file_name = (source.get(f"{name}_FILE") or None) if name in SECRET_NAMES else None
    if direct and file_name:
        problems.append(f"set either {name} or {name}_FILE, not both")
        return direct
    if file_name:
        try:
            return Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(f"{name}_FILE={file_name!r} cannot be read: {exc.strerror}")
            return None
    return direct
