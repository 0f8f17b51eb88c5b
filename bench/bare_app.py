"""The baseline for the ingress benchmark: a Flask app that does nothing.

bench/ingress.py serves it on gunicorn gthread 2x4 (the reference every ratio divides by)
and on the `web` server itself (``python deploy/web.py --app bench.bare_app:app``).
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
