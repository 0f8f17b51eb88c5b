"""Realistic Clerk events for the benchmark: bodies built from worker/cli/samples, signed with svix.

The mix follows what a Clerk instance sends: mostly user.created/updated, some organization and
membership events, a few deletes and session.created (not synced, recorded ``ignored``), and a share
of duplicate deliveries (same svix-id, same body), each placed shortly after its original.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svix.webhooks import Webhook

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "worker" / "cli" / "samples"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - the test suite's signing secret, not a credential

# Share of distinct events per type (sums to 1).
MIX: dict[str, float] = {
    "user.created": 0.18,
    "user.updated": 0.50,
    "user.deleted": 0.02,
    "session.created": 0.08,
    "organization.created": 0.03,
    "organization.updated": 0.05,
    "organization.deleted": 0.005,
    "organizationMembership.created": 0.09,
    "organizationMembership.updated": 0.03,
    "organizationMembership.deleted": 0.015,
}

_GOOGLE_ACCOUNT = {
    "object": "google_account",
    "id": "idn_2hAbCdEfGhIjKlMnOpQrStUvWxY",
    "provider": "oauth_google",
    "identification_id": "idn_2hAbCdEfGhIjKlMnOpQrStUvWxY",
    "provider_user_id": "104857392019384756102",
    "approved_scopes": "email https://www.googleapis.com/auth/userinfo.email "
    "https://www.googleapis.com/auth/userinfo.profile openid profile",
    "email_address": "john.doe@example.com",
    "first_name": "John",
    "last_name": "Doe",
    "avatar_url": "https://lh3.googleusercontent.com/a/ACg8ocKxYz0123456789abcdefghijklmnopqrstuvwxyz=s96-c",
    "image_url": "https://img.clerk.com/eyJ0eXBlIjoicHJveHkiLCJzcmMiOiJodHRwczovL2xoMy5nb29nbGV1c2VyY29udGVudC5jb20",
    "username": "",
    "public_metadata": {},
    "label": None,
    "created_at": 1716883190000,
    "updated_at": 1716883400000,
    "verification": {"status": "verified", "strategy": "oauth_google", "attempts": None, "expire_at": 1716883790000},
}
_PHONE = {
    "object": "phone_number",
    "id": "idn_2hPhOnEnUmBeR0123456789abcd",
    "phone_number": "+15555550123",
    "reserved_for_second_factor": True,
    "default_second_factor": True,
    "reserved": False,
    "linked_to": [],
    "backup_codes": None,
    "created_at": 1716883300000,
    "updated_at": 1716883300000,
    "verification": {"status": "verified", "strategy": "phone_code", "attempts": 1, "expire_at": 1716883900000},
}


@dataclass(frozen=True)
class Event:
    svix_id: str
    event_type: str
    body: str


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / f"{name}.json").read_text())


def dumps(payload: dict[str, Any]) -> str:
    """Compact JSON, as Svix delivers it."""
    return json.dumps(payload, separators=(",", ":"))


def realistic_user_updated() -> str:
    """user.updated padded the way a real user looks (an OAuth account, a 2FA phone): about 3 KB."""
    payload = sample("user.updated")
    payload["data"]["external_accounts"] = [_GOOGLE_ACCOUNT]
    payload["data"]["phone_numbers"] = [_PHONE]
    return dumps(payload)


def new_svix_id() -> str:
    return f"msg_{uuid.uuid4().hex[:27]}"


def sign(body: str, svix_id: str, when: dt.datetime | None = None) -> dict[str, str]:
    when = when or dt.datetime.now(dt.UTC)
    return {
        "svix-id": svix_id,
        "svix-timestamp": str(int(when.timestamp())),
        "svix-signature": Webhook(SECRET).sign(svix_id, when, body),
    }


def _entity(prefix: str, tag: str, number: int) -> str:
    return f"{prefix}_bench{tag}{number:08d}"


def generate(distinct: int, *, duplicate_fraction: float = 0.2, seed: int = 6, tag: str = "") -> list[Event]:
    """``distinct`` events in Clerk order plus duplicates (``duplicate_fraction`` of the total)."""
    rng = random.Random(seed)
    templates = {name: sample(name) for name in MIX}
    templates["user.created"]["data"]["external_accounts"] = [_GOOGLE_ACCOUNT]
    templates["user.updated"]["data"]["external_accounts"] = [_GOOGLE_ACCOUNT]
    templates["user.updated"]["data"]["phone_numbers"] = [_PHONE]
    users = max(1, distinct // 8)
    orgs = max(1, distinct // 80)
    memberships = max(1, distinct // 16)
    types = list(MIX)
    weights = [MIX[name] for name in types]
    base_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000) - 3_600_000
    events: list[Event] = []
    for index in range(distinct):
        event_type = rng.choices(types, weights)[0]
        payload = copy.deepcopy(templates[event_type])
        data = payload["data"]
        at_ms = base_ms + index * 10
        kind = event_type.split(".")[0]
        if kind == "user":
            data["id"] = _entity("user", tag, rng.randrange(users))
        elif kind == "organization":
            data["id"] = _entity("org", tag, rng.randrange(orgs))
        elif kind == "organizationMembership":
            data["id"] = _entity("orgmem", tag, rng.randrange(memberships))
            if "organization" in data:
                data["organization"]["id"] = _entity("org", tag, rng.randrange(orgs))
            if "public_user_data" in data:
                data["public_user_data"]["user_id"] = _entity("user", tag, rng.randrange(users))
        else:  # session.created
            data["id"] = f"sess_bench{tag}{index:08d}"
            data["user_id"] = _entity("user", tag, rng.randrange(users))
        if "updated_at" in data:
            data["updated_at"] = at_ms
        payload["timestamp"] = at_ms + 12
        events.append(Event(new_svix_id(), event_type, dumps(payload)))
    # Duplicates: the same delivery again, a little later in the stream (a Svix retry or redelivery).
    duplicates = round(distinct * duplicate_fraction / (1 - duplicate_fraction))
    keyed = [(float(i), event) for i, event in enumerate(events)]
    for _ in range(duplicates):
        original = rng.randrange(distinct)
        keyed.append((original + rng.randint(1, 200) + 0.5, events[original]))
    keyed.sort(key=lambda pair: pair[0])
    return [event for _, event in keyed]
