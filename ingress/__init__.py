"""The ingress: verify the Svix signature over the raw body, enqueue, answer.

It never parses business fields and never touches Postgres.
"""

from __future__ import annotations

import json

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

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
    # A path with a doubled slash is an unknown path (404 in JSON), not a 308 to the merged one: werkzeug's
    # redirect is an HTML page whose Location is built from the request's Host header.
    app.url_map.merge_slashes = False
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(health.bp)
    # Prometheus scrape point: this ingress's own metrics, summed over the server's workers.
    app.add_url_rule("/metrics", "metrics", metrics.exposition)
    app.register_error_handler(HTTPException, _json_error)
    return app


def _json_error(exc: HTTPException) -> Response:
    """What Flask answers itself (an unknown path, a wrong method) in the ingress's JSON shape,
    its headers (``Allow``) kept: a sender's log shows one reason, not an HTML page."""
    response = exc.get_response()
    response.set_data(json.dumps({"error": (exc.name or "error").lower().replace(" ", "_")}) + "\n")
    response.mimetype = "application/json"
    return response
