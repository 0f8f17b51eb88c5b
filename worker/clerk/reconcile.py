"""Compare the synced tables with what Clerk's Backend API says, and optionally repair.

Three kinds of drift, per resource (users, organizations, memberships, invitations, domains):

- ``missing``: Clerk has it, the table has no row at all;
- ``vanished``: the table has a live row (``deleted_at`` null) Clerk no longer lists.
  Rows written after the comparison started (``synced_at``) are left out, so a
  webhook applied mid-run is not mistaken for drift;
- ``stale``: a live row whose synced fields differ from Clerk's while the row's
  version (``clerk_updated_at``) is not newer than Clerk's ``updated_at``. A row
  newer than the snapshot is a webhook that overtook the run, not drift. Fields Clerk
  changes without a new ``updated_at`` (``last_active_at``, ``members_count``), private
  metadata and ``clerk_data`` are not compared; a row holding no ``clerk_data`` at all
  (synced before it was kept) is stale.

A tombstoned row that Clerk still lists is not drift: deletes are final
(CONTRACT section 5) and the usual cause is a delete landing mid-run.

``fix`` repairs through the webhook convergence functions: missing and stale
objects are upserted, vanished users and organizations are confirmed one by one
(``GET /v1/users/{id}``) and memberships, invitations and domains against their
organization's list, then tombstoned with ``deleted_at = now()``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.events import InvalidEvent, read_object
from shared.resources import BY_NAME, ORGANIZATIONS
from worker.clerk.api import ClerkClient
from worker.clerk.backfill import RESOURCE_NAMES, changes_from_objects
from worker.pipeline.apply import Change, apply_changes
from worker.pipeline.batch import deadlock_retries
from worker.pipeline.handlers import change_from_object

log = structlog.get_logger("clerk_sync.reconcile")

KINDS = ("missing", "vanished", "stale")
SAMPLE_SIZE = 5
# More vanished rows than this share of a resource's live rows looks like the wrong
# CLERK_SECRET_KEY (another instance), not drift: --fix refuses to tombstone them.
MASS_DELETE_SHARE = 0.25
MASS_DELETE_MIN = 10


def _expected(resource: str, data: dict[str, Any]) -> Change | None:
    """What the row should hold for Clerk's object; None when the object is not a valid one."""
    kind = BY_NAME[resource]
    try:
        return change_from_object(kind, read_object(kind, data), sent=data)
    except InvalidEvent as exc:
        log.warning("reconcile_object_skipped", resource=resource, error=str(exc))
        return None


@dataclass
class Drift:
    """One resource's comparison; the id lists are complete, reports show a sample."""

    resource: str
    in_clerk: int = 0
    in_table: int = 0
    missing: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    fixed: int = 0
    refused: str | None = None

    @property
    def total(self) -> int:
        return len(self.missing) + len(self.vanished) + len(self.stale)

    def as_dict(self) -> dict[str, Any]:
        report: dict[str, Any] = {"in_clerk": self.in_clerk, "in_table": self.in_table}
        for kind in KINDS:
            ids = sorted(getattr(self, kind))
            report[kind] = {"count": len(ids), "sample": ids[:SAMPLE_SIZE]}
        report["fixed"] = self.fixed
        if self.refused:
            report["refused"] = self.refused
        return report


@dataclass
class Report:
    resources: list[Drift]
    fix: bool

    @property
    def drift_found(self) -> bool:
        return any(d.total for d in self.resources)

    def as_dict(self) -> dict[str, Any]:
        return {
            "drift": self.drift_found,
            "fix": self.fix,
            "resources": {d.resource: d.as_dict() for d in self.resources},
        }

    def counts(self) -> dict[str, int]:
        """Flat counts for a log line: ``users_missing=1, ...``."""
        return {f"{d.resource}_{kind}": len(getattr(d, kind)) for d in self.resources for kind in KINDS}


def compare(session: Session, resource: str, objects: dict[str, dict[str, Any]], *, started_at: dt.datetime) -> Drift:
    """Drift between Clerk's ``objects`` (by id) and the table, as the module docstring defines it."""
    model = BY_NAME[resource].model
    # The columns Clerk owns, compared field by field (application columns such as `plan` never are,
    # nor clerk_data, private metadata and what Clerk changes without a new version).
    names = BY_NAME[resource].compared_columns
    columns = [model.clerk_id, model.deleted_at, model.clerk_updated_at, model.synced_at]
    # A row without clerk_data was synced before it was kept (migration 0004): stale, to refresh it.
    never_kept = model.clerk_data.is_(None).label("never_kept")
    statement = select(*columns, never_kept, *(getattr(model, n) for n in names))
    rows = {row.clerk_id: row for row in session.execute(statement)}
    drift = Drift(resource=resource, in_clerk=len(objects))
    drift.in_table = sum(1 for row in rows.values() if row.deleted_at is None)
    for clerk_id, data in objects.items():
        row = rows.get(clerk_id)
        if row is None:
            drift.missing.append(clerk_id)
            continue
        if row.deleted_at is not None:
            continue
        expected = _expected(resource, data)
        if expected is None or expected.row is None or expected.version is None:
            continue
        newer_in_table = row.clerk_updated_at is not None and row.clerk_updated_at > expected.version
        if not newer_in_table and (row.never_kept or any(getattr(row, n) != expected.row[n] for n in names)):
            drift.stale.append(clerk_id)
    drift.vanished = [
        clerk_id
        for clerk_id, row in rows.items()
        if row.deleted_at is None and clerk_id not in objects and row.synced_at < started_at
    ]
    return drift


def fetch(client: ClerkClient, resources: Iterable[str], *, page_size: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Everything Clerk lists for ``resources``, by id."""
    snapshot = {}
    for resource in resources:
        items = client.list_all(BY_NAME[resource], limit=page_size)
        snapshot[resource] = {item["id"]: item for item in items if isinstance(item.get("id"), str)}
        log.info("reconcile_fetched", resource=resource, count=len(snapshot[resource]))
    return snapshot


def repair(
    session: Session,
    drift: Drift,
    objects: dict[str, dict[str, Any]],
    *,
    confirmed: dict[str, dict[str, Any] | None],
    settings: Settings,
) -> int:
    """Apply one resource's fixes in ``session``; returns the rows changed.

    ``confirmed`` maps the vanished ids to tombstone to None, or to Clerk's object
    when a second, direct look still found it (the list shifted while it was read).
    """
    model = BY_NAME[drift.resource].model
    kind = BY_NAME[drift.resource]
    fixes, _ = changes_from_objects(drift.resource, [objects[clerk_id] for clerk_id in drift.missing + drift.stale])
    for fix in fixes:
        # Same version, different data (an edit behind clerk-sync's back): step the
        # version back by one so the convergence rule lets Clerk's data in.
        session.execute(
            update(model)
            .where(model.clerk_id == fix.clerk_id, model.clerk_updated_at == fix.version)
            .values(clerk_updated_at=model.clerk_updated_at - 1)
        )
    still_there, _ = changes_from_objects(drift.resource, [data for data in confirmed.values() if data is not None])
    now = dt.datetime.now(dt.UTC)
    gone = [
        Change(resource=kind, clerk_id=clerk_id, deleted_at=now) for clerk_id, data in confirmed.items() if not data
    ]
    outcomes = apply_changes(
        session,
        [*fixes, *still_there, *gone],
        scrub_pii=settings.deleted_user_pii == "scrub",
        sync_private_metadata=settings.sync_private_metadata,
    )
    return sum(outcome.changed for outcome in outcomes)


def mass_delete_refusal(drift: Drift) -> str | None:
    """Why tombstoning this many rows looks like a mistake, or None when it does not."""
    if len(drift.vanished) <= max(MASS_DELETE_MIN, MASS_DELETE_SHARE * drift.in_table):
        return None
    return (
        f"{len(drift.vanished)} of {drift.in_table} {drift.resource} vanished: not tombstoned "
        "(wrong CLERK_SECRET_KEY?); rerun with --allow-mass-delete if this is right"
    )


def _confirm_vanished(
    session: Session, drift: Drift, *, client: ClerkClient, page_size: int
) -> dict[str, dict[str, Any] | None]:
    """Each vanished id mapped to Clerk's object if a direct look still finds it, else None."""
    kind = BY_NAME[drift.resource]
    if kind.clerk.object_path is not None:
        return {clerk_id: client.get_object(kind, clerk_id) for clerk_id in drift.vanished}
    # Listed per organization: look again at each organization that still exists.
    found: dict[str, dict[str, Any] | None] = dict.fromkeys(drift.vanished)
    column = getattr(kind.model, kind.parent_columns["organizations"])
    organizations = session.scalars(select(column).where(kind.model.clerk_id.in_(drift.vanished)).distinct())
    for organization_id in organizations:
        if organization_id is None or client.get_object(ORGANIZATIONS, organization_id) is None:
            continue
        for item in client.list_of_organization(kind, organization_id, limit=page_size):
            if item.get("id") in found:
                found[item["id"]] = item
    return found


def reconcile(
    factory: sessionmaker[Session],
    client: ClerkClient,
    *,
    settings: Settings,
    resources: Iterable[str] = RESOURCE_NAMES,
    fix: bool = False,
    allow_mass_delete: bool = False,
    page_size: int = 500,
) -> Report:
    """Fetch, compare and (with ``fix``) repair; the report says what was found before repair."""
    resources = list(resources)
    with factory() as session:
        # The database's clock, the one synced_at is written with.
        started_at: dt.datetime = session.execute(select(func.now())).scalar_one()
    snapshot = fetch(client, resources, page_size=page_size)
    report = Report(resources=[], fix=fix)
    for resource in resources:
        with factory() as session:
            drift = compare(session, resource, snapshot[resource], started_at=started_at)
        if fix and drift.total:
            confirmed: dict[str, dict[str, Any] | None] = {}
            if drift.vanished:
                drift.refused = None if allow_mass_delete else mass_delete_refusal(drift)
                if drift.refused:
                    log.warning("reconcile_mass_delete_refused", resource=resource, count=len(drift.vanished))
                else:
                    with factory() as session:
                        confirmed = _confirm_vanished(session, drift, client=client, page_size=page_size)
            for attempt in deadlock_retries():
                with attempt, factory.begin() as session:
                    drift.fixed = repair(session, drift, snapshot[resource], confirmed=confirmed, settings=settings)
        report.resources.append(drift)
    log.info("reconcile_finished", drift=report.drift_found, fix=fix, **report.counts())
    return report
