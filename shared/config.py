"""One typed settings object, read from the environment once at start-up.

Every variable clerk-sync reads is one row of ``VARIABLES``: its name, the ``Settings``
field it fills, its default and its parser. That table is the only place a default is
written; ``python -m shared.config`` prints it as the reference in docs/configuration.md.
Every process (ingress, worker, beat, console, CLI) builds its settings through
``get_settings()``; a missing or malformed value raises ``ConfigError`` whose message is
one line naming the variable, so the process exits before it serves anything
half-configured.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl, unquote_to_bytes, urlsplit

from shared.timings import MINIMUM_BOUND_SECONDS, RecoveryTimings, recovery_timings

# A webhook signing key shorter than this is a truncated secret, not a Svix one.
MIN_SECRET_BYTES = 16
# The console's session key signs cookies: a short one could be guessed.
MIN_SESSION_KEY_CHARS = 32
# A host name as DNS allows it (letters, digits, hyphens; dot-separated labels).
HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,63})*")
# A server a URL names may also be a container network's service, whose name may hold underscores
# (docker compose's clerk_db) where DNS names do not.
SERVICE_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_-]{1,63})*")
# Ceilings of durations: beyond them a setting means nothing, or overflows dates and timeouts.
DAY = 86400
WEEK = 7 * DAY


N = TypeVar("N", int, float)


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message is one line."""


# -- parsers: (variable name, raw text) -> value, or ConfigError naming the variable -------


def _secrets(name: str, raw: str) -> tuple[str, ...]:
    # Stricter than svix's own decoder (which pads and skips what is not base64), so whatever passes
    # here svix accepts too; svix itself is not imported: its package import costs the CLI a second.
    secrets = tuple(part for part in re.split(r"[\s,]+", raw.strip()) if part)
    for secret in secrets:
        if not secret.startswith("whsec_"):
            raise ConfigError(f"{name}: each secret must start with 'whsec_'")
        # svix's own decoder silently drops non-base64 characters; a typo must not pass.
        if not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", secret[len("whsec_") :]):
            raise ConfigError(f"{name}: a secret is not valid base64 after 'whsec_'")
        try:
            key = base64.b64decode(secret[len("whsec_") :], validate=True)
        except ValueError as exc:  # binascii.Error: bad padding
            raise ConfigError(f"{name}: a secret is not valid base64 after 'whsec_' ({type(exc).__name__})") from None
        if len(key) < MIN_SECRET_BYTES:
            # Svix's own secrets are 24 to 32 bytes; a short one is a truncated copy-paste.
            raise ConfigError(f"{name}: a secret decodes to {len(key)} bytes, fewer than {MIN_SECRET_BYTES}")
    return secrets


def _url(name: str, raw: str, *, schemes: tuple[str, ...]) -> str:
    """A URL of one of ``schemes`` naming a well-formed host (no error ever quotes it: it may hold a password)."""
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(f"{name}: not a valid URL") from None
    if parts.scheme not in schemes:
        raise ConfigError(f"{name}: scheme must be one of {', '.join(schemes)}")
    # A unix-socket URL has no host; every other one must name one.
    if not (parts.hostname or "socket" in parts.scheme or parts.scheme == "unix" or "host=" in parts.query):
        raise ConfigError(f"{name}: URL names no host")
    if parts.hostname and not _is_host(parts.hostname, names=SERVICE_NAME):
        raise ConfigError(f"{name}: the URL's host is neither an IP address nor a host name")
    if parts.port == 0:
        raise ConfigError(f"{name}: the URL's port must be 1 to 65535")
    return raw


def _query(name: str, query: str) -> dict[str, str]:
    """A URL's query parameters, each given once as key=value (libpq and kombu read the rest apart)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        pairs = []
    params = dict(pairs)
    if len(params) != len(pairs) or not all(params.values()) or (query and not pairs):
        raise ConfigError(f"{name}: each query parameter must be given once, as key=value")
    return params


# What libpq's URI parser refuses, its message quoting the URL or the password up to the fault: a '%'
# that is no escape, %00, white space, anything after an IPv6 host's ']' but a port. (And a raw '#':
# no fragment for libpq, which reads it as part of the password, while Python's URL parsers stop there.)
_LIBPQ_REFUSES = re.compile(r"%(?![0-9A-Fa-f]{2})|%00|\s|#")
_AFTER_IPV6 = re.compile(r"\](?!:|$)")


def _libpq_refuses(raw: str) -> bool:
    """Whether libpq's URI parser (or psycopg's, reading values as UTF-8) would refuse the URL."""
    try:
        unquote_to_bytes(raw).decode()
    except UnicodeDecodeError:
        return True
    parts = urlsplit(raw)
    # A query value holding a raw '=' is refused too ("extra key/value separator").
    pairs = parts.query.split("&") if parts.query else []
    return bool(
        _LIBPQ_REFUSES.search(raw) or _AFTER_IPV6.search(parts.netloc) or any(pair.count("=") != 1 for pair in pairs)
    )


def _libpq_reads(name: str, raw: str) -> None:
    """libpq parses the URL itself (the CLI's status, the schema check): what its parser would refuse
    is refused here, in words that quote none of it. And SQLAlchemy and libpq end the user info at the
    first '@', so the rest of a password with a raw '@' was taken, and quoted, as the host. (Checked
    without psycopg: the ingress loads settings and never the database driver.)"""
    if urlsplit(raw).netloc.count("@") > 1:
        raise ConfigError(f"{name}: a '@' in the user or password must be percent-encoded as %40")
    if _libpq_refuses(raw):
        raise ConfigError(
            f"{name}: libpq cannot read it: percent-encode every '%', space or reserved character in the user,"
            " password, database name and query values"
        )


# libpq's connection parameters (PQconndefaults of the libpq psycopg ships), and JDBC's ssl=true.
LIBPQ_PARAMETERS = frozenset((
    "application_name", "channel_binding", "client_encoding", "connect_timeout", "dbname", "fallback_application_name",
    "gssdelegation", "gssencmode", "gsslib", "host", "hostaddr", "keepalives", "keepalives_count", "keepalives_idle",
    "keepalives_interval", "krbsrvname", "load_balance_hosts", "max_protocol_version", "min_protocol_version",
    "oauth_client_id", "oauth_client_secret", "oauth_issuer", "oauth_scope", "options", "passfile", "password", "port",
    "replication", "require_auth", "requirepeer", "scram_client_key", "scram_server_key", "service",
    "ssl_max_protocol_version", "ssl_min_protocol_version", "sslcert", "sslcertmode", "sslcompression", "sslcrl",
    "sslcrldir", "sslkey", "sslkeylogfile", "sslmode", "sslnegotiation", "sslpassword", "sslrootcert", "sslsni",
    "target_session_attrs", "tcp_user_timeout", "user", "ssl",
))  # fmt: skip
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _database_url(name: str, raw: str) -> str:
    """A Postgres URL libpq will take: a bad one surfaced only at the first connection, as a traceback."""
    _url(name, raw, schemes=("postgresql", "postgresql+psycopg", "postgres"))
    _libpq_reads(name, raw)
    params = _query(name, urlsplit(raw).query)
    if not params.keys() <= LIBPQ_PARAMETERS:
        raise ConfigError(f"{name}: a query parameter is not one of libpq's connection parameters")
    if params.get("sslmode", "prefer") not in SSLMODES:
        raise ConfigError(f"{name}: sslmode must be one of {', '.join(SSLMODES)}")
    if params.get("ssl", "true") != "true":
        raise ConfigError(f"{name}: ssl may only be true (it means sslmode=require)")
    for host in params.get("host", "/").split(","):
        if not (host.startswith("/") or _is_host(host, names=SERVICE_NAME)):
            raise ConfigError(f"{name}: the host parameter is not a socket directory, an IP address or a host name")
    if not re.fullmatch(r"\d{1,5}(,\d{1,5})*", params.get("port", "5432")):
        raise ConfigError(f"{name}: the port parameter must be a port number")
    return raw


# The query parameters both kombu (the worker) and redis-py (web, CLI) read alike, all of them for TLS.
REDIS_TLS_PARAMETERS: dict[str, tuple[str, ...] | None] = {
    "ssl_cert_reqs": ("required", "optional", "none"),
    "ssl_check_hostname": ("true", "false"),
    "ssl_ca_certs": None,  # a path
    "ssl_certfile": None,
    "ssl_keyfile": None,
}


def _redis_url(name: str, raw: str) -> str:
    """The broker's URL, read by kombu in the worker and by redis-py everywhere else: what one of
    them reads differently (a db that is not a number, a socket_timeout) is refused here."""
    _url(name, raw, schemes=("redis", "rediss", "redis+socket"))
    parts = urlsplit(raw)
    params = _query(name, parts.query)
    if parts.scheme == "redis+socket":
        if params or not parts.path:
            raise ConfigError(f"{name}: a redis+socket:// URL is the socket's path, without a query (database 0)")
        return raw
    if not re.fullmatch(r"(/\d*)?", parts.path):
        raise ConfigError(f"{name}: the URL's path must be empty or a database number, like /0")
    allowed = REDIS_TLS_PARAMETERS if parts.scheme == "rediss" else {}
    if not params.keys() <= allowed.keys():
        raise ConfigError(f"{name}: takes no query parameter but, with rediss://, {', '.join(REDIS_TLS_PARAMETERS)}")
    for key, value in params.items():
        choices = allowed[key]
        if choices is not None and value not in choices:
            raise ConfigError(f"{name}: {key} must be one of {', '.join(choices)}")
    if parts.scheme == "rediss" and "ssl_cert_reqs" not in params:
        # Without it kombu (the worker) skips the certificate check while redis-py (the rest) requires one.
        raise ConfigError(
            f"{name}: a rediss:// URL must say ssl_cert_reqs: required (or none, for a provider's self-signed"
            " certificate)"
        )
    return raw


def _number(name: str, raw: str, *, parse: Callable[[str], N], kind: str, minimum: N, maximum: N) -> N:
    """Every number has a range: one past it (inf, nan, 1e12 seconds) fails later, at run time,
    in timedelta arithmetic or in Postgres, far from the variable that caused it."""
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be {kind}, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}: must be a finite number, got {raw.strip()!r}")
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}: must be {_plain(minimum)} to {_plain(maximum)}, got {_plain(value)}")
    return value


def _plain(number: float) -> str:
    """A number as an operator writes it: 86400, not 86400.0 or 8.64e+04."""
    return str(int(number)) if float(number).is_integer() else str(number)


def _int(name: str, raw: str, *, minimum: int, maximum: int) -> int:
    return _number(name, raw, parse=int, kind="a whole number", minimum=minimum, maximum=maximum)


def _float(name: str, raw: str, *, minimum: float, maximum: float) -> float:
    return _number(name, raw, parse=float, kind="a number", minimum=minimum, maximum=maximum)


def _choice(name: str, raw: str, *, choices: tuple[str, ...], upper: bool = False) -> str:
    value = raw.strip().upper() if upper else raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}: must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _queue_name(name: str, raw: str) -> str:
    """A Redis key every process must spell alike: a space or a control character is a typo there."""
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,100}", raw):
        raise ConfigError(f"{name}: must be 1 to 100 letters, digits, '.', '_', ':' or '-'")
    return raw


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: must be true or false, got {raw!r}")


def _address(name: str, raw: str) -> str:
    """An IP address (IPv6 with or without brackets) or a host name to bind a listening socket to."""
    value = raw.strip().removeprefix("[").removesuffix("]")
    if not _is_host(value):
        raise ConfigError(f"{name}: must be an IP address or a host name, got {raw!r}")
    return value


def _is_host(value: str, *, names: re.Pattern[str] = HOST_NAME) -> bool:
    """An IP address (IPv6 without brackets) or a host name (letters, digits, hyphens, dots)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return bool(names.fullmatch(value))
    return True


def _port(name: str, raw: str, *, minimum: int = 1) -> int:
    """A TCP port; ``minimum=0`` where 0 means "do not listen"."""
    return _int(name, raw, minimum=minimum, maximum=65535)


def _clerk_key(name: str, raw: str) -> str:
    if not raw.startswith("sk_"):
        raise ConfigError(f"{name}: must start with 'sk_'")
    return raw


def _console_users(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """Accounts as name:hash. An error names an entry by its position, never by its text: an entry
    without its colon is all name, and may be a password pasted by mistake."""
    from shared.passwords import is_hash

    users: dict[str, str] = {}
    for position, entry in enumerate((part.strip() for part in raw.split(",")), start=1):
        if not entry:
            continue
        user, colon, password_hash = entry.partition(":")
        if not colon or not is_hash(password_hash):
            raise ConfigError(f"{name}: entry {position} is not name:hash (`clerk-sync console-password` prints one)")
        if not re.fullmatch(r"[\w.@+-]{1,64}", user):
            raise ConfigError(f"{name}: entry {position} has a name that is not 1-64 letters, digits or . @ + - _")
        if user in users:
            raise ConfigError(f"{name}: entry {position} names an account an earlier entry names")
        users[user] = password_hash
    if not users:
        raise ConfigError(f"{name}: no account in it (name:hash, separated by commas)")
    return tuple(users.items())


def _instance_id(name: str, raw: str) -> str:
    """Compared verbatim with each event's instance: a stray space would have every event ignored."""
    value = raw.strip()
    if not re.fullmatch(r"ins_[A-Za-z0-9]+", value):
        raise ConfigError(f"{name}: must be a Clerk instance id, ins_ followed by letters and digits")
    return value


def _module_names(name: str, raw: str) -> tuple[str, ...]:
    """Dotted module names (importing them is the worker's job, at its start)."""
    names = tuple(dict.fromkeys(part for part in re.split(r"[\s,]+", raw) if part))
    for module in names:
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module):
            raise ConfigError(f"{name}: {module!r} is not a module name (dotted, like myapp.hooks)")
    if not names:
        raise ConfigError(f"{name}: names no module (separate module names by commas or spaces)")
    return names


def _session_key(name: str, raw: str) -> str:
    if len(raw) < MIN_SESSION_KEY_CHARS:
        raise ConfigError(f"{name}: must be at least {MIN_SESSION_KEY_CHARS} characters (a random string)")
    return raw


def _rate(name: str, raw: str) -> str:
    # The subset of the limits library's syntax an operator needs: "5 per 15 minutes".
    if not re.fullmatch(r"\s*[1-9]\d{0,5}\s+per\s+([1-9]\d{0,5}\s+)?(second|minute|hour|day)s?\s*", raw):
        raise ConfigError(f"{name}: must read like '5 per 15 minutes', got {raw!r}")
    return " ".join(raw.split())


@dataclass(frozen=True)
class Variable:
    """One environment variable: where it goes, its default (None: unset), how it is read."""

    env: str
    field: str
    default: str | None
    parse: Callable[[str, str], Any]
    doc: str


def _log_format_default() -> str:
    return "console" if sys.stdout.isatty() else "json"


VARIABLES: tuple[Variable, ...] = (
    Variable("CLERK_WEBHOOK_SECRET", "webhook_secrets", None, _secrets,
             "Svix signing secret(s), whsec_...; several, separated by spaces or commas, while rotating."),
    Variable("DATABASE_URL", "database_url", "postgresql+psycopg://postgres@localhost:5432/clerk_sync",
             _database_url, "Postgres URL (postgresql://, postgres:// or postgresql+psycopg://); query parameters"
             " are libpq's, sslmode one of disable, allow, prefer, require, verify-ca, verify-full; a '%', '@' or"
             " space in the password percent-encoded (%25, %40, %20), as libpq reads it."),
    Variable("REDIS_URL", "redis_url", "redis://localhost:6379/0", _redis_url,
             "Redis URL: the Celery broker. redis://host:port/db (rediss:// for TLS, with ssl_cert_reqs, required"
             " or none, and optionally ssl_check_hostname, ssl_ca_certs, ssl_certfile, ssl_keyfile) or"
             " redis+socket:///path/to/socket (database 0)."),
    Variable("CLERK_SECRET_KEY", "clerk_secret_key", None, _clerk_key,
             "Clerk Backend API key (sk_...), for backfill, reconcile and ensure_user only."),
    Variable("CLERK_API_URL", "clerk_api_url", "https://api.clerk.com",
             lambda name, raw: _url(name, raw, schemes=("http", "https")).rstrip("/"), "Clerk Backend API base URL."),
    Variable("CLERK_INSTANCE_ID", "clerk_instance_id", None, _instance_id,
             "Apply only events of this Clerk instance (ins_ and letters and digits); others are recorded ignored."),
    Variable("LOG_FORMAT", "log_format", None, partial(_choice, choices=("json", "console")),
             "json (one object per line) or console; default json unless stdout is a terminal. In json, every"
             " line a process writes is one object, Celery's and its pool's included: the worker's banner and its"
             " shutdown notice are the `worker_starting` and `worker_shutting_down` events."),
    Variable("LOG_LEVEL", "log_level", "INFO",
             partial(_choice, choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), upper=True),
             "Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL, in any case. Celery's worker and beat take it"
             " from here, not from a --loglevel flag."),
    Variable("MAX_BODY_BYTES", "max_body_bytes", "1048576",
             partial(_int, minimum=1, maximum=100 * 1024 * 1024),
             "Largest webhook body the ingress accepts (413 above); at most 104857600 (100 MiB)."),
    Variable("PORT", "port", "8000", _port, "Port the web process listens on (1-65535)."),
    Variable("HOST", "host", "0.0.0.0", _address,  # noqa: S104 - a server listens
             "Address the web process listens on."),
    Variable("WEB_CONCURRENCY", "web_concurrency", "2", partial(_int, minimum=1, maximum=256),
             "Web server worker processes (granian workers), 1-256."),
    Variable("WEB_THREADS", "web_threads", "4", partial(_int, minimum=1, maximum=1024),
             "Request threads per web worker process, 1-1024; each keeps one Redis connection."),
    Variable("DELETED_USER_PII", "deleted_user_pii", "keep", partial(_choice, choices=("keep", "scrub")),
             "scrub: clear a deleted user's personal data from their row and stored payloads."),
    Variable("SYNC_PRIVATE_METADATA", "sync_private_metadata", "false", _bool,
             "true: also keep Clerk's private_metadata (columns and clerk_data); it is private to the backend."),
    Variable("RETRY_MAX_ATTEMPTS", "max_attempts", "8", partial(_int, minimum=1, maximum=500),
             "Attempts before an event that keeps failing is dead, 1-500."),
    Variable("RETRY_BASE_SECONDS", "retry_base_seconds", "30", partial(_float, minimum=0, maximum=DAY),
             "First retry delay, 0-86400 (a day); each later one doubles (with jitter), up to a week."),
    Variable("STALE_PENDING_SECONDS", "stale_pending_seconds", "60",
             partial(_int, minimum=1, maximum=WEEK),
             "A pending event untouched this long is presumed lost and enqueued again; 1-604800 (a week)."),
    Variable("RECOVERY_SECONDS", "recovery_seconds", "120",
             partial(_float, minimum=MINIMUM_BOUND_SECONDS, maximum=DAY),
             "An event held by a worker that dies is applied by another within this, 24-86400 (a day); every"
             " recovery timing derives from it (docs/guarantees.md)."),
    Variable("PAYLOAD_RETENTION_DAYS", "payload_retention_days", "30", partial(_int, minimum=0, maximum=3650),
             "Payloads of processed and ignored events are dropped after this many days, 0-3650 (ten years)."),
    Variable("RECONCILE_INTERVAL_SECONDS", "reconcile_interval_seconds", "0",
             partial(_int, minimum=0, maximum=WEEK),
             "Run reconcile (report only) this often from beat, at most 604800 (a week); 0 never."),
    Variable("CLERK_SYNC_QUEUE", "queue_name", "clerk-events", _queue_name,
             "Name of the Redis queue of events: letters, digits, '.', '_', ':' or '-'."),
    Variable("CLERK_SYNC_HOOKS", "hook_modules", None, _module_names,
             "Modules of application hooks the worker imports at start, separated by commas or spaces "
             "(docs/hooks.md); besides those of the clerk_sync.hooks entry point group."),
    Variable("METRICS_PORT", "metrics_port", "9808", partial(_port, minimum=0),
             "The worker's Prometheus port (1-65535); 0 disables it."),
    Variable("METRICS_BIND", "metrics_bind", "0.0.0.0", _address,  # noqa: S104 - Prometheus scrapes from elsewhere
             "Address the worker's Prometheus endpoint listens on (127.0.0.1: this host only)."),
    Variable("DB_LOCK_TIMEOUT_SECONDS", "db_lock_timeout_seconds", "10",
             partial(_float, minimum=0.001, maximum=DAY),
             "A worker statement waiting longer for a lock fails the attempt (retried); 0.001-86400 (a day)."),
    Variable("DB_STATEMENT_TIMEOUT_SECONDS", "db_statement_timeout_seconds", None,
             partial(_float, minimum=0.001, maximum=DAY),
             "A worker statement running longer fails the attempt (retried), at least 0.001; default and ceiling:"
             " what the task's soft time limit leaves after the database wait (15 with RECOVERY_SECONDS=120)."),
    Variable("WORKER_CONCURRENCY", "worker_concurrency", None, partial(_int, minimum=1, maximum=256),
             "Celery pool processes of the `worker` process, 1-256; default the number of cores."),
    Variable("CONSOLE_CONCURRENCY", "console_concurrency", "1", partial(_int, minimum=1, maximum=32),
             "gunicorn processes of the `console` process (4 threads each), 1-32."),
    Variable("CONSOLE_PORT", "console_port", "8001", _port, "Port of the operations console (1-65535)."),
    Variable("CONSOLE_BIND", "console_bind", "127.0.0.1", _address,
             "Address the console listens on; put it behind a TLS proxy before widening it."),
    Variable("CONSOLE_USERS", "console_users", None, _console_users,
             "Console accounts, name:hash separated by commas (`clerk-sync console-password` prints a hash)."),
    Variable("CONSOLE_SECRET_KEY", "console_secret_key", None, _session_key,
             "Signs the console's session cookies; a random string of 32 characters or more."),
    Variable("CONSOLE_LOGIN_LIMIT", "console_login_limit", "5 per 15 minutes", _rate,
             "Failed console logins allowed per account and per address before login is refused."),
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """Everything clerk-sync reads from its environment, validated (see ``VARIABLES``)."""

    webhook_secrets: tuple[str, ...]
    database_url: str
    redis_url: str
    clerk_secret_key: str | None
    clerk_api_url: str
    clerk_instance_id: str | None
    log_format: str
    log_level: str
    max_body_bytes: int
    port: int
    host: str
    web_concurrency: int
    web_threads: int
    deleted_user_pii: str
    sync_private_metadata: bool
    max_attempts: int
    retry_base_seconds: float
    stale_pending_seconds: int
    recovery_seconds: float
    payload_retention_days: int
    reconcile_interval_seconds: int
    queue_name: str
    hook_modules: tuple[str, ...]
    metrics_port: int
    metrics_bind: str
    db_lock_timeout_seconds: float
    db_statement_timeout_seconds: float
    worker_concurrency: int | None
    console_concurrency: int
    console_port: int
    console_bind: str
    console_users: tuple[tuple[str, str], ...]
    console_secret_key: str | None
    console_login_limit: str

    @property
    def timings(self) -> RecoveryTimings:
        """Every recovery timing, derived from RECOVERY_SECONDS (``shared.timings``)."""
        return recovery_timings(self.recovery_seconds)

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL with the psycopg 3 driver named, as SQLAlchemy needs it."""
        return normalize_database_url(self.database_url)

    @property
    def libpq_url(self) -> str:
        """DATABASE_URL as libpq reads it (``psycopg.connect``), without SQLAlchemy's driver name."""
        return self.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)

    def require_webhook_secrets(self, *, without_it: str = "the ingress cannot verify webhooks") -> tuple[str, ...]:
        """The signing secrets, or ConfigError saying what cannot be done ``without_it``."""
        if not self.webhook_secrets:
            raise ConfigError(f"CLERK_WEBHOOK_SECRET is not set: {without_it}")
        return self.webhook_secrets

    def require_console(self) -> None:
        """The console's accounts and session key, or ConfigError naming what is missing."""
        if not self.console_users:
            raise ConfigError("CONSOLE_USERS is not set: the console needs an account (clerk-sync console-password)")
        if not self.console_secret_key:
            raise ConfigError("CONSOLE_SECRET_KEY is not set: the console needs a key to sign sessions")

    def require_clerk_secret_key(self) -> str:
        if not self.clerk_secret_key:
            raise ConfigError("CLERK_SECRET_KEY is not set: backfill and reconcile need the Clerk Backend API key")
        return self.clerk_secret_key


# Unset variables whose absence is a value of its own (no secret, no key, no instance filter).
_EMPTY: dict[str, Any] = {
    "webhook_secrets": (),
    "clerk_secret_key": None,
    "clerk_instance_id": None,
    "console_users": (),
    "console_secret_key": None,
    "hook_modules": (),
    "worker_concurrency": None,  # the cores the worker may run on (worker/celery_app.py)
    "db_statement_timeout_seconds": None,  # derived from RECOVERY_SECONDS in load_settings
}

# Variables that are no longer read, and what replaced them: setting one is a mistake to report.
RETIRED = {
    "LOST_MESSAGE_SECONDS": "RECOVERY_SECONDS",
    "SWEEP_INTERVAL_SECONDS": "RECOVERY_SECONDS",
}


def normalize_database_url(url: str) -> str:
    """Name the psycopg 3 driver explicitly; `postgresql://` would pick psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build and validate Settings from an environment mapping (an empty value counts as unset)."""
    env = os.environ if environ is None else environ
    for name, replacement in RETIRED.items():
        if env.get(name):
            raise ConfigError(f"{name} is no longer read: recovery timings derive from {replacement}")
    values: dict[str, Any] = {}
    for variable in VARIABLES:
        raw = env.get(variable.env) or None
        if raw is None and variable.env == "LOG_FORMAT":
            raw = _log_format_default()
        if raw is None:
            raw = variable.default
        values[variable.field] = _EMPTY[variable.field] if raw is None else variable.parse(variable.env, raw)
    values["db_statement_timeout_seconds"] = _statement_timeout(
        values["db_statement_timeout_seconds"], recovery_timings(values["recovery_seconds"])
    )
    return Settings(**values)


def _statement_timeout(configured: float | None, timings: RecoveryTimings) -> float:
    """A statement must end (in Postgres's own error) before the task's soft time limit."""
    ceiling = timings.statement_timeout_limit
    if configured is None:
        return ceiling
    if configured > ceiling:
        raise ConfigError(
            f"DB_STATEMENT_TIMEOUT_SECONDS: must be at most {ceiling:g} with RECOVERY_SECONDS={timings.bound:g}"
            f" (the task's soft time limit less the database wait), got {configured:g}"
        )
    return configured


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once; tests call ``get_settings.cache_clear()``."""
    return load_settings()


def exit_on_config_error(exc: ConfigError) -> NoReturn:
    """Print the one-line reason and stop the whole process with a non-zero code."""
    print(f"clerk-sync: configuration error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(3)


def load_settings_or_exit(*requirements: Callable[[Settings], None]) -> Settings:
    """The settings of a process starting up, each of ``requirements`` checked (``Settings.require_*``):
    on a bad or missing value, one line and the whole process exits (``exit_on_config_error``)."""
    try:
        settings = load_settings()
        for requirement in requirements:
            requirement(settings)
    except ConfigError as exc:
        exit_on_config_error(exc)
    return settings


def reference() -> str:
    """The variables as a Markdown table (docs/configuration.md)."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for variable in VARIABLES:
        default = "unset" if variable.default is None else f"`{variable.default}`"
        if variable.field == "db_statement_timeout_seconds":
            default = "from `RECOVERY_SECONDS`"
        lines.append(f"| `{variable.env}` | {default} | {variable.doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference())
