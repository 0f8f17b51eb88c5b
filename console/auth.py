"""Logging in and out, and the guard that serves no page without a login.

Accounts are ``CONSOLE_USERS`` (name and scrypt hash). A login stores the name and a tag
of the account's hash in the signed session cookie: removing an account or changing its
password ends its sessions at the next request. Each login also gets a random session id; logging
out records that id as ended (in Redis, for every console process, and in this process's memory,
which still works while Redis is away) until the cookie could no longer be valid anyway, so a
copy of the cookie taken before the logout is refused too. Failed logins are counted in Redis per
account and per address (Flask-Limiter, ``CONSOLE_LOGIN_LIMIT``); past the limit the login
is refused, even with the right password, until the window ends. The cookie is HttpOnly,
SameSite=Strict, and Secure whenever the request came over https (gunicorn trusts
``X-Forwarded-Proto`` from a proxy on the same machine).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from redis import RedisError
from werkzeug.exceptions import TooManyRequests
from werkzeug.wrappers import Response

from shared.config import Settings
from shared.logging import get_logger
from shared.passwords import check_password
from shared.redis_client import redis_client
from worker.ops.audit import Actor

log = get_logger("clerk_sync.console")

SESSION_LIFETIME = dt.timedelta(hours=12)
# Endpoints served without a login: the login form itself and its stylesheet.
PUBLIC_ENDPOINTS = frozenset({"login", "static"})


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, marked Secure exactly when the request was https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure

    def get_cookie_httponly(self, app: Flask) -> bool:
        return True

    def get_cookie_samesite(self, app: Flask) -> str:
        return "Strict"


class EndedSessions:
    """The session ids logged out, kept as long as a cookie carrying one could still be valid."""

    PREFIX = "clerk-sync-console:ended:"

    def __init__(self, client: Any) -> None:
        self._client = client
        self._here: dict[str, float] = {}  # session id -> when it may be forgotten (time.monotonic)
        self._lock = threading.Lock()

    def end(self, sid: str) -> None:
        seconds = int(SESSION_LIFETIME.total_seconds())
        with self._lock:
            now = time.monotonic()
            self._here = {key: until for key, until in self._here.items() if until > now}
            self._here[sid] = now + seconds
        try:
            self._client.set(self.PREFIX + sid, "1", ex=seconds)
        except RedisError as exc:  # this process still refuses it; the others cannot know
            log.warning("console_logout_not_shared", error=f"{type(exc).__name__}: {exc}")

    def ended(self, sid: str) -> bool:
        with self._lock:
            if self._here.get(sid, 0.0) > time.monotonic():
                return True
        try:
            return bool(self._client.exists(self.PREFIX + sid))
        except RedisError as exc:
            log.warning("console_session_check_skipped", error=f"{type(exc).__name__}: {exc}")
            return False


def install(app: Flask, settings: Settings) -> None:
    """Session cookies, the login routes with their throttle, and the login guard."""
    app.session_interface = SessionCookies()
    app.config.update(PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME, SESSION_COOKIE_NAME="clerk_sync_console")
    accounts = dict(settings.console_users)
    client = redis_client(settings.redis_url, timeout=2.0)
    ended = EndedSessions(client)
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri="redis://",
        storage_options={"connection_pool": client.connection_pool},
        key_prefix="clerk-sync-console",
        strategy="fixed-window",
        # Redis away: count in this process rather than lock every operator out during an outage.
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )

    key = (settings.console_secret_key or "").encode()

    def failed(response: Response) -> bool:
        return response.status_code == 401

    def by_account() -> str:
        # An HMAC of the name typed, never the name: Flask-Limiter logs the key and Redis keeps it, and
        # what was typed may be a password typed into the name field (a plain digest could be cracked).
        name = request.form.get("username", "")[:64].encode()
        return "account:" + hmac.new(key, name, hashlib.sha256).hexdigest()

    throttled = limiter.limit(settings.console_login_limit, methods=["POST"], deduct_when=failed)
    throttled_account = limiter.limit(
        settings.console_login_limit, methods=["POST"], deduct_when=failed, key_func=by_account
    )
    app.add_url_rule("/login", "login", throttled(throttled_account(_login_view(accounts))), methods=["GET", "POST"])
    app.add_url_rule("/logout", "logout", _logout_view(ended), methods=["POST"])
    app.before_request(_guard(accounts, ended))
    app.register_error_handler(TooManyRequests, _too_many)


def _tag(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def current_actor() -> Actor:
    """The logged-in operator, as the audit table names them."""
    return Actor(name=str(session["operator"]), source="console")


def _guard(accounts: dict[str, str], ended: EndedSessions):  # type: ignore[no-untyped-def]
    def require_login() -> Response | None:
        if request.endpoint in PUBLIC_ENDPOINTS:
            return None
        name, sid = session.get("operator"), session.get("sid")
        if (
            name in accounts
            and session.get("tag") == _tag(accounts[name])
            and isinstance(sid, str)
            and not ended.ended(sid)
        ):
            return None
        if name is not None:  # logged out, an account removed, or its password changed: that login is over
            session.clear()
        target = request.full_path if request.method == "GET" else "/"
        return redirect(url_for("login", next=target.rstrip("?")))

    return require_login


def safe_path(target: str | None) -> str:
    """``target`` if it is a path on this console, else the overview: never another site
    (``//evil``, ``/\\evil``, which browsers read as ``//evil``, ``https://evil``), and never a
    control character (a line break cannot go in a Location header: the answer would be a 500)."""
    if not target or not target.startswith("/") or target[1:2] in ("/", "\\") or "\\" in target:
        return url_for("overview.index")
    if not target.isprintable() or urlsplit(target).netloc:
        return url_for("overview.index")
    return target


def _login_view(accounts: dict[str, str]):  # type: ignore[no-untyped-def]
    def login() -> Response | str | tuple[str, int]:
        if request.method != "POST":  # GET, and HEAD: the form, no password checked
            return render_template("login.html", next=request.args.get("next", ""))
        name = request.form.get("username", "")
        if not check_password(accounts.get(name), request.form.get("password", "")):
            log.warning("console_login_refused", operator=name if name in accounts else None)
            return render_template("login.html", error="wrong name or password", next=request.form.get("next")), 401
        session.clear()
        session.permanent = True
        session.update(operator=name, tag=_tag(accounts[name]), sid=secrets.token_urlsafe(18))
        log.info("console_login", operator=name)
        return redirect(safe_path(request.form.get("next")))

    return login


def _logout_view(ended: EndedSessions):  # type: ignore[no-untyped-def]
    def logout() -> Response:
        sid = session.get("sid")
        if isinstance(sid, str):
            ended.end(sid)
        log.info("console_logout", operator=session.get("operator"))
        session.clear()
        return redirect(url_for("login"))

    return logout


def _too_many(error: TooManyRequests) -> tuple[str, int]:
    log.warning("console_login_throttled")
    message = "too many failed logins: wait a while before trying again"
    return render_template("login.html", error=message, next=request.form.get("next", "")), 429
