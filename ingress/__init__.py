"""The ingress: verify the Svix signature over the raw body, enqueue, answer.

It never parses business fields and never touches Postgres.
"""

from __future__ import annotations

from flask import Flask

from shared import metrics
from shared.config import Settings, get_settings
from shared.logging import configure_logging


def create_app(settings: Settings | None = None) -> Flask:
    """Build the ingress app: settings, logging, verifier, publisher, routes."""
    settings = settings or get_settings()
    settings.require_webhook_secrets()
    configure_logging(log_format=settings.log_format, level=settings.log_level, direct=True)

    from ingress import health, webhooks
    from ingress.state import IngressState

    app = Flask(__name__)
    # One byte over the limit, so that a chunked body past the limit is seen as such.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    app.extensions["clerk_sync"] = IngressState.from_settings(settings)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(health.bp)
    # Prometheus scrape point: this ingress's own metrics, summed over the server's workers.
    app.add_url_rule("/metrics", "metrics", metrics.exposition)
    return app
