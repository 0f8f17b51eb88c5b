"""POST /webhooks/clerk: a list of guard clauses, each one status and one log line.

The body is read (it is bounded by ``MAX_BODY_BYTES``) before any refusal but the one for
its size, so a refused request leaves its keep-alive connection ready for the next one; a
body over the limit is not read, and its answer closes the connection.
"""

from __future__ import annotations

import base64
import binascii
import time

import structlog
from flask import Blueprint, Response, request
from svix.webhooks import WebhookVerificationError
from werkzeug.exceptions import RequestEntityTooLarge

from ingress.state import IngressState, state
from shared import metrics
from shared.publish import QueueUnavailable

bp = Blueprint("webhooks", __name__)
log = structlog.get_logger("clerk_sync.ingress")

MAX_SVIX_ID_LENGTH = 255
JSON = "application/json"
# Flask's JSON for {"status": "queued"}, written once: the accepted path builds no dict.
QUEUED = b'{"status":"queued"}\n'


def _header(name: str) -> str | None:
    """A Svix header, branded (`svix-*`) or unbranded (`webhook-*`)."""
    return request.headers.get(f"svix-{name}") or request.headers.get(f"webhook-{name}")


def _reject(status: int, reason: str, **fields: object) -> tuple[dict[str, str], int]:
    log.info("webhook_rejected", status=status, reason=reason, **fields)
    metrics.ingress_request("rejected", reason=reason, status=status)
    return {"error": reason}, status


def _too_large() -> Response:
    """413, and the connection closes: what is left of the body is never read."""
    log.info("webhook_rejected", status=413, reason="body_too_large")
    metrics.ingress_request("rejected", reason="body_too_large", status=413)
    response = Response('{"error":"body_too_large"}\n', status=413, mimetype=JSON)
    response.headers["Connection"] = "close"
    return response


@bp.post("/webhooks/clerk")
def receive() -> tuple[dict[str, str], int] | Response:
    ingress = state()
    svix_id, timestamp, signature = _header("id"), _header("timestamp"), _header("signature")
    # Not verified yet, so of any length (an over-long one is refused below): logged cut to what is allowed.
    structlog.contextvars.bind_contextvars(svix_id=svix_id[:MAX_SVIX_ID_LENGTH] if svix_id else svix_id)
    try:
        if (request.content_length or 0) > ingress.settings.max_body_bytes:
            return _too_large()
        body = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
        # A chunked body has no length to check first: werkzeug stops reading at the
        # limit (max + 1, see create_app) without raising, so a longer read means too large.
        if len(body) > ingress.settings.max_body_bytes:
            return _too_large()
        if not (svix_id and timestamp and signature):
            return _reject(400, "missing_headers")
        if len(svix_id) > MAX_SVIX_ID_LENGTH:
            return _reject(400, "svix_id_too_long")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return _reject(400, "body_not_utf8")

        verdict = _verify(ingress, text, svix_id=svix_id, timestamp=timestamp, signature=signature)
        if verdict is not None:
            return _reject(*verdict)

        started = time.perf_counter()
        try:
            ingress.enqueue(svix_id=svix_id, svix_timestamp=int(float(timestamp)), body=text)
        except QueueUnavailable as exc:  # Svix must retry, never a 2xx
            log.warning("enqueue_failed", error=str(exc))
            metrics.observe_enqueue(time.perf_counter() - started)
            metrics.ingress_request("unavailable", reason="queue_unavailable", status=503)
            response = Response('{"error":"queue_unavailable"}\n', status=503, mimetype=JSON)
            response.headers["Retry-After"] = "5"
            return response
        elapsed = time.perf_counter() - started
        log.info("webhook_enqueued", enqueue_ms=round(elapsed * 1000, 2))
        metrics.observe_enqueue(elapsed)
        metrics.ingress_request("enqueued", status=200)
        return Response(QUEUED, status=200, mimetype=JSON)
    finally:
        structlog.contextvars.clear_contextvars()


def _v1_signatures(header: str) -> tuple[str, bool]:
    """The header's well-formed ``v1,<base64>`` entries, space-separated as Svix sends them, and
    whether any entry was malformed. The svix library gives up at the first entry it cannot
    parse, so a stray one (a proxy's folding, a sender's bug) would hide a valid signature. A
    header sent twice arrives joined by ", " (nginx, as HTTP allows): an entry's trailing comma is
    that join's, never base64's."""
    kept, malformed = [], False
    for raw in header.split():
        entry = raw.removesuffix(",")
        version, comma, value = entry.partition(",")
        if not comma or not value or "," in value:
            malformed = True
        elif version == "v1":
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                malformed = True
            else:
                kept.append(entry)
    return " ".join(kept), malformed or not header.strip()


def _verify(
    ingress: IngressState, text: str, *, svix_id: str, timestamp: str, signature: str
) -> tuple[int, str] | None:
    """None if any configured secret signed the body; else (status, reason)."""
    signatures, malformed = _v1_signatures(signature)
    if not signatures:
        return (400, "malformed_signature_header") if malformed else (401, "bad_signature")
    headers = {"svix-id": svix_id, "svix-timestamp": timestamp, "svix-signature": signatures}
    for verifier in ingress.verifiers:  # every secret, while one is rotated
        try:
            verifier.verify(text, headers)
            return None
        except WebhookVerificationError as exc:
            message = str(exc)
            if "timestamp" in message.lower():
                return 401, "timestamp_outside_tolerance"
            if "Invalid Signature Headers" in message:
                return 400, "malformed_timestamp"
    return 401, "bad_signature"


@bp.errorhandler(RequestEntityTooLarge)
def too_large(_: RequestEntityTooLarge) -> Response:
    return _too_large()
