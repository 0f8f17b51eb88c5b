"""The operators' web console (CONTRACT section 7): the sync's health, the dead-letter queue,
an event's page, entity search, pause and resume, the audit trail.

A small Flask app, served by its own ``console`` process (``deploy/console.sh``) so the
ingress stays minimal. Its views only read request fields and render pages: every change
goes through ``worker.ops``, the same functions the CLI calls, which also write the
``operator_actions`` audit row. No page is served without a login; every form that changes
anything carries a CSRF token; payloads are rendered as text, never as markup, under a
Content-Security-Policy that allows no script at all.
"""

from __future__ import annotations

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from console import auth, control, dead_letters, entities, overview, pages
from console.state import ConsoleState
from shared.config import Settings, get_settings
from shared.logging import configure_logging

# Pages hold payloads and emails: never cached, never framed, no script, nothing from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def create_app(settings: Settings | None = None) -> Flask:
    """The console for ``settings`` (the environment's by default); ConfigError without accounts or key."""
    settings = settings or get_settings()
    settings.require_console()
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.console_secret_key,
        # The CSRF token lives as long as the login, not an hour: a form left open still works.
        WTF_CSRF_TIME_LIMIT=None,
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.extensions["clerk_sync"] = ConsoleState(settings)
    CSRFProtect(app)
    auth.install(app, settings)
    for blueprint in (overview.blueprint, dead_letters.blueprint, entities.blueprint, control.blueprint):
        app.register_blueprint(blueprint)
    pages.install(app)

    @app.after_request
    def _security_headers(response):  # type: ignore[no-untyped-def]
        response.headers.update(SECURITY_HEADERS)
        return response

    return app
