"""Import existing users, organizations and memberships from Clerk's Backend API.

Every object goes through the same convergence functions as webhooks
(``worker.pipeline.apply``), so a backfill racing live events never overwrites newer data
and never resurrects a deleted row. Each page is one transaction that also records
how far the backfill got (``clerk_sync_control`` row ``backfill:<resource>``), so an
interrupted run resumes at the page after the last committed one; the row is
removed when the resource is complete. A second run over unchanged data applies
nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.models import ControlFlag
from worker.clerk.api import MEMBERSHIPS, ORGANIZATIONS, USERS, ClerkClient, ClerkNotFound
from worker.pipeline import apply
from worker.pipeline.process import deadlock_retries

log = structlog.get_logger("clerk_sync.backfill")

RESOURCES = (USERS, ORGANIZATIONS, MEMBERSHIPS)
PER_ORGANIZATION = "per_organization"


@dataclass
class ResourceResult:
    """What one resource's backfill did; ``offset`` is where the next page starts."""

    resource: str
    fetched: int = 0
    applied: int = 0
    unchanged: int = 0
    skipped: int = 0
    resumed_from: int = 0
    offset: int = 0
    total: int | None = None
    complete: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


ProgressCallback = Callable[[ResourceResult], None]


def progress_key(resource: str) -> str:
    return f"backfill:{resource}"


def load_progress(session: Session, resource: str) -> dict[str, Any] | None:
    value = session.scalar(select(ControlFlag.value).where(ControlFlag.name == progress_key(resource)))
    if value is None:
        return None
    try:
        progress = json.loads(value)
    except json.JSONDecodeError:
        return None
    return progress if isinstance(progress, dict) and isinstance(progress.get("offset"), int) else None


def save_progress(session: Session, resource: str, *, offset: int, total: int | None, mode: str | None) -> None:
    value = json.dumps(
        {"offset": offset, "total": total, "mode": mode, "saved_at": dt.datetime.now(dt.UTC).isoformat()}
    )
    stmt = pg_insert(ControlFlag).values(name=progress_key(resource), value=value)
    session.execute(
        stmt.on_conflict_do_update(index_elements=["name"], set_={"value": value, "updated_at": func.now()})
    )


def clear_progress(session: Session, resource: str) -> None:
    session.execute(delete(ControlFlag).where(ControlFlag.name == progress_key(resource)))


def apply_object(session: Session, resource: str, data: dict[str, Any], *, settings: Settings) -> bool:
    """Apply one API object by the webhook rules; True when the row changed."""
    if resource == USERS:
        fields = apply.user_fields(data, fallback_ms=None)
        return apply.upsert_user(session, fields, scrub_pii=settings.deleted_user_pii == "scrub")
    if resource == ORGANIZATIONS:
        return apply.upsert_organization(session, apply.organization_fields(data, fallback_ms=None))
    return apply.upsert_membership(session, apply.membership_fields(data, fallback_ms=None))


def _valid(item: dict[str, Any]) -> bool:
    clerk_id = item.get("id")
    return isinstance(clerk_id, str) and 0 < len(clerk_id) <= 64


def _apply_page(
    factory: sessionmaker[Session],
    result: ResourceResult,
    items: Iterable[dict[str, Any]],
    *,
    next_offset: int,
    done: bool,
    mode: str | None,
    settings: Settings,
    on_page: ProgressCallback | None = None,
) -> None:
    """One transaction: the page's objects and the progress marker, together; then report it."""
    items = list(items)
    for attempt in deadlock_retries():  # a deadlock with a concurrent webhook
        with attempt, factory.begin() as session:
            applied = unchanged = skipped = 0
            for item in items:
                if not _valid(item):
                    skipped += 1
                elif apply_object(session, result.resource, item, settings=settings):
                    applied += 1
                else:
                    unchanged += 1
            if done:
                clear_progress(session, result.resource)
            else:
                save_progress(session, result.resource, offset=next_offset, total=result.total, mode=mode)
    result.fetched += len(items)
    result.applied += applied
    result.unchanged += unchanged
    result.skipped += skipped
    result.offset = next_offset
    result.complete = done
    log.info("backfill_page", **result.as_dict())
    if on_page:
        on_page(result)


def backfill_resource(
    factory: sessionmaker[Session],
    client: ClerkClient,
    resource: str,
    *,
    settings: Settings,
    page_size: int,
    restart: bool = False,
    on_page: ProgressCallback | None = None,
) -> ResourceResult:
    """Page through one resource from its saved offset (or 0) to the end."""
    with factory.begin() as session:
        progress = None if restart else load_progress(session, resource)
        if restart:
            clear_progress(session, resource)
    offset = progress["offset"] if progress else 0
    mode = progress.get("mode") if progress else None
    result = ResourceResult(resource=resource, resumed_from=offset, offset=offset)
    log.info("backfill_started", resource=resource, offset=offset)
    if resource == MEMBERSHIPS and mode != PER_ORGANIZATION:
        try:
            _backfill_list(factory, client, result, settings=settings, page_size=page_size, on_page=on_page)
            return result
        except ClerkNotFound:
            # No instance-wide membership list: walk the organizations instead.
            # Its offsets count organizations, so start over (re-applying is harmless).
            log.info("backfill_memberships_per_organization")
            result.offset = result.resumed_from = 0
    if resource == MEMBERSHIPS:
        _backfill_memberships_per_organization(
            factory, client, result, settings=settings, page_size=page_size, on_page=on_page
        )
        return result
    _backfill_list(factory, client, result, settings=settings, page_size=page_size, on_page=on_page)
    return result


def _backfill_list(
    factory: sessionmaker[Session],
    client: ClerkClient,
    result: ResourceResult,
    *,
    settings: Settings,
    page_size: int,
    on_page: ProgressCallback | None,
) -> None:
    for offset, page in client.iter_pages(result.resource, limit=page_size, offset=result.offset):
        if page.total_count is not None:
            result.total = page.total_count
        _apply_page(
            factory,
            result,
            page.items,
            next_offset=offset + len(page.items),
            done=len(page.items) < page_size,
            mode=None,
            settings=settings,
            on_page=on_page,
        )


def _backfill_memberships_per_organization(
    factory: sessionmaker[Session],
    client: ClerkClient,
    result: ResourceResult,
    *,
    settings: Settings,
    page_size: int,
    on_page: ProgressCallback | None,
) -> None:
    """The fallback: memberships organization by organization; the offset counts organizations."""
    for offset, page in client.iter_pages(ORGANIZATIONS, limit=page_size, offset=result.offset):
        memberships = [
            membership
            for organization in page.items
            if _valid(organization)
            for membership in client.list_organization_memberships(organization["id"], limit=page_size)
        ]
        _apply_page(
            factory,
            result,
            memberships,
            next_offset=offset + len(page.items),
            done=len(page.items) < page_size,
            mode=PER_ORGANIZATION,
            settings=settings,
            on_page=on_page,
        )


def backfill(
    factory: sessionmaker[Session],
    client: ClerkClient,
    resources: Iterable[str] = RESOURCES,
    *,
    settings: Settings,
    page_size: int = 500,
    restart: bool = False,
    on_page: ProgressCallback | None = None,
) -> list[ResourceResult]:
    """Backfill ``resources`` in order (users, organizations, memberships)."""
    results = []
    for resource in resources:
        result = backfill_resource(
            factory, client, resource, settings=settings, page_size=page_size, restart=restart, on_page=on_page
        )
        log.info("backfill_finished", **result.as_dict())
        results.append(result)
    return results
