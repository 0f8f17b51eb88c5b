"""A small client for the parts of Clerk's Backend API that backfill, reconcile and
``ensure_user`` read: the lists and objects the resource table (``shared.resources``) names.

Clerk answers lists in two shapes: ``GET /v1/users`` is a bare JSON array, the
others are ``{"data": [...], "total_count": N}``; ``list_page`` hides the difference.
Rate limits (429) wait for ``Retry-After``; 5xx answers, timeouts and dropped
connections are retried with exponential backoff and jitter; anything else, or a
retry budget spent, is a ``ClerkApiError`` whose message is one line.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from shared.config import Settings
from shared.resources import ORGANIZATIONS, Resource

log = structlog.get_logger("clerk_sync.clerk_api")

# Clerk accepts 1..500 per page.
MAX_PAGE_SIZE = 500

# Clerk's error codes (``form_param_value_invalid``): a name, never a value.
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


class ClerkApiError(Exception):
    """The API could not be read; the message is one line, fit for an operator."""


class ClerkNotFound(ClerkApiError):
    """404: the object (or the endpoint) does not exist."""


class _Retryable(Exception):
    """A failure worth another try; ``retry_after`` is Clerk's Retry-After, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    # None when Clerk does not say (the bare-array user list).
    total_count: int | None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class ClerkClient:
    """Authenticated, retrying GETs against ``base_url`` (CLERK_API_URL)."""

    def __init__(
        self,
        base_url: str,
        secret_key: str,
        *,
        attempts: int = 6,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        max_retry_after: float = 60.0,
        timeout: tuple[float, float] = (5.0, 30.0),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.attempts = max(1, attempts)
        self.timeout = timeout
        self.max_retry_after = max_retry_after
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.http = requests.Session()
        self.http.headers.update(
            {"Authorization": f"Bearer {secret_key}", "Accept": "application/json", "User-Agent": "clerk-sync"}
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ClerkClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after)
        # Exponential with jitter: initial, 2x, 4x ... up to backoff_max, plus up to `initial` at random.
        step = self.backoff_initial * 2 ** (state.attempt_number - 1)
        return min(step, self.backoff_max) + random.uniform(0, self.backoff_initial)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """The decoded JSON of ``GET path``, retried as the module docstring says."""
        url = self.base_url + path
        retrying = Retrying(
            retry=retry_if_exception_type(_Retryable),
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            before_sleep=lambda state: log.warning(
                "clerk_api_retry",
                path=path,
                attempt=state.attempt_number,
                error=str(state.outcome.exception()) if state.outcome else None,
            ),
            reraise=True,
        )
        try:
            return retrying(self._get_once, url, path, params)
        except _Retryable as exc:
            raise ClerkApiError(f"Clerk API {path}: {exc} (gave up after {self.attempts} attempts)") from None

    def _get_once(self, url: str, path: str, params: dict[str, Any] | None) -> Any:
        try:
            response = self.http.get(url, params=params, timeout=self.timeout)
        except requests.Timeout:
            raise _Retryable("timed out") from None
        except requests.ConnectionError as exc:
            raise _Retryable(f"connection failed ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            raise ClerkApiError(f"Clerk API {path}: {type(exc).__name__}") from None
        status = response.status_code
        if status == 429:
            raise _Retryable("429 rate limited", retry_after=_retry_after(response.headers.get("Retry-After")))
        if status >= 500:
            raise _Retryable(f"{status} server error")
        if status == 404:
            raise ClerkNotFound(f"Clerk API {path}: 404 not found")
        if status in (401, 403):
            raise ClerkApiError(f"Clerk API {path}: {status}, CLERK_SECRET_KEY was refused")
        if status >= 400:
            raise ClerkApiError(f"Clerk API {path}: {status}{_error_code(response)}")
        try:
            return response.json()
        except ValueError:
            raise ClerkApiError(f"Clerk API {path}: {status} answer is not JSON") from None

    def list_page(self, path: str, *, limit: int, offset: int) -> Page:
        """One page of a list, oldest first so that offsets stay put while Clerk grows."""
        body = self.get(path, {"limit": limit, "offset": offset, "order_by": "created_at"})
        if isinstance(body, list):
            return Page(items=[item for item in body if isinstance(item, dict)], total_count=None)
        if isinstance(body, dict) and isinstance(body.get("data"), list):
            total = body.get("total_count")
            return Page(
                items=[item for item in body["data"] if isinstance(item, dict)],
                total_count=total if isinstance(total, int) else None,
            )
        raise ClerkApiError(f"Clerk API {path}: unexpected answer shape ({type(body).__name__})")

    def iter_pages(self, path: str, *, limit: int, offset: int = 0) -> Iterator[tuple[int, Page]]:
        """``(offset, page)`` from ``offset`` until a short page says the list is done."""
        while True:
            page = self.list_page(path, limit=limit, offset=offset)
            yield offset, page
            if len(page.items) < limit:
                return
            offset += len(page.items)

    def list_path(self, path: str, *, limit: int = MAX_PAGE_SIZE) -> list[dict[str, Any]]:
        return [item for _, page in self.iter_pages(path, limit=limit) for item in page.items]

    def list_all(self, resource: Resource, *, limit: int = MAX_PAGE_SIZE) -> list[dict[str, Any]]:
        """Every object of ``resource``; per organization when Clerk has no instance-wide list of it."""
        if resource.clerk.list_path is not None and resource.clerk.per_organization_path is None:
            return self.list_path(resource.clerk.list_path, limit=limit)
        if resource.clerk.list_path is not None:
            try:
                return self.list_path(resource.clerk.list_path, limit=limit)
            except ClerkNotFound:
                pass
        organizations = self.list_all(ORGANIZATIONS, limit=limit)
        return [
            item
            for organization in organizations
            if isinstance(organization.get("id"), str)
            for item in self.list_of_organization(resource, organization["id"], limit=limit)
        ]

    def list_of_organization(self, resource: Resource, organization_id: str, *, limit: int) -> list[dict[str, Any]]:
        """One organization's objects of ``resource`` (its memberships, say)."""
        assert resource.clerk.per_organization_path is not None
        return self.list_path(resource.clerk.per_organization_path.format(organization_id=organization_id), limit=limit)

    def get_object(self, resource: Resource, clerk_id: str) -> dict[str, Any] | None:
        """One object, or None when Clerk has no such object (404)."""
        assert resource.clerk.object_path is not None
        path = resource.clerk.object_path.format(id=clerk_id)
        try:
            body = self.get(path)
        except ClerkNotFound:
            return None
        if not isinstance(body, dict):
            raise ClerkApiError(f"Clerk API {path}: unexpected answer shape ({type(body).__name__})")
        return body


def _error_code(response: requests.Response) -> str:
    """Clerk's error code (`` form_param_value_invalid``), or nothing. Never its message nor the body:
    a message can quote a user's data, and a proxy's page can echo the request, key included."""
    try:
        code = response.json()["errors"][0]["code"]
    except (ValueError, LookupError, TypeError):
        return ""
    return f" {code}" if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else ""


def client_from_settings(settings: Settings, **options: Any) -> ClerkClient:
    """A client for CLERK_API_URL; ConfigError (one line) when CLERK_SECRET_KEY is unset."""
    return ClerkClient(settings.clerk_api_url, settings.require_clerk_secret_key(), **options)
