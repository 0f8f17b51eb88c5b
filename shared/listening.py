"""Can a server listen where it is configured to? Asked by `web` and the console before they start.

Without it, a port another server holds made gunicorn retry five times, two error lines each, and
web's readiness probe take the other server for its own nginx.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from shared.config import ConfigError, exit_on_config_error


def port_in_use(host: str, port: int, *, host_variable: str = "HOST") -> bool:
    """Whether another server listens on HOST:PORT. ConfigError naming ``host_variable`` when HOST is
    not an address of this machine (or a name that resolves to none): no server could listen there."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"{host_variable}: {host!r} does not resolve to an address ({exc.strerror})") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"{host_variable}: {host} is not an address of this machine") from None
            return exc.errno == errno.EADDRINUSE  # anything else (a privileged port): the server says
    return False


def exit_unless_free(host: str, port: int, *, host_variable: str, log: Any) -> None:
    """Return if a server may listen on HOST:PORT; otherwise the whole process stops with one line:
    a configuration error naming ``host_variable`` (exit 3), or ``port_in_use`` (exit 1)."""
    try:
        in_use = port_in_use(host, port, host_variable=host_variable)
    except ConfigError as exc:
        exit_on_config_error(exc)
    if in_use:
        log.error("port_in_use", host=host, port=port)
        raise SystemExit(1)
