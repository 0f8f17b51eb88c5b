"""Sign and post events the way Svix does, with the svix library's own signer."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
from svix.webhooks import Webhook

ROOT = Path(__file__).resolve().parents[2]
# One body per event type: the samples `clerk-sync send` ships (a copy of ../shared/clerk-payloads).
PAYLOADS = ROOT / "worker" / "cli" / "samples"
# Older shapes from Clerk's docs, and Svix's known-good signatures: only the tests use them.
FIXTURES = ROOT / "tests" / "fixtures" / "clerk-variants"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_plJ3nmyCDGBKInavdOK15jsl"


def load_payload(name: str) -> dict[str, Any]:
    """A realistic Clerk body of one type (e.g. "user.updated")."""
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def new_svix_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def signed_headers(
    body: str | bytes,
    *,
    svix_id: str | None = None,
    secret: str = SECRET,
    timestamp: dt.datetime | None = None,
    prefix: str = "svix",
) -> dict[str, str]:
    text = body.decode() if isinstance(body, bytes) else body
    svix_id = svix_id or new_svix_id()
    timestamp = timestamp or dt.datetime.now(dt.UTC)
    signature = Webhook(secret).sign(svix_id, timestamp, text)
    return {
        f"{prefix}-id": svix_id,
        f"{prefix}-timestamp": str(int(timestamp.timestamp())),
        f"{prefix}-signature": signature,
        "content-type": "application/json",
    }


def post_event(
    base_url: str,
    payload: dict[str, Any] | str,
    *,
    svix_id: str | None = None,
    session: requests.Session | None = None,
    timeout: float = 10.0,
    **sign_options: Any,
) -> requests.Response:
    """POST one signed event to a running ingress."""
    body = payload if isinstance(payload, str) else json.dumps(payload)
    headers = signed_headers(body, svix_id=svix_id, **sign_options)
    http = session or requests
    return http.post(f"{base_url}/webhooks/clerk", data=body.encode(), headers=headers, timeout=timeout)


def post_events(base_url: str, events: Mapping[str, dict[str, Any] | str]) -> dict[str, int]:
    """POST each signed event (svix-id -> payload), in order: svix-id -> the HTTP status."""
    with requests.Session() as http:
        return {
            svix_id: post_event(base_url, payload, svix_id=svix_id, session=http).status_code
            for svix_id, payload in events.items()
        }


def user_created(user_id: str) -> dict[str, Any]:
    """The `user.created` sample, for the user ``user_id`` (many distinct users from one sample)."""
    payload = load_payload("user.created")
    payload["data"]["id"] = user_id
    return payload
