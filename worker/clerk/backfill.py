"""Import existing users, organizations, memberships, invitations and domains from Clerk's Backend API.

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.events import InvalidEvent, read_object
from shared.models import ControlFlag
from shared.resources import BY_NAME, ORGANIZATIONS, RESOURCES
from worker.clerk.api import ClerkClient, ClerkNotFound
from worker.pipeline.apply import Change, apply_changes
from worker.pipeline.batch import deadlock_retries
from worker.pipeline.handlers import change_from_object

log = structlog.get_logger("clerk_sync.backfill")

# Resource names in the order they are backfilled: parents before children.
RESOURCE_NAMES = tuple(resource.name for resource in RESOURCES)
PER_ORGANIZATION = "per_organization"
# One page of a listing: its offset, how many it listed (a short page is the last), the objects to apply.
_Page = tuple[int, int, list[dict[str, Any]]]


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


def changes_from_objects(resource: str, items: Iterable[dict[str, Any]]) -> tuple[list[Change], int]:
    """API objects as changes by the webhook rules; also how many were skipped as invalid."""
    kind = BY_NAME[resource]
    changes, skipped = [], 0
    for item in items:
        try:
            changes.append(change_from_object(kind, read_object(kind, item), sent=item))
        except InvalidEvent as exc:
            skipped += 1
            log.warning("backfill_object_skipped", resource=resource, error=str(exc))
    return changes, skipped


def apply_objects(session: Session, resource: str, items: Iterable[dict[str, Any]], *, settings: Settings) -> int:
    """Apply API objects in the caller's transaction; how many rows changed."""
    changes, _ = changes_from_objects(resource, items)
    applied = apply_changes(
        session,
        changes,
        scrub_pii=settings.deleted_user_pii == "scrub",
        sync_private_metadata=settings.sync_private_metadata,
    )
    return sum(result.changed for result in applied)


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
    changes, skipped = changes_from_objects(result.resource, items)
    for attempt in deadlock_retries():  # a deadlock with a concurrent webhook
        with attempt, factory.begin() as session:
            outcomes = apply_changes(
                session,
                changes,
                scrub_pii=settings.deleted_user_pii == "scrub",
                sync_private_metadata=settings.sync_private_metadata,
            )
            applied = sum(outcome.changed for outcome in outcomes)
            unchanged = len(outcomes) - applied
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
    kind = BY_NAME[resource]
    if kind.clerk.list_path is None:  # listed per organization only (invitations, domains)
        mode = PER_ORGANIZATION
    if mode != PER_ORGANIZATION:
        try:
            pages = _list_pages(client, result, page_size=page_size)
            _apply_pages(factory, result, pages, mode=None, settings=settings, page_size=page_size, on_page=on_page)
            return result
        except ClerkNotFound:
            if kind.clerk.per_organization_path is None:
                raise
            # No instance-wide list: walk the organizations instead.
            # Its offsets count organizations, so start over (re-applying is harmless).
            log.info("backfill_per_organization", resource=resource)
            result.offset = result.resumed_from = 0
    pages = _per_organization_pages(client, result, page_size=page_size)
    _apply_pages(factory, result, pages, mode=PER_ORGANIZATION, settings=settings, page_size=page_size, on_page=on_page)
    return result


def _list_pages(client: ClerkClient, result: ResourceResult, *, page_size: int) -> Iterator[_Page]:
    """The resource's instance-wide list, from the saved offset."""
    path = BY_NAME[result.resource].clerk.list_path
    assert path is not None
    for offset, page in client.iter_pages(path, limit=page_size, offset=result.offset):
        if page.total_count is not None:
            result.total = page.total_count
        yield offset, len(page.items), page.items


def _per_organization_pages(client: ClerkClient, result: ResourceResult, *, page_size: int) -> Iterator[_Page]:
    """Organization by organization (invitations and domains; memberships when the instance-wide list
    is missing); the offset counts organizations."""
    kind = BY_NAME[result.resource]
    organizations = ORGANIZATIONS.clerk.list_path
    assert organizations is not None
    for offset, page in client.iter_pages(organizations, limit=page_size, offset=result.offset):
        items = [
            item
            for organization in page.items
            if isinstance(organization.get("id"), str) and organization["id"].startswith(ORGANIZATIONS.id_prefix)
            for item in client.list_of_organization(kind, organization["id"], limit=page_size)
        ]
        yield offset, len(page.items), items


def _apply_pages(
    factory: sessionmaker[Session],
    result: ResourceResult,
    pages: Iterator[_Page],
    *,
    mode: str | None,
    settings: Settings,
    page_size: int,
    on_page: ProgressCallback | None,
) -> None:
    """Apply each page and save the offset after it; a short page is the last."""
    for offset, listed, items in pages:
        _apply_page(
            factory,
            result,
            items,
            next_offset=offset + listed,
            done=listed < page_size,
            mode=mode,
            settings=settings,
            on_page=on_page,
        )


def backfill(
    factory: sessionmaker[Session],
    client: ClerkClient,
    resources: Iterable[str] = RESOURCE_NAMES,
    *,
    settings: Settings,
    page_size: int = 500,
    restart: bool = False,
    on_page: ProgressCallback | None = None,
) -> list[ResourceResult]:
    """Backfill ``resources`` in order (users, organizations, then what belongs to organizations)."""
    results = []
    for resource in resources:
        result = backfill_resource(
            factory, client, resource, settings=settings, page_size=page_size, restart=restart, on_page=on_page
        )
        log.info("backfill_finished", **result.as_dict())
        results.append(result)
    return results
