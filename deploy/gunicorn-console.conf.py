"""gunicorn settings for the `console` process (CONTRACT section 7).

Settings are validated here, in the arbiter, before any worker forks: without
CONSOLE_USERS or CONSOLE_SECRET_KEY, or with a malformed variable, the whole process stops
with one line and exit code 3 (a worker that exited would only be restarted), as does a
CONSOLE_BIND not of this machine; a port another server listens on is one ``port_in_use`` line
and exit code 1. A database behind this code's schema is waited for first (``schema_wait_stopped``
and exit code 0 if stopped meanwhile).
"""

import os
from typing import Any

import structlog

from shared.config import Settings, load_settings_or_exit
from shared.listening import exit_unless_free
from shared.logging import configure_logging, logging_dict
from shared.schema import wait_until_migrated

_settings = load_settings_or_exit(Settings.require_console)
configure_logging(log_format=_settings.log_format, level=_settings.log_level)
# Before the console binds: a database behind this code's schema is waited for (shared.schema).
wait_until_migrated(_settings, "console")

_host = f"[{_settings.console_bind}]" if ":" in _settings.console_bind else _settings.console_bind
bind = f"{_host}:{_settings.console_port}"
# A handful of operators: one process, a few threads (a login's scrypt check takes ~0.1 s of CPU).
worker_class = "gthread"
workers = _settings.console_concurrency
threads = 4
timeout = 60
graceful_timeout = 10
accesslog = None
# gunicorn's control interface (gunicornc) is not used: without this it binds a socket under
# $HOME/.gunicorn, shared by every gunicorn of the user, and logs an error where $HOME is read-only.
control_socket_disable = True
logconfig_dict = logging_dict(log_format=_settings.log_format, level=_settings.log_level)
# Behind a TLS proxy on this machine, X-Forwarded-Proto: https marks requests secure (and cookies Secure).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")


def on_starting(server: Any) -> None:
    """Once, as the arbiter starts and before it binds: a port another server holds, or a
    CONSOLE_BIND not of this machine, is one line and exit rather than gunicorn's five retries of two
    error lines each. Not on a HUP's reload (this file runs again while the console holds its port),
    nor with sockets handed over (a USR2 upgrade, systemd's socket activation): those are its own."""
    if not (server.master_pid or os.environ.get("LISTEN_FDS")):
        log = structlog.get_logger("clerk_sync.console")
        exit_unless_free(_settings.console_bind, _settings.console_port, host_variable="CONSOLE_BIND", log=log)
