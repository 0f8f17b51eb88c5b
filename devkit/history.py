"""Event histories in Clerk's shape, and a reference model of what they must converge to.

A history is what Clerk did, in Clerk's order: each event carries the time it happened
(``at``, whole seconds in milliseconds so that a value written in seconds is exact). The
builder tracks Clerk's own state so that it only emits events Clerk could send (no update
of a deleted user, a membership only between a live user and a live organization).

``reference_tables`` applies each distinct event once, in that order, with the rules of
CONTRACT section 5, written here independently of ``worker/pipeline/apply.py``. ``snapshot`` reads
the same view of the real tables, so a test compares the two with ``==``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from devkit.services import empty_tables

START_MS = 1_716_883_200_000
STEP_MS = 1_000
USER_PII = ("email", "first_name", "last_name", "username", "image_url")


@dataclass(frozen=True)
class Event:
    """One Clerk event as it would be delivered, plus what the model needs to know."""

    svix_id: str
    type: str
    at: int  # when it happened in Clerk, ms: data.updated_at for upserts, envelope timestamp for deletes
    payload: dict[str, Any]

    @property
    def body(self) -> str:
        return json.dumps(self.payload)

    @property
    def entity_id(self) -> str:
        return str(self.payload["data"]["id"])

    def replayed(self) -> Event:
        """The same event under a new svix-id, as a manual replay of old data would be."""
        return Event(svix_id=new_svix_id(), type=self.type, at=self.at, payload=copy.deepcopy(self.payload))


def new_svix_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def _clerk_time(ms: int, rng: random.Random) -> int:
    """Clerk sends milliseconds; older shapes and the spec's examples use seconds."""
    return ms // 1000 if rng.random() < 0.25 else ms


@dataclass
class _Membership:
    clerk_id: str
    user_id: str
    org_id: str
    first_data: dict[str, Any]
    data: dict[str, Any]


@dataclass
class HistoryBuilder:
    """Emits a plausible Clerk history one event at a time, in Clerk's order."""

    rng: random.Random
    prefix: str = "h"
    now: int = START_MS
    events: list[Event] = field(default_factory=list)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # live users' current data
    orgs: dict[str, dict[str, Any]] = field(default_factory=dict)
    memberships: dict[str, _Membership] = field(default_factory=dict)  # active ones
    invitations: dict[str, dict[str, Any]] = field(default_factory=dict)  # pending ones
    domains: dict[str, dict[str, Any]] = field(default_factory=dict)  # live ones
    deleted_users: set[str] = field(default_factory=set)
    deleted_orgs: set[str] = field(default_factory=set)
    _counter: int = 0

    def _tick(self) -> int:
        self.now += STEP_MS
        return self.now

    def _next_id(self, kind: str) -> str:
        self._counter += 1
        return f"{kind}_{self.prefix}{self._counter:04d}"

    def _emit(self, event_type: str, data: dict[str, Any], at: int) -> Event:
        deleted = event_type.endswith(".deleted")
        payload = {
            "data": data,
            "event_attributes": {"http_request": {"client_ip": "192.0.2.1", "user_agent": "history-builder"}},
            "instance_id": "ins_history",
            "object": "event",
            # Deletes are ordered by this; for other events it is just a little after updated_at.
            "timestamp": _clerk_time(at, self.rng) if deleted else at + 12,
            "type": event_type,
        }
        if self.rng.random() < 0.2:
            del payload["event_attributes"]  # older shapes have none
        event = Event(svix_id=new_svix_id(), type=event_type, at=at, payload=payload)
        self.events.append(event)
        return event

    def _put(
        self,
        noun: str,
        live: dict[str, dict[str, Any]],
        data_of: Callable[[str, int, int], dict[str, Any]],
        clerk_id: str,
    ) -> Event:
        """A new version of a user or an organization: `.created` if ``live`` lacks it, else `.updated`."""
        at = self._tick()
        previous = live.get(clerk_id)
        live[clerk_id] = data = data_of(clerk_id, at, at if previous is None else previous["created_at"])
        return self._emit(f"{noun}.{'created' if previous is None else 'updated'}", data, at)

    # Users

    def _user_data(self, clerk_id: str, at: int, created_at: int) -> dict[str, Any]:
        rng = self.rng
        tag = f"{clerk_id}-{at}"
        addresses = [
            {"id": f"idn_{tag}-{n}", "object": "email_address", "email_address": f"{tag}-{n}@example.com"}
            for n in range(rng.randint(0, 3))
        ]
        rng.shuffle(addresses)
        primary = rng.choice(addresses)["id"] if addresses else None
        phones = [{"id": f"idn_phone_{tag}-{n}", "phone_number": f"+1555555{at % 10000:04d}{n}"} for n in range(2)]
        return {
            "object": "user",
            "id": clerk_id,
            "primary_email_address_id": primary,
            "email_addresses": addresses,
            "primary_phone_number_id": rng.choice([None, phones[0]["id"], phones[1]["id"]]),
            "phone_numbers": phones,
            "external_id": rng.choice([None, f"ext-{tag}"]),
            "banned": rng.random() < 0.2,
            "locked": rng.random() < 0.1,
            "last_sign_in_at": rng.choice([None, _clerk_time(at - STEP_MS, rng)]),
            "last_active_at": _clerk_time(at, rng),
            "unsafe_metadata": rng.choice([{}, {"theme": tag}]),
            "first_name": rng.choice([None, f"First {tag}"]),
            "last_name": f"Last {tag}",
            "username": rng.choice([None, f"user{tag}"]),
            "image_url": f"https://img.example.com/{tag}",
            "public_metadata": rng.choice([{}, {"tier": tag}, {"nested": {"at": at}}]),
            "private_metadata": {"secret": tag},
            "created_at": created_at,
            "updated_at": _clerk_time(at, rng),
        }

    def create_user(self) -> Event:
        return self._put("user", self.users, self._user_data, self._next_id("user"))

    def update_user(self, clerk_id: str) -> Event:
        return self._put("user", self.users, self._user_data, clerk_id)

    def delete_user(self, clerk_id: str) -> Event:
        del self.users[clerk_id]
        self.deleted_users.add(clerk_id)
        for membership_id in [m.clerk_id for m in self.memberships.values() if m.user_id == clerk_id]:
            del self.memberships[membership_id]
        return self._emit("user.deleted", {"object": "user", "id": clerk_id, "deleted": True}, self._tick())

    # Organizations

    def _org_data(self, clerk_id: str, at: int, created_at: int) -> dict[str, Any]:
        tag = f"{clerk_id}-{at}"
        return {
            "object": "organization",
            "id": clerk_id,
            "name": f"Org {tag}",
            "slug": f"org-{tag}".lower(),
            "image_url": self.rng.choice([None, f"https://img.example.com/{tag}"]),
            "public_metadata": self.rng.choice([{}, {"plan_hint": tag}]),
            "members_count": self.rng.randint(0, 9),
            "max_allowed_memberships": self.rng.choice([5, 10, 0]),
            "created_by": self.rng.choice([None, *sorted(self.users)[:1]]),
            "private_metadata": {"internal": tag},
            "created_at": created_at,
            "updated_at": _clerk_time(at, self.rng),
        }

    def create_org(self) -> Event:
        return self._put("organization", self.orgs, self._org_data, self._next_id("org"))

    def update_org(self, clerk_id: str) -> Event:
        return self._put("organization", self.orgs, self._org_data, clerk_id)

    def delete_org(self, clerk_id: str) -> Event:
        slug = self.orgs.pop(clerk_id)["slug"]
        self.deleted_orgs.add(clerk_id)
        for membership_id in [m.clerk_id for m in self.memberships.values() if m.org_id == clerk_id]:
            del self.memberships[membership_id]
        # Its invitations and domains go with it, without events of their own.
        for invitation_id in [i for i, data in self.invitations.items() if data["organization_id"] == clerk_id]:
            del self.invitations[invitation_id]
        for domain_id in [d for d, data in self.domains.items() if data["organization_id"] == clerk_id]:
            del self.domains[domain_id]
        data = {"object": "organization", "id": clerk_id, "slug": slug, "deleted": True}
        return self._emit("organization.deleted", data, self._tick())

    # Memberships

    def _membership_data(self, clerk_id: str, user_id: str, org_id: str, role: str, at: int, created: int):  # type: ignore[no-untyped-def]
        return {
            "object": "organization_membership",
            "id": clerk_id,
            "role": role,
            "permissions": ["org:sys_profile:read"] + (["org:sys_memberships:manage"] if role == "org:admin" else []),
            "public_metadata": self.rng.choice([{}, {"seat": at}]),
            "private_metadata": {"note": at},
            "organization": {"object": "organization", "id": org_id, "name": self.orgs[org_id]["name"]},
            "public_user_data": {
                "user_id": user_id,
                "first_name": self.users[user_id]["first_name"],
                "identifier": f"{user_id}@example.com",
            },
            "created_at": created,
            "updated_at": _clerk_time(at, self.rng),
        }

    def join(self, user_id: str, org_id: str) -> Event:
        """A new membership (a user rejoining after leaving gets a new membership id)."""
        clerk_id = self._next_id("orgmem")
        at = self._tick()
        data = self._membership_data(clerk_id, user_id, org_id, self.rng.choice(["org:member", "admin"]), at, at)
        self.memberships[clerk_id] = _Membership(clerk_id, user_id, org_id, data, data)
        return self._emit("organizationMembership.created", data, at)

    def change_role(self, membership_id: str) -> Event:
        membership = self.memberships[membership_id]
        at = self._tick()
        role = "org:admin" if membership.data["role"] != "org:admin" else "org:member"
        data = self._membership_data(
            membership_id, membership.user_id, membership.org_id, role, at, membership.first_data["created_at"]
        )
        membership.data = data
        return self._emit("organizationMembership.updated", data, at)

    def leave(self, membership_id: str) -> Event:
        """The delete carries the full membership; often Clerk's stale copy (older updated_at)."""
        membership = self.memberships.pop(membership_id)
        data = copy.deepcopy(membership.first_data if self.rng.random() < 0.5 else membership.data)
        return self._emit("organizationMembership.deleted", data, self._tick())

    # Invitations (never deleted: pending, then accepted or revoked) and domains

    def _add(
        self,
        event_type: str,
        live: dict[str, dict[str, Any]],
        *,
        object_name: str,
        prefix: str,
        fields: Callable[[str, int], dict[str, Any]],
    ) -> Event:
        """A new invitation or domain, kept in ``live``; ``fields(clerk_id, at)``: all it holds but its id and times."""
        clerk_id = self._next_id(prefix)
        at = self._tick()
        data = {
            "object": object_name,
            "id": clerk_id,
            **fields(clerk_id, at),
            "created_at": at,
            "updated_at": _clerk_time(at, self.rng),
        }
        live[clerk_id] = data
        return self._emit(event_type, data, at)

    def invite(self, org_id: str) -> Event:
        def fields(clerk_id: str, at: int) -> dict[str, Any]:
            return {
                # Never one of a user's addresses: which addresses a scrub matches depends on delivery order.
                "email_address": f"invitee-{clerk_id}@example.net",
                "role": self.rng.choice(["org:member", "org:admin"]),
                "organization_id": org_id,
                "status": "pending",
                "public_metadata": {},
                "private_metadata": {"invited_by": "history"},
                "url": None,
                "expires_at": at + 7 * 86_400_000,
            }

        return self._add(
            "organizationInvitation.created",
            self.invitations,
            object_name="organization_invitation",
            prefix="orginv",
            fields=fields,
        )

    def settle_invitation(self, invitation_id: str, *, accepted_by: str | None) -> Event:
        """Accepted by a live user, or revoked (``accepted_by`` None); either is final."""
        data = copy.deepcopy(self.invitations.pop(invitation_id))
        at = self._tick()
        data.update(status="accepted" if accepted_by else "revoked", updated_at=_clerk_time(at, self.rng))
        if accepted_by:
            data["user_id"] = accepted_by
        return self._emit(f"organizationInvitation.{data['status']}", data, at)

    def add_domain(self, org_id: str) -> Event:
        def fields(clerk_id: str, at: int) -> dict[str, Any]:
            return {
                "organization_id": org_id,
                "name": f"{clerk_id}.example.com".lower(),
                "enrollment_mode": "automatic_invitation",
                "affiliation_email_address": None,
                "verification": None,
            }

        return self._add(
            "organizationDomain.created",
            self.domains,
            object_name="organization_domain",
            prefix="orgdmn",
            fields=fields,
        )

    def update_domain(self, domain_id: str) -> Event:
        data = copy.deepcopy(self.domains[domain_id])
        at = self._tick()
        data.update(
            enrollment_mode=self.rng.choice(["automatic_invitation", "automatic_suggestion", "manual_invitation"]),
            verification=self.rng.choice([None, {"status": "verified", "strategy": "email_code", "attempts": 1}]),
            updated_at=_clerk_time(at, self.rng),
        )
        self.domains[domain_id] = data
        return self._emit("organizationDomain.updated", data, at)

    def delete_domain(self, domain_id: str) -> Event:
        del self.domains[domain_id]
        data = {"object": "organization_domain", "id": domain_id, "deleted": True}
        return self._emit("organizationDomain.deleted", data, self._tick())

    def active_pairs(self) -> set[tuple[str, str]]:
        return {(m.user_id, m.org_id) for m in self.memberships.values()}

    # Random steps

    def step(self, choice: int, a: int, b: int) -> Event | None:
        """One random but valid operation, chosen by three small integers; None if not possible."""
        users, orgs, memberships = sorted(self.users), sorted(self.orgs), sorted(self.memberships)
        invitations, domains = sorted(self.invitations), sorted(self.domains)
        kind = choice % 12
        if kind == 0:
            return self.create_user()
        if kind == 1:
            return self.create_org()
        if kind == 2 and users:
            return self.update_user(users[a % len(users)])
        if kind == 3 and orgs:
            return self.update_org(orgs[a % len(orgs)])
        if kind in (4, 5) and users and orgs:
            pair = (users[a % len(users)], orgs[b % len(orgs)])
            return None if pair in self.active_pairs() else self.join(*pair)
        if kind == 6 and memberships:
            return self.change_role(memberships[a % len(memberships)])
        if kind == 7 and memberships:
            return self.leave(memberships[a % len(memberships)])
        if kind == 8 and a % 3 == 0 and users:
            return self.delete_user(users[b % len(users)])
        if kind == 8 and a % 3 == 1 and orgs:
            return self.delete_org(orgs[b % len(orgs)])
        if kind == 9 and orgs and (a % 2 == 0 or not invitations):
            return self.invite(orgs[a % len(orgs)])
        if kind == 9 and invitations:
            accepted_by = users[b % len(users)] if users and b % 3 else None
            return self.settle_invitation(invitations[a % len(invitations)], accepted_by=accepted_by)
        if kind == 10 and orgs and (a % 2 == 0 or not domains):
            return self.add_domain(orgs[b % len(orgs)])
        if kind in (10, 11) and domains:
            domain = domains[b % len(domains)]
            return self.update_domain(domain) if kind == 10 or a % 3 else self.delete_domain(domain)
        return None


def random_history(
    rng: random.Random,
    *,
    users: int,
    orgs: int,
    memberships: int,
    updates: int,
    deletes: int,
    invitations: int = 0,
    domains: int = 0,
) -> HistoryBuilder:
    """A larger history: entities first, then updates, role changes, leaves/rejoins, invitations settled
    or left pending, domains updated or removed, and deletes mixed."""
    history = HistoryBuilder(rng=rng, prefix=uuid.uuid4().hex[:6])
    for _ in range(users):
        history.create_user()
    for _ in range(orgs):
        history.create_org()
    joined = 0
    while joined < memberships:
        pair = (rng.choice(sorted(history.users)), rng.choice(sorted(history.orgs)))
        if pair not in history.active_pairs():
            history.join(*pair)
            joined += 1
    for _ in range(updates):
        roll = rng.random()
        if roll < 0.35:
            history.update_user(rng.choice(sorted(history.users)))
        elif roll < 0.5:
            history.update_org(rng.choice(sorted(history.orgs)))
        elif roll < 0.75 and history.memberships:
            history.change_role(rng.choice(sorted(history.memberships)))
        elif history.memberships:
            # Leave, and sometimes rejoin the same organization under a new membership id.
            membership = history.memberships[rng.choice(sorted(history.memberships))]
            history.leave(membership.clerk_id)
            if rng.random() < 0.5:
                history.join(membership.user_id, membership.org_id)
    for _ in range(invitations):
        history.invite(rng.choice(sorted(history.orgs)))
    for _ in range(domains):
        history.add_domain(rng.choice(sorted(history.orgs)))
    for invitation_id in sorted(history.invitations):
        roll = rng.random()
        if roll < 0.6:
            accepted_by = rng.choice(sorted(history.users)) if roll < 0.4 else None
            history.settle_invitation(invitation_id, accepted_by=accepted_by)
    for domain_id in sorted(history.domains):
        if rng.random() < 0.6:
            history.update_domain(domain_id)
        if rng.random() < 0.3:
            history.delete_domain(domain_id)
    for n in range(deletes):
        if n % 3 == 2 and len(history.orgs) > 1:
            history.delete_org(rng.choice(sorted(history.orgs)))
        elif len(history.users) > 1:
            history.delete_user(rng.choice(sorted(history.users)))
    return history


# The reference model


# 2100-01-01 in seconds: Clerk's times up to it are seconds, later ones milliseconds (the valid
# ranges, 2000-2100 in each unit, do not overlap: shared.clerk_objects).
_SECONDS_UP_TO = 4_102_444_800


def _ms(value: Any) -> int:
    number = int(value)
    return number * 1000 if number <= _SECONDS_UP_TO else number


def _primary(data: dict[str, Any], wanted_key: str, list_key: str, value_key: str) -> str | None:
    wanted = data.get(wanted_key)
    for item in data.get(list_key) or []:
        if item.get("id") == wanted:
            return item.get(value_key)
    return None


def _time_ms(value: Any) -> int | None:
    return None if value is None else _ms(value)


def _numbers_as_decimals(value: Any) -> Any:
    """JSON with every number a Decimal: jsonb keeps a number's value, not its spelling (1e+30)."""
    if isinstance(value, dict):
        return {key: _numbers_as_decimals(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers_as_decimals(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(repr(value))
    return value


def _canonical(tables: Tables) -> Tables:
    """Every jsonb value with its numbers as Decimals, in the model and in the snapshot alike."""
    return {
        table: {
            clerk_id: {k: _numbers_as_decimals(v) if isinstance(v, dict | list) else v for k, v in row.items()}
            for clerk_id, row in rows.items()
        }
        for table, rows in tables.items()
    }


def _sent(data: dict[str, Any], *, nested: tuple[str, ...] = ()) -> dict[str, Any]:
    """clerk_data: the object as sent, without private metadata (SYNC_PRIVATE_METADATA is off), its own
    or that of the objects under ``nested`` (a membership's organization)."""
    sent = {key: value for key, value in data.items() if key != "private_metadata"}
    for key in nested:
        if isinstance(sent.get(key), dict):
            sent[key] = {k: v for k, v in sent[key].items() if k != "private_metadata"}
    return sent


def _user_row(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "email": _primary(data, "primary_email_address_id", "email_addresses", "email_address"),
        "first_name": data.get("first_name"),
        "last_name": data.get("last_name"),
        "username": data.get("username"),
        # Older shapes name the picture profile_image_url only.
        "image_url": data.get("image_url") or data.get("profile_image_url"),
        "public_metadata": data.get("public_metadata") or {},
        "external_id": data.get("external_id"),
        "phone_number": _primary(data, "primary_phone_number_id", "phone_numbers", "phone_number"),
        "banned": bool(data.get("banned")),
        "locked": bool(data.get("locked")),
        "last_sign_in_at": _time_ms(data.get("last_sign_in_at")),
        "last_active_at": _time_ms(data.get("last_active_at")),
        "unsafe_metadata": data.get("unsafe_metadata") or {},
        "private_metadata": None,
        "clerk_data": _sent(data),
    }


def _org_row(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": data.get("name"),
        "slug": data.get("slug"),
        "image_url": data.get("image_url") or data.get("logo_url"),
        "public_metadata": data.get("public_metadata") or {},
        "members_count": data.get("members_count"),
        "max_allowed_memberships": data.get("max_allowed_memberships"),
        "created_by": data.get("created_by"),
        "private_metadata": None,
        "clerk_data": _sent(data),
    }


def _membership_row(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "organization_clerk_id": (data.get("organization") or {}).get("id"),
        "user_clerk_id": (data.get("public_user_data") or {}).get("user_id"),
        "role": data.get("role"),
        "permissions": data.get("permissions") or [],
        "public_metadata": data.get("public_metadata") or {},
        "private_metadata": None,
        "clerk_data": _sent(data, nested=("organization",)),
    }


def _invitation_row(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "organization_clerk_id": data.get("organization_id"),
        "email": data.get("email_address"),
        "role": data.get("role"),
        "status": data.get("status"),
        "user_clerk_id": data.get("user_id"),
        "expires_at": _time_ms(data.get("expires_at")),
        "clerk_data": _sent(data),
    }


def _domain_row(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "organization_clerk_id": data.get("organization_id"),
        "name": data.get("name"),
        "enrollment_mode": data.get("enrollment_mode"),
        "verification_status": (data.get("verification") or {}).get("status"),
        "clerk_data": _sent(data),
    }


_EMPTY: dict[str, dict[str, Any]] = {
    "users": dict.fromkeys(_user_row({}))
    | {"banned": False, "locked": False, "public_metadata": {}}
    | {"unsafe_metadata": {}, "clerk_data": None},
    "organizations": dict.fromkeys(_org_row({})) | {"public_metadata": {}, "clerk_data": None},
    "organization_memberships": dict.fromkeys(_membership_row({}))
    | {"permissions": [], "public_metadata": {}, "clerk_data": None},
    "organization_invitations": dict.fromkeys(_invitation_row({})),
    "organization_domains": dict.fromkeys(_domain_row({})),
}
_TABLE_OF = {
    "user": "users",
    "organization": "organizations",
    "organizationMembership": "organization_memberships",
    "organizationInvitation": "organization_invitations",
    "organizationDomain": "organization_domains",
}
_ROW_OF = {
    "users": _user_row,
    "organizations": _org_row,
    "organization_memberships": _membership_row,
    "organization_invitations": _invitation_row,
    "organization_domains": _domain_row,
}
# Child table -> (parent table, column naming the parent): a parent's delete makes the child inactive.
_PARENTS = {
    "organization_memberships": (("users", "user_clerk_id"), ("organizations", "organization_clerk_id")),
    "organization_invitations": (("organizations", "organization_clerk_id"),),
    "organization_domains": (("organizations", "organization_clerk_id"),),
}
# With scrubbing, a deleted user's columns emptied, and what is emptied in rows naming the user.
_SCRUBBED_USER = dict.fromkeys((*USER_PII, "external_id", "phone_number", "private_metadata", "clerk_data")) | {
    "unsafe_metadata": {}
}

Tables = dict[str, dict[str, dict[str, Any]]]


def _whole_membership(data: dict[str, Any]) -> bool:
    """Whether a membership delete carries the whole membership (older shapes carry less): only
    then do its fields count like an update's (``DeletedMembership.as_membership``)."""
    return all(isinstance(data.get(key), dict) for key in ("organization", "public_user_data")) and (
        data.get("updated_at") is not None
    )


def reference_tables(events: list[Event], *, scrub_pii: bool = False, private_metadata: bool = False) -> Tables:
    """Apply each distinct event once in Clerk's order: what the tables must hold when drained.

    - created/updated: the row takes the event's data if it is newer (by Clerk's
      ``updated_at``, then by the envelope's ``timestamp``) than what it holds; a deleted
      row still takes older data it never saw (it keeps its last known fields);
    - a membership delete carries the membership: its data counts like an update,
      so a stale copy (older ``updated_at``) changes no field; one that does not carry a
      whole membership (no organization, user or ``updated_at``) only deletes;
    - deleted_at is the earliest delete: the entity's own, or for a membership its
      user's or organization's, for an invitation or a domain its organization's;
    - an invitation is never deleted: its status is the newest event's;
    - private metadata is kept only with ``private_metadata`` (SYNC_PRIVATE_METADATA);
    - with scrubbing, a deleted user's PII columns are empty, and so are the clerk_data of
      their memberships and the address and clerk_data of invitations they accepted.
    """
    distinct = {event.svix_id: event for event in events}
    tables: Tables = {name: {} for name in _EMPTY}
    versions: dict[tuple[str, str], tuple[int, int]] = {}
    for event in sorted(distinct.values(), key=lambda e: e.at):
        family, _, action = event.type.rpartition(".")
        table = _TABLE_OF.get(family)
        if table is None:
            continue  # not synced
        data = event.payload["data"]
        clerk_id = data["id"]
        row = tables[table].setdefault(
            clerk_id, {"clerk_id": clerk_id, **copy.deepcopy(_EMPTY[table])} | {"deleted_at": None}
        )
        carries_data = action != "deleted" or (table == "organization_memberships" and _whole_membership(data))
        if carries_data:
            version = (_ms(data.get("updated_at") or data.get("created_at")), _ms(event.payload["timestamp"]))
            if version > versions.get((table, clerk_id), (-1, -1)):
                versions[(table, clerk_id)] = version
                row.update(_ROW_OF[table](data))
                if private_metadata:  # SYNC_PRIVATE_METADATA on: kept in its column and in clerk_data
                    row["clerk_data"] = copy.deepcopy(data)
                    if "private_metadata" in row:
                        row["private_metadata"] = data.get("private_metadata")
        if action == "deleted":
            deleted_at = _ms(event.payload["timestamp"])
            row["deleted_at"] = deleted_at if row["deleted_at"] is None else min(row["deleted_at"], deleted_at)
    # A user's or organization's delete makes its children inactive, whenever they arrive.
    for child_table, parents in _PARENTS.items():
        for child in tables[child_table].values():
            for parent_table, key in parents:
                parent = tables[parent_table].get(child[key] or "")
                if parent and parent["deleted_at"] is not None:
                    current = child["deleted_at"]
                    child["deleted_at"] = (
                        parent["deleted_at"] if current is None else min(current, parent["deleted_at"])
                    )
    if scrub_pii:
        deleted = {clerk_id for clerk_id, user in tables["users"].items() if user["deleted_at"] is not None}
        for clerk_id in deleted:
            tables["users"][clerk_id].update(copy.deepcopy(_SCRUBBED_USER))
        for membership in tables["organization_memberships"].values():
            if membership["user_clerk_id"] in deleted:
                membership["clerk_data"] = None
        for invitation in tables["organization_invitations"].values():
            if invitation["user_clerk_id"] in deleted:
                invitation.update(email=None, clerk_data=None)
    return _canonical(tables)


_SNAPSHOT_COLUMNS = {table: tuple(columns) for table, columns in _EMPTY.items()}
_TIME_COLUMNS = ("last_sign_in_at", "last_active_at", "expires_at")


def _to_ms(value: dt.datetime | None) -> int | None:
    return None if value is None else round(value.timestamp() * 1000)


def snapshot(session: Session, columns_of: dict[str, tuple[str, ...]] | None = None) -> Tables:
    """The synced columns of the real tables (or of ``columns_of``), shaped like ``reference_tables``."""
    tables: Tables = {}
    for table, columns in (columns_of or _SNAPSHOT_COLUMNS).items():
        rows = session.execute(text(f"SELECT clerk_id, {', '.join(columns)}, deleted_at FROM {table}"))  # noqa: S608
        tables[table] = {
            row.clerk_id: {"clerk_id": row.clerk_id}
            | {c: _to_ms(getattr(row, c)) if c in _TIME_COLUMNS else getattr(row, c) for c in columns}
            | {"deleted_at": _to_ms(row.deleted_at)}
            for row in rows
        }
    return _canonical(tables)


def columns_present(session: Session) -> dict[str, tuple[str, ...]]:
    """The synced tables and columns that exist on the search path: a reference pipeline's schema keeps
    the columns CONTRACT section 4 started with, not every column clerk-sync has added since."""
    rows = session.execute(
        text(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ANY(:tables)"
        ),
        {"tables": list(_SNAPSHOT_COLUMNS)},
    )
    present: dict[str, set[str]] = {}
    for table, column in rows:
        present.setdefault(table, set()).add(column)
    return {
        table: tuple(c for c in columns if c in present[table])
        for table, columns in _SNAPSHOT_COLUMNS.items()
        if table in present
    }


def restricted(tables: Tables, columns_of: dict[str, tuple[str, ...]]) -> Tables:
    """``tables`` with only the tables and columns of ``columns_of`` (plus clerk_id and deleted_at)."""
    return {
        table: {
            key: {c: v for c, v in row.items() if c in columns_of[table] or c in ("clerk_id", "deleted_at")}
            for key, row in tables[table].items()
        }
        for table in columns_of
    }


def empty_synced_tables(session: Session) -> None:
    """Start an example from empty tables, in the session's transaction."""
    empty_tables(lambda statement: session.execute(text(statement)))


# Issue 19's realistic traffic: the share of each event type in a Clerk instance's stream.
REALISTIC_MIX = {
    "user.updated": 0.35,
    "organizationMembership.created": 0.22,
    "user.created": 0.12,
    "organizationMembership.updated": 0.12,
    "organizationMembership.deleted": 0.10,
    "organization.updated": 0.04,
    "organization.created": 0.03,
    "user.deleted": 0.015,
    "organization.deleted": 0.005,
}


def realistic_history(rng: random.Random, count: int, *, prefix: str | None = None) -> list[Event]:
    """``count`` events in Clerk's order with ``REALISTIC_MIX``'s shares, no duplicates.

    A type that is not possible at that point (an update with no user yet, a membership between
    a pair already joined) becomes the create it needs instead.
    """
    history = HistoryBuilder(rng=rng, prefix=prefix or uuid.uuid4().hex[:6])
    users: list[str] = []
    orgs: list[str] = []
    memberships: list[str] = []
    pairs: set[tuple[str, str]] = set()
    types, weights = list(REALISTIC_MIX), list(REALISTIC_MIX.values())

    def pick(live: list[str]) -> str:
        return live[rng.randrange(len(live))]

    def drop(live: list[str], item: str) -> None:
        live.remove(item)

    while len(history.events) < count:
        kind = rng.choices(types, weights)[0]
        if kind == "user.created" or (not users and kind.startswith("user.")):
            users.append(history.create_user().entity_id)
        elif kind == "organization.created" or not orgs:
            orgs.append(history.create_org().entity_id)
        elif kind == "user.updated":
            history.update_user(pick(users))
        elif kind in ("user.deleted", "organization.deleted"):
            live, delete = (users, history.delete_user) if kind == "user.deleted" else (orgs, history.delete_org)
            if len(live) > 1:  # keep one, so memberships always have a pair to join
                entity_id = pick(live)
                delete(entity_id)
                drop(live, entity_id)
                memberships[:] = [m for m in memberships if m in history.memberships]
                pairs = history.active_pairs()
        elif kind == "organization.updated":
            history.update_org(pick(orgs))
        elif kind == "organizationMembership.created" or not memberships:
            pair = (pick(users), pick(orgs)) if users else None
            if pair is None or pair in pairs:
                users.append(history.create_user().entity_id)
                continue
            memberships.append(history.join(*pair).entity_id)
            pairs.add(pair)
        elif kind == "organizationMembership.updated":
            history.change_role(pick(memberships))
        elif kind == "organizationMembership.deleted":
            membership_id = pick(memberships)
            membership = history.memberships[membership_id]
            pairs.discard((membership.user_id, membership.org_id))
            history.leave(membership_id)
            drop(memberships, membership_id)
    return history.events[:count]
