"""A local stand-in for Clerk's Backend API: a real HTTP server on 127.0.0.1.

It serves Clerk's response shapes from in-memory lists (``GET /v1/users`` is a bare
array; organizations, memberships, and each organization's invitations and domains are
``{"data", "total_count"}``), paginates by
``limit``/``offset`` oldest first, checks the bearer token, records every request,
and can be told to misbehave: answer a 429 with ``Retry-After``, a 500, or fail
every page from some offset on.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SECRET_KEY = "sk_test_fakeclerk0000000000000000"
BASE_MS = 1_700_000_000_000
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Łukasz", "Zoë")


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    status: int


@dataclass
class Fault:
    status: int
    path_prefix: str
    retry_after: str | None = None
    from_offset: int = 0
    remaining: int | None = 1  # None: forever
    body: Any = None  # what it answers (JSON, or text as it is); None: Clerk's error shape


@dataclass
class FakeClerk:
    """In-memory Clerk; mutate ``users``/``organizations``/``memberships`` freely."""

    users: list[dict[str, Any]] = field(default_factory=list)
    organizations: list[dict[str, Any]] = field(default_factory=list)
    memberships: list[dict[str, Any]] = field(default_factory=list)
    invitations: list[dict[str, Any]] = field(default_factory=list)
    domains: list[dict[str, Any]] = field(default_factory=list)
    instance_memberships_endpoint: bool = True
    page_delay: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(
        self,
        status: int,
        path_prefix: str,
        *,
        retry_after: str | None = None,
        times: int | None = 1,
        from_offset: int = 0,
        body: Any = None,
    ) -> None:
        """The next ``times`` requests under ``path_prefix`` (at ``offset >= from_offset``) get ``status``
        (and ``body``, when given)."""
        with self.lock:
            self.faults.append(Fault(status, path_prefix, retry_after, from_offset, times, body))

    def heal(self) -> None:
        with self.lock:
            self.faults.clear()

    def requests_to(self, path: str, status: int | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path == path and (status is None or s.status == status)]

    def offsets(self, path: str) -> list[int]:
        """The offsets of successful list requests to ``path``, in order."""
        return [int(s.query.get("offset", "0")) for s in self.requests_to(path, 200)]

    def _fault_for(self, path: str, offset: int) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if path.startswith(fault.path_prefix) and offset >= fault.from_offset and fault.remaining != 0:
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    def route(self, path: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        offset = int(query.get("offset", "0"))
        fault = self._fault_for(path, offset)
        if fault is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            body = fault.body if fault.body is not None else _error("fake_fault", f"fault {fault.status}")
            return fault.status, body, headers
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"]:
            return 404, _not_found(), {}
        parts = parts[1:]
        if parts == ["users"]:
            return self._page(self.users, query, bare=True)
        if parts == ["organizations"]:
            return self._page(self.organizations, query, bare=False)
        if parts == ["organization_memberships"] and self.instance_memberships_endpoint:
            return self._page(self.memberships, query, bare=False)
        if len(parts) == 2 and parts[0] in ("users", "organizations"):
            items = self.users if parts[0] == "users" else self.organizations
            found = next((item for item in list(items) if item["id"] == parts[1]), None)
            return (200, found, {}) if found else (404, _not_found(), {})
        if len(parts) == 3 and parts[0] == "organizations" and parts[2] == "memberships":
            members = [m for m in list(self.memberships) if m["organization"]["id"] == parts[1]]
            return self._page(members, query, bare=False)
        if len(parts) == 3 and parts[0] == "organizations" and parts[2] in ("invitations", "domains"):
            # Clerk lists every status of invitation unless asked for some (``status``).
            items = self.invitations if parts[2] == "invitations" else self.domains
            return self._page([i for i in list(items) if i["organization_id"] == parts[1]], query, bare=False)
        return 404, _not_found(), {}

    def _page(
        self, items: list[dict[str, Any]], query: dict[str, str], *, bare: bool
    ) -> tuple[int, Any, dict[str, str]]:
        try:
            limit = int(query.get("limit", "10"))
            offset = int(query.get("offset", "0"))
        except ValueError:
            return 422, {"errors": [{"code": "form_param_format_invalid", "message": "bad limit/offset"}]}, {}
        if not 1 <= limit <= 500 or offset < 0:
            return 422, {"errors": [{"code": "form_param_value_invalid", "message": "limit must be 1..500"}]}, {}
        if self.page_delay:
            time.sleep(self.page_delay)
        ordered = sorted(list(items), key=lambda item: (item["created_at"], item["id"]))
        page = ordered[offset : offset + limit]
        return 200, (page if bare else {"data": page, "total_count": len(ordered)}), {}


def _error(code: str, message: str) -> dict[str, Any]:
    """Clerk's error answer."""
    return {"errors": [{"code": code, "message": message}]}


def _not_found() -> dict[str, Any]:
    return _error("resource_not_found", "not found")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        clerk = self.server.clerk
        if self.headers.get("Authorization") != f"Bearer {SECRET_KEY}":
            status, body, headers = 401, {"errors": [{"code": "authentication_invalid", "message": "bad key"}]}, {}
        else:
            status, body, headers = clerk.route(parts.path, query)
        with clerk.lock:
            clerk.seen.append(Seen(parts.path, query, status))
        text = isinstance(body, str)
        data = body.encode() if text else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads `seen` instead
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    clerk: FakeClerk


class FakeClerkServer:
    """``with FakeClerkServer(clerk) as server: server.url``"""

    def __init__(self, clerk: FakeClerk) -> None:
        self.clerk = clerk
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.clerk = clerk
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-clerk", daemon=True)

    def __enter__(self) -> FakeClerkServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


# Realistic objects ---------------------------------------------------------------------


def make_user(n: int, *, updated_ms: int | None = None, first_name: str | None = None, **extra: Any) -> dict[str, Any]:
    """A Backend API user; every third has two addresses with the primary one second."""
    created = BASE_MS + n * 1000
    emails = [_email(f"idn_{n:05d}a", f"user{n}@example.com")]
    if n % 3 == 0:
        emails.insert(0, _email(f"idn_{n:05d}b", f"old.user{n}@example.org"))
    user = {
        "id": f"user_{n:05d}xAbCdEfGhIjKlMnOp",
        "object": "user",
        "username": f"user{n}" if n % 2 else None,
        "first_name": first_name or FIRST_NAMES[n % len(FIRST_NAMES)],
        "last_name": f"Tester{n}",
        "image_url": f"https://img.clerk.com/u{n}.png",
        "has_image": n % 4 == 0,
        "primary_email_address_id": f"idn_{n:05d}a",
        "primary_phone_number_id": None,
        "email_addresses": emails,
        "phone_numbers": [],
        "public_metadata": {"n": n, "tier": "beta"} if n % 5 == 0 else {},
        "private_metadata": {},
        "unsafe_metadata": {},
        "external_id": None,
        "banned": False,
        "locked": False,
        "last_sign_in_at": created + 5000,
        "created_at": created,
        "updated_at": updated_ms or created + 10_000,
    }
    user.update(extra)
    return user


def _email(identifier: str, address: str) -> dict[str, Any]:
    return {
        "id": identifier,
        "object": "email_address",
        "email_address": address,
        "reserved": False,
        "verification": {"status": "verified", "strategy": "email_code", "attempts": 1, "expire_at": None},
        "linked_to": [],
    }


def make_organization(n: int, *, updated_ms: int | None = None, **extra: Any) -> dict[str, Any]:
    created = BASE_MS + n * 7000
    org = {
        "id": f"org_{n:05d}QrStUvWxYz",
        "object": "organization",
        "name": f"Org {n}",
        "slug": f"org-{n}",
        "image_url": f"https://img.clerk.com/o{n}.png",
        "has_image": True,
        "members_count": 3,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": True,
        "public_metadata": {"region": "eu"} if n % 2 else {},
        "private_metadata": {},
        "created_by": None,
        "created_at": created,
        "updated_at": updated_ms or created + 1000,
    }
    org.update(extra)
    return org


def make_membership(
    n: int, organization: dict[str, Any], user: dict[str, Any], *, role: str = "org:member"
) -> dict[str, Any]:
    created = BASE_MS + n * 3000
    return {
        "id": f"orgmem_{n:05d}HiJkLmNoPq",
        "object": "organization_membership",
        "role": role,
        "role_name": "Member",
        "permissions": [],
        "public_metadata": {},
        "private_metadata": {},
        "organization": {
            k: organization[k] for k in ("id", "object", "name", "slug", "image_url", "created_at", "updated_at")
        },
        "public_user_data": {
            "user_id": user["id"],
            "first_name": user["first_name"],
            "last_name": user["last_name"],
            "image_url": user["image_url"],
            "has_image": False,
            "identifier": user["email_addresses"][-1]["email_address"],
        },
        "created_at": created,
        "updated_at": created + 500,
    }


def make_invitation(n: int, organization: dict[str, Any], *, status: str = "pending", **extra: Any) -> dict[str, Any]:
    """A Backend API organization invitation."""
    created = BASE_MS + n * 5000
    invitation = {
        "object": "organization_invitation",
        "id": f"orginv_{n:05d}AbCdEfGh",
        "email_address": f"invitee{n}@example.net",
        "role": "org:member",
        "role_name": "Member",
        "organization_id": organization["id"],
        "status": status,
        "public_metadata": {},
        "private_metadata": {"source": "import"},
        "url": None,
        "expires_at": created + 7 * 86_400_000,
        "created_at": created,
        "updated_at": created + (0 if status == "pending" else 60_000),
    }
    invitation.update(extra)
    return invitation


def make_domain(n: int, organization: dict[str, Any], *, verified: bool = False, **extra: Any) -> dict[str, Any]:
    """A Backend API organization domain; ``verification`` is null until verified."""
    created = BASE_MS + n * 6000
    domain = {
        "object": "organization_domain",
        "id": f"orgdmn_{n:05d}IjKlMnOp",
        "organization_id": organization["id"],
        "name": f"org{n}.example.com",
        "enrollment_mode": "automatic_invitation",
        "affiliation_email_address": None,
        "verification": {"status": "verified", "strategy": "email_code", "attempts": 1, "expire_at": None}
        if verified
        else None,
        "total_pending_invitations": 0,
        "total_pending_suggestions": 0,
        "created_at": created,
        "updated_at": created + 1000,
    }
    domain.update(extra)
    return domain


def make_instance(
    users: int, organizations: int, members_per_org: int, *, invitations_per_org: int = 0, domains_per_org: int = 0
) -> FakeClerk:
    """A populated fake: memberships spread users over organizations, first one an admin; invitations
    in every status, every other domain verified."""
    clerk = FakeClerk()
    clerk.users = [make_user(n) for n in range(users)]
    clerk.organizations = [make_organization(n) for n in range(organizations)]
    n = 0
    for o, org in enumerate(clerk.organizations):
        for k in range(members_per_org):
            user = clerk.users[(o * 7 + k * 13) % users]
            clerk.memberships.append(make_membership(n, org, user, role="org:admin" if k == 0 else "org:member"))
            n += 1
    statuses = ("pending", "accepted", "revoked")
    for o, org in enumerate(clerk.organizations):
        for k in range(invitations_per_org):
            i = o * invitations_per_org + k
            clerk.invitations.append(make_invitation(i, org, status=statuses[i % 3]))
        for k in range(domains_per_org):
            d = o * domains_per_org + k
            clerk.domains.append(make_domain(d, org, verified=d % 2 == 0))
    return clerk


def primary_email_of(user: dict[str, Any]) -> str:
    return next(e["email_address"] for e in user["email_addresses"] if e["id"] == user["primary_email_address_id"])


# Running the real console script against it ---------------------------------------------


def clerk_env(base_env: dict[str, str], server: FakeClerkServer) -> dict[str, str]:
    """The test run's environment plus the key and URL of this fake Clerk."""
    return {**base_env, "CLERK_SECRET_KEY": SECRET_KEY, "CLERK_API_URL": server.url}
