"""A measuring stick for the ingress benchmark: the least any verifying, queueing ingress must do.

It checks the Svix signature with the same library and writes the raw body to Redis with one LPUSH,
then answers 204: no Celery message, no receipt, no log line, no metric. It is not an ingress (nothing
consumes what it writes, and without a receipt a message lost in the worker's BRPOP is lost for good);
it shows how much of the bare endpoint's speed one signature check and one Redis round trip leave,
measured in the same run and on the same server as the ingress (bench/ingress.py).
"""

from __future__ import annotations

import os

from flask import Flask, Response, request
from svix.webhooks import Webhook

from shared.redis_client import redis_client

FLOOR_KEY = "clerk-sync:bench-floor"

app = Flask(__name__)
_verifier = Webhook(os.environ["CLERK_WEBHOOK_SECRET"])
_redis = redis_client(os.environ["REDIS_URL"], timeout=1.0)


@app.post("/webhooks/clerk")
def receive() -> Response:
    body = request.get_data(cache=False)
    headers = request.headers
    _verifier.verify(
        body,
        {
            "svix-id": headers.get("svix-id", ""),
            "svix-timestamp": headers.get("svix-timestamp", ""),
            "svix-signature": headers.get("svix-signature", ""),
        },
    )
    _redis.lpush(FLOOR_KEY, body)
    return Response(status=204)


@app.get("/healthz")
def healthz() -> Response:
    return Response("ok", status=200)
