"""The baseline for the ingress benchmark: the same gunicorn settings, a Flask app that does nothing.

Served with ``gunicorn -c deploy/gunicorn.conf.py bench.bare_app:app`` (the config file
validates settings, so CLERK_WEBHOOK_SECRET must be set even though nothing here reads it).
"""

from __future__ import annotations

from flask import Flask, Response

app = Flask(__name__)


@app.post("/webhooks/clerk")
def receive() -> Response:
    return Response(status=204)


@app.get("/healthz")
def healthz() -> Response:
    return Response("ok", status=200)
