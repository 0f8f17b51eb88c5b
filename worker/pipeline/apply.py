"""Apply changes to the synced tables so that any delivery order converges (CONTRACT section 5).

A ``Change`` is what one event (or one Backend API object) says about one row: its data and
version (Clerk's ``updated_at``), and/or a delete (Clerk's time of it). ``apply_changes``
applies a batch of them in the caller's transaction, with one statement per table and step,
and returns, per change, whether it changed anything:

- data is written only when it is newer than what the row holds, so an old event or API
  snapshot never overwrites a newer one, and an update seen before its create wins; between
  two versions of one ``updated_at``, the later event (by its envelope timestamp) wins;
- a delete leaves a tombstone (``deleted_at``) that nothing clears, the earliest delete
  winning; older data arriving after it still fills in the last known fields;
- deleting a parent (a user, an organization) makes its children inactive, including
  children that arrive later.

Locks are taken in one global order, so concurrent batches never deadlock each other and an
application that updates rows in key order never deadlocks with a batch: advisory locks on
parents (shared by a child's write, exclusive by the parent's delete) and on every row written
(exclusive, so that a row another batch is inserting is waited for), all in key order, then
existing rows table by table in ``RESOURCES`` order, each table by ``clerk_id``. With the
rows locked, the outcome of each change is decided here as if the batch's changes were applied
one at a time in order, and each table is then written once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.types import BigInteger, Boolean, DateTime, Integer

from shared.resources import BY_NAME, CLERK_DATA, PRIVATE_METADATA, RESOURCES, USERS, Resource
from worker.pipeline import roundtrips, scrub

STALE = "older than what the tables hold"
ALREADY_DELETED = "already deleted by an earlier delete"


@dataclass(frozen=True)
class Change:
    """What one event or API object says about one row."""

    resource: Resource
    clerk_id: str
    row: Mapping[str, Any] | None = None  # the resource's columns, when the change carries data
    version: int | None = None  # the data's updated_at, ms
    # The envelope timestamp of the event carrying the data, ms: Clerk's order between two versions
    # of one updated_at. None for a Backend API object (no envelope): it loses a tie.
    event_at: int | None = None
    created_at: int | None = None  # the data's created_at, ms
    deleted_at: dt.datetime | None = None  # when the change is a delete
    parents: Mapping[str, str] = field(default_factory=dict)  # parent resource name -> clerk_id
    user_id: str | None = None  # the user the object belongs to (resource.user_column), for the scrub


@dataclass(frozen=True)
class Applied:
    changed: bool
    reason: str | None = None


@dataclass
class Row:
    """What a locked row holds: its data's version (and its event's timestamp) and its tombstone."""

    version: int | None
    event_at: int | None
    deleted_at: dt.datetime | None

    def older_than(self, change: Change) -> bool:
        """Whether ``change``'s data is newer than the data held: by updated_at, then by event."""
        if self.version is None:
            return True
        return (self.version, self.event_at or 0) < (change.version or 0, change.event_at or 0)


@dataclass
class _Plan:
    outcomes: list[Applied] = field(default_factory=list)
    data: dict[tuple[str, str], Change] = field(default_factory=dict)  # the newest data per row
    tombstones: dict[tuple[str, str], dt.datetime] = field(default_factory=dict)  # the earliest delete per row


def apply_changes(
    session: Session, changes: Sequence[Change], *, scrub_pii: bool, sync_private_metadata: bool = False
) -> list[Applied]:
    """Apply ``changes`` in order, in the caller's transaction; one ``Applied`` per change.

    Private metadata (its columns, and its key in clerk_data) is stored only with ``sync_private_metadata``.
    Two round trips: every lock, then every write (``roundtrips``).
    """
    if not changes:
        return []
    with roundtrips.pipelined(session) as trips:
        locks = lock(trips, changes)
        trips.send()
        return write(trips, changes, locks.rows(), scrub_pii=scrub_pii, sync_private_metadata=sync_private_metadata)


def write(
    trips: roundtrips.Trips,
    changes: Sequence[Change],
    current: Mapping[tuple[str, str], Row],
    *,
    scrub_pii: bool,
    sync_private_metadata: bool = False,
) -> list[Applied]:
    """Queue the writes of ``changes``, whose rows ``lock`` holds; one ``Applied`` per change."""
    if not changes:
        return []
    plan = _plan(changes, current)
    for resource in RESOURCES:
        _write_data(trips, resource, plan, keep_private=sync_private_metadata)
        _write_tombstones(trips, resource, plan)
    _deactivate_children(trips, changes, plan)
    if scrub_pii:
        # Reads that decide the next writes: out of pipeline mode, on the session as usual.
        with trips.suspended():
            scrub.deleted_users_named(trips.session, _users_named(changes))
    return plan.outcomes


# -- locks ------------------------------------------------------------------------------------

_ADVISORY_LOCKS = text(
    """
    SELECT count(*) FROM (
        SELECT CASE WHEN k.exclusive THEN pg_advisory_xact_lock(hashtextextended(k.key, 0))
                    ELSE pg_advisory_xact_lock_shared(hashtextextended(k.key, 0)) END
        FROM (SELECT * FROM unnest(CAST(:keys AS text[]), CAST(:exclusive AS boolean[])) AS u(key, exclusive)
              ORDER BY u.key) AS k
    ) AS taken
    """
)


def _children_of(parent: str) -> list[Resource]:
    return [resource for resource in RESOURCES if parent in resource.parent_columns]


@dataclass(frozen=True)
class Locks:
    """The row locks queued for a batch; what the locked rows hold once they are sent."""

    cursors: list[tuple[str, Any]]  # resource name, its lock statement's cursor

    def rows(self) -> dict[tuple[str, str], Row]:
        return {
            (name, row.clerk_id): Row(row.clerk_updated_at, row.clerk_event_at, row.deleted_at)
            for name, cursor in self.cursors
            for row in cursor.fetchall()
        }


def lock(trips: roundtrips.Trips, changes: Sequence[Change]) -> Locks:
    """Queue every lock the writes of ``changes`` need, in the global order (module docstring)."""
    _lock_keys(trips, changes)
    return _lock_rows(trips, changes)


def _lock_keys(trips: roundtrips.Trips, changes: Sequence[Change]) -> None:
    """Order a child's write against its parent's delete: shared for the child, exclusive for the delete;
    and two writes of one row against each other, exclusive for each.

    Without the first, a membership inserted while its user is being deleted in another transaction
    could see the user alive and miss the deactivation that the delete (not seeing the
    membership yet) also misses. Without the second, a row another batch is inserting cannot be
    locked (it is not there yet): a batch would decide its older event applied, wait on the row's
    unique index, then write nothing, and record it ``processed`` rather than ``ignored``.
    """
    exclusive: dict[str, bool] = {}
    for change in changes:
        for parent, parent_id in change.parents.items():
            exclusive.setdefault(f"{parent}:{parent_id}", False)
        if change.deleted_at is not None and _children_of(change.resource.name):
            exclusive[f"{change.resource.name}:{change.clerk_id}"] = True
        exclusive[f"row:{change.resource.name}:{change.clerk_id}"] = True
    if exclusive:
        trips.queue(_ADVISORY_LOCKS, {"keys": list(exclusive), "exclusive": list(exclusive.values())})


@cache
def _lock_statement(resource: Resource) -> TextClause:
    table = resource.table_name
    by_parent = "".join(
        f" OR {column} = ANY(CAST(:deleted_{parent} AS text[]))" for parent, column in resource.parent_columns.items()
    )
    return text(
        f"SELECT clerk_id, clerk_updated_at, clerk_event_at, deleted_at FROM {table}"  # noqa: S608 - names from the resource table
        f" WHERE clerk_id = ANY(CAST(:ids AS text[])){by_parent} ORDER BY clerk_id FOR UPDATE"
    )


def _lock_rows(trips: roundtrips.Trips, changes: Sequence[Change]) -> Locks:
    """Lock every existing row the batch may write, table by table in key order."""
    ids: dict[str, set[str]] = {resource.name: set() for resource in RESOURCES}
    deleted_parents: dict[str, set[str]] = {resource.name: set() for resource in RESOURCES}
    for change in changes:
        ids[change.resource.name].add(change.clerk_id)
        if change.deleted_at is not None:
            deleted_parents[change.resource.name].add(change.clerk_id)
    cursors: list[tuple[str, Any]] = []
    for resource in RESOURCES:
        params: dict[str, list[str]] = {"ids": sorted(ids[resource.name])}
        for parent in resource.parent_columns:
            params[f"deleted_{parent}"] = sorted(deleted_parents[parent])
        if not any(params.values()):
            continue
        cursors.append((resource.name, trips.queue(_lock_statement(resource), params)))
    return Locks(cursors)


# -- deciding ---------------------------------------------------------------------------------


def _plan(changes: Sequence[Change], current: Mapping[tuple[str, str], Row]) -> _Plan:
    """Each change's outcome as if applied one at a time, and each row's final writes."""
    plan = _Plan()
    state = dict(current)
    for change in changes:
        key = (change.resource.name, change.clerk_id)
        row = state.get(key)
        newer = change.row is not None and (row is None or row.older_than(change))
        earlier = change.deleted_at is not None and (
            row is None or row.deleted_at is None or row.deleted_at > change.deleted_at
        )
        if row is None:
            row = state[key] = Row(None, None, None)
        if newer:
            row.version, row.event_at = change.version, change.event_at
            plan.data[key] = change
        if earlier:
            row.deleted_at = change.deleted_at
            plan.tombstones[key] = change.deleted_at  # type: ignore[assignment]
        if newer or earlier:
            plan.outcomes.append(Applied(True))
        else:
            plan.outcomes.append(Applied(False, ALREADY_DELETED if change.deleted_at is not None else STALE))
    return plan


# -- writing ----------------------------------------------------------------------------------


def _sql_type(resource: Resource, column: str) -> str:
    column_type = resource.model.__table__.c[column].type  # type: ignore[attr-defined]
    if isinstance(column_type, BigInteger | Integer):
        return "bigint"
    if isinstance(column_type, Boolean):
        return "boolean"
    if isinstance(column_type, DateTime):
        return "timestamptz"
    if column_type.__class__.__name__ == "JSONB":
        return "jsonb"
    return "text"


def _value(resource: Resource, column: str, sql_type: str) -> str:
    if column == CLERK_DATA:  # as Clerk sent it, less private metadata unless it is kept
        stripped = f"(CAST(u.{column} AS jsonb) - '{PRIVATE_METADATA}')"
        for key in resource.nested_private:
            stripped = f"({stripped} #- '{{{key},{PRIVATE_METADATA}}}')"
        return f"CASE WHEN :keep_private THEN CAST(u.{column} AS jsonb) ELSE {stripped} END"
    return f"CAST(u.{column} AS jsonb)" if sql_type == "jsonb" else f"u.{column}"


@cache
def _upsert_statement(resource: Resource) -> TextClause:
    """The conditional multi-row upsert of ``resource``, built once: only the arrays change per batch."""
    table, columns = resource.table_name, resource.columns
    types = {column: _sql_type(resource, column) for column in columns}
    # jsonb travels as text and is cast per element: one array of JSON texts.
    arrays = ", ".join(
        f"CAST(:c_{column} AS {'text' if types[column] == 'jsonb' else types[column]}[])" for column in columns
    )
    values = ", ".join(_value(resource, c, types[c]) for c in columns)
    return text(
        f"""
        INSERT INTO {table} AS t
            (clerk_id, {", ".join(columns)}, clerk_updated_at, clerk_event_at, updated_at, created_at)
        SELECT u.clerk_id, {values}, u.version, u.event_at, to_timestamp(u.version / 1000.0),
               COALESCE(to_timestamp(u.created / 1000.0), now())
        FROM unnest(CAST(:clerk_id AS text[]), {arrays}, CAST(:version AS bigint[]), CAST(:event_at AS bigint[]),
                    CAST(:created AS bigint[]))
             AS u(clerk_id, {", ".join(columns)}, version, event_at, created)
        ORDER BY u.clerk_id
        ON CONFLICT (clerk_id) DO UPDATE SET
            {", ".join(f"{c} = excluded.{c}" for c in columns)},
            clerk_updated_at = excluded.clerk_updated_at,
            clerk_event_at = excluded.clerk_event_at,
            updated_at = excluded.updated_at,
            -- Clerk's created_at when the object has one (a tombstone's insert time is later).
            created_at = LEAST(t.created_at, excluded.created_at),
            synced_at = now()
        WHERE t.clerk_updated_at IS NULL
           OR (t.clerk_updated_at, COALESCE(t.clerk_event_at, 0))
              < (excluded.clerk_updated_at, COALESCE(excluded.clerk_event_at, 0))
        """  # noqa: S608 - names from the resource table
    )


_json = msgspec.json.Encoder()


def _write_data(trips: roundtrips.Trips, resource: Resource, plan: _Plan, *, keep_private: bool) -> None:
    changes = [plan.data[key] for key in sorted(plan.data) if key[0] == resource.name]
    if not changes:
        return
    params: dict[str, list[Any]] = {
        "clerk_id": [c.clerk_id for c in changes],
        "version": [c.version for c in changes],
        "event_at": [c.event_at for c in changes],
        "created": [c.created_at for c in changes],
    }
    for column in resource.columns:
        jsonb = _sql_type(resource, column) == "jsonb"
        if column in resource.private_columns and not keep_private:
            params[f"c_{column}"] = [None] * len(changes)
            continue
        values = [c.row[column] for c in changes]  # type: ignore[index]
        params[f"c_{column}"] = [
            None if value is None else _json.encode(value).decode() if jsonb else value for value in values
        ]
    trips.queue(_upsert_statement(resource), {**params, "keep_private": keep_private})


@cache
def _tombstone_statement(resource: Resource) -> TextClause:
    table = resource.table_name
    return text(
        f"""
        INSERT INTO {table} AS t (clerk_id, deleted_at)
        SELECT u.clerk_id, u.deleted_at
        FROM unnest(CAST(:clerk_id AS text[]), CAST(:deleted_at AS timestamptz[])) AS u(clerk_id, deleted_at)
        ORDER BY u.clerk_id
        ON CONFLICT (clerk_id) DO UPDATE SET deleted_at = excluded.deleted_at, synced_at = now()
        WHERE t.deleted_at IS NULL OR t.deleted_at > excluded.deleted_at
        """  # noqa: S608 - names from the resource table
    )


def _write_tombstones(trips: roundtrips.Trips, resource: Resource, plan: _Plan) -> None:
    keys = sorted(key for key in plan.tombstones if key[0] == resource.name)
    if keys:
        trips.queue(
            _tombstone_statement(resource),
            {"clerk_id": [key[1] for key in keys], "deleted_at": [plan.tombstones[key] for key in keys]},
        )


@cache
def _deactivate_by_parent_statement(child: Resource, parent: str) -> TextClause:
    column = child.parent_columns[parent]
    return text(
        f"""
        UPDATE {child.table_name} AS c SET deleted_at = u.deleted_at, synced_at = now()
        FROM unnest(CAST(:parent_id AS text[]), CAST(:deleted_at AS timestamptz[])) AS u(parent_id, deleted_at)
        WHERE c.{column} = u.parent_id AND (c.deleted_at IS NULL OR c.deleted_at > u.deleted_at)
        """  # noqa: S608 - names from the resource table
    )


@cache
def _deactivate_if_parent_deleted_statement(child: Resource) -> TextClause:
    # The earliest of the parents' deletes, as in Clerk's order (LEAST skips nulls).
    parents = ", ".join(
        f"(SELECT p.deleted_at FROM {BY_NAME[parent].table_name} AS p WHERE p.clerk_id = c.{column})"  # noqa: S608
        for parent, column in child.parent_columns.items()
    )
    return text(
        f"""
        UPDATE {child.table_name} AS c SET deleted_at = d.parent_deleted_at, synced_at = now()
        FROM (SELECT c.clerk_id, LEAST({parents}) AS parent_deleted_at
              FROM {child.table_name} AS c WHERE c.clerk_id = ANY(CAST(:ids AS text[]))) AS d
        WHERE c.clerk_id = d.clerk_id AND d.parent_deleted_at IS NOT NULL
          AND (c.deleted_at IS NULL OR c.deleted_at > d.parent_deleted_at)
        """  # noqa: S608 - names from the resource table
    )


def _deactivate_children(trips: roundtrips.Trips, changes: Sequence[Change], plan: _Plan) -> None:
    """A parent deleted now takes its children with it; a child written now follows a deleted parent."""
    for child in RESOURCES:
        for parent in child.parent_columns:
            deleted = sorted((key[1], at) for key, at in plan.tombstones.items() if key[0] == parent)
            if deleted:
                trips.queue(
                    _deactivate_by_parent_statement(child, parent),
                    {"parent_id": [p for p, _ in deleted], "deleted_at": [at for _, at in deleted]},
                )
        touched = sorted({c.clerk_id for c in changes if c.resource is child and c.parents})
        if child.parent_columns and touched:
            trips.queue(_deactivate_if_parent_deleted_statement(child), {"ids": touched})


def _users_named(changes: Sequence[Change]) -> set[str]:
    named = set()
    for change in changes:
        if change.resource is USERS:
            named.add(change.clerk_id)
        if change.user_id is not None:
            named.add(change.user_id)
    return named
