"""One typed settings object, read from the environment once at start-up.

Every process (ingress, worker, beat, CLI) builds its settings through
``get_settings()``; a missing or malformed value raises ``ConfigError`` whose
message is one line naming the variable, so the process can exit before it
serves anything half-configured.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@localhost:5432/clerk_sync"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_CLERK_API_URL = "https://api.clerk.com"


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message is one line."""


@dataclass(frozen=True)
class Settings:
    """Everything clerk-sync reads from its environment, validated."""

    webhook_secrets: tuple[str, ...] = ()
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    clerk_secret_key: str | None = None
    clerk_api_url: str = DEFAULT_CLERK_API_URL
    clerk_instance_id: str | None = None
    log_format: str = "json"
    log_level: str = "INFO"
    max_body_bytes: int = 1024 * 1024
    deleted_user_pii: str = "keep"
    # Retries: attempts before an event is dead, and the first backoff step.
    max_attempts: int = 8
    retry_base_seconds: float = 30.0
    # A `pending` event untouched this long is presumed lost and re-enqueued.
    stale_pending_seconds: int = 60
    # A queued message with no `webhook_events` row after this long is presumed lost in Redis.
    lost_message_seconds: int = 120
    sweep_interval_seconds: float = 15.0
    payload_retention_days: int = 30
    reconcile_interval_seconds: int = 0
    queue_name: str = "clerk-events"
    metrics_port: int = 9808
    # Worker connections give up waiting for a lock / a statement after these (transient failure).
    db_lock_timeout_seconds: float = 10.0
    db_statement_timeout_seconds: float = 30.0
    environment: str = "development"

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL with the psycopg 3 driver named, as SQLAlchemy needs it."""
        return normalize_database_url(self.database_url)

    def require_webhook_secrets(self) -> tuple[str, ...]:
        if not self.webhook_secrets:
            raise ConfigError("CLERK_WEBHOOK_SECRET is not set: the ingress cannot verify webhooks")
        return self.webhook_secrets

    def require_clerk_secret_key(self) -> str:
        if not self.clerk_secret_key:
            raise ConfigError("CLERK_SECRET_KEY is not set: backfill and reconcile need the Clerk Backend API key")
        return self.clerk_secret_key


def normalize_database_url(url: str) -> str:
    """Name the psycopg 3 driver explicitly; `postgresql://` would pick psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _parse_secrets(raw: str) -> tuple[str, ...]:
    # Imported here so that the CLI's --help does not pay for svix.
    from svix.webhooks import Webhook

    secrets = tuple(part for part in re.split(r"[\s,]+", raw.strip()) if part)
    for secret in secrets:
        if not secret.startswith("whsec_"):
            raise ConfigError("CLERK_WEBHOOK_SECRET: each secret must start with 'whsec_'")
        # svix's own decoder silently drops non-base64 characters; a typo must not pass.
        if not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", secret[len("whsec_") :]):
            raise ConfigError("CLERK_WEBHOOK_SECRET: a secret is not valid base64 after 'whsec_'")
        try:
            Webhook(secret)
        except Exception as exc:  # binascii.Error, ValueError, EmptyWebhookSecretError
            raise ConfigError(
                f"CLERK_WEBHOOK_SECRET: a secret is not valid base64 after 'whsec_' ({type(exc).__name__})"
            ) from None
    return secrets


def _parse_url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    try:
        parts = urlsplit(raw)
        scheme_ok = parts.scheme in schemes
        # A unix-socket URL has no host; every other one must name a host.
        host_ok = bool(parts.hostname) or "socket" in parts.scheme or "host=" in parts.query
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(f"{name}: not a valid URL") from None
    if not scheme_ok:
        raise ConfigError(f"{name}: scheme must be one of {', '.join(schemes)}")
    if not host_ok and parts.scheme not in ("redis+socket", "unix"):
        raise ConfigError(f"{name}: URL names no host")
    return raw


def _parse_int(name: str, raw: str, *, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _parse_float(name: str, raw: str, *, minimum: float = 0.0) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _parse_choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}: must be one of {', '.join(choices)}, got {raw!r}")
    return value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build and validate Settings from an environment mapping."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(name)
        return value if value not in (None, "") else None

    default_format = "console" if sys.stdout.isatty() else "json"
    level = (get("LOG_LEVEL") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"LOG_LEVEL: must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}")
    api_key = get("CLERK_SECRET_KEY")
    if api_key is not None and not api_key.startswith("sk_"):
        raise ConfigError("CLERK_SECRET_KEY: must start with 'sk_'")

    return Settings(
        webhook_secrets=_parse_secrets(get("CLERK_WEBHOOK_SECRET") or ""),
        database_url=_parse_url(
            "DATABASE_URL",
            get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            ("postgresql", "postgresql+psycopg", "postgres"),
        ),
        redis_url=_parse_url("REDIS_URL", get("REDIS_URL") or DEFAULT_REDIS_URL, ("redis", "rediss", "redis+socket")),
        clerk_secret_key=api_key,
        clerk_api_url=_parse_url(
            "CLERK_API_URL", get("CLERK_API_URL") or DEFAULT_CLERK_API_URL, ("http", "https")
        ).rstrip("/"),
        clerk_instance_id=get("CLERK_INSTANCE_ID"),
        log_format=_parse_choice("LOG_FORMAT", get("LOG_FORMAT") or default_format, ("json", "console")),
        log_level=level,
        max_body_bytes=_parse_int("MAX_BODY_BYTES", get("MAX_BODY_BYTES") or "1048576", minimum=1),
        deleted_user_pii=_parse_choice("DELETED_USER_PII", get("DELETED_USER_PII") or "keep", ("keep", "scrub")),
        max_attempts=_parse_int("RETRY_MAX_ATTEMPTS", get("RETRY_MAX_ATTEMPTS") or "8", minimum=1),
        retry_base_seconds=_parse_float("RETRY_BASE_SECONDS", get("RETRY_BASE_SECONDS") or "30", minimum=0.0),
        stale_pending_seconds=_parse_int("STALE_PENDING_SECONDS", get("STALE_PENDING_SECONDS") or "60", minimum=1),
        lost_message_seconds=_parse_int("LOST_MESSAGE_SECONDS", get("LOST_MESSAGE_SECONDS") or "120", minimum=1),
        sweep_interval_seconds=_parse_float(
            "SWEEP_INTERVAL_SECONDS", get("SWEEP_INTERVAL_SECONDS") or "15", minimum=0.1
        ),
        payload_retention_days=_parse_int("PAYLOAD_RETENTION_DAYS", get("PAYLOAD_RETENTION_DAYS") or "30", minimum=0),
        reconcile_interval_seconds=_parse_int(
            "RECONCILE_INTERVAL_SECONDS", get("RECONCILE_INTERVAL_SECONDS") or "0", minimum=0
        ),
        queue_name=get("CLERK_SYNC_QUEUE") or "clerk-events",
        metrics_port=_parse_int("METRICS_PORT", get("METRICS_PORT") or "9808", minimum=0),
        db_lock_timeout_seconds=_parse_float(
            "DB_LOCK_TIMEOUT_SECONDS", get("DB_LOCK_TIMEOUT_SECONDS") or "10", minimum=0.001
        ),
        db_statement_timeout_seconds=_parse_float(
            "DB_STATEMENT_TIMEOUT_SECONDS", get("DB_STATEMENT_TIMEOUT_SECONDS") or "30", minimum=0.001
        ),
        environment=_parse_choice(
            "CLERK_SYNC_ENV", get("CLERK_SYNC_ENV") or "development", ("development", "production", "test")
        ),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once; tests call ``get_settings.cache_clear()``."""
    return load_settings()


def exit_on_config_error(exc: ConfigError) -> None:
    """Print the one-line reason and stop the whole process with a non-zero code."""
    print(f"clerk-sync: configuration error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(3)
