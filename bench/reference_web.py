"""The ingress of the two reference pipelines: verify the Svix signature, LPUSH the event, answer 204.

Served like clerk-sync's ``web`` (the same server configuration in ``deploy/``), so the pipelines
differ only behind the queue. One LPUSH of ``[svix_id, svix_timestamp, body]`` on
``REF_QUEUE``; no receipt, no Celery message, no log line, no metric.
"""

from __future__ import annotations

import json
import os

from flask import Flask, Response, request
from svix.webhooks import Webhook, WebhookVerificationError

from shared.redis_client import redis_client

app = Flask(__name__)
_verifier = Webhook(os.environ["CLERK_WEBHOOK_SECRET"])
_redis = redis_client(os.environ["REDIS_URL"], timeout=1.0)
_queue = os.environ.get("REF_QUEUE", "bench-reference")


@app.post("/webhooks/clerk")
def receive() -> Response:
    body = request.get_data(cache=False)
    headers = {name: request.headers.get(name, "") for name in ("svix-id", "svix-timestamp", "svix-signature")}
    try:
        _verifier.verify(body, headers)
    except WebhookVerificationError:
        return Response(status=401)
    _redis.lpush(_queue, json.dumps([headers["svix-id"], int(headers["svix-timestamp"]), body.decode()]))
    return Response(status=204)


@app.get("/healthz")
def healthz() -> Response:
    return Response("ok", status=200)
