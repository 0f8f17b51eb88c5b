"""Is the sync keeping up: events per status, the oldest backlog, paused or not, the queue's depth.

Plain SQL on a psycopg connection rather than the ORM: ``clerk-sync status`` must answer in
a fraction of a second, and importing SQLAlchemy alone takes longer than that. The console
passes the psycopg connection under its SQLAlchemy session (``raw_connection``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from shared.config import Settings
from shared.receipts import receipt_keys
from shared.redis_client import redis_client
from shared.statuses import EVENT_STATUSES, NOT_DONE_SQL, NOT_DONE_STATUSES

if TYPE_CHECKING:
    import psycopg

# The row worker.pipeline.ledger.set_paused writes (a test checks the two agree).
PAUSED_FLAG = "paused"
# kombu's Redis transport keeps a queue's messages in one list per priority step
# (the plain name for priority 0) and every delivered-but-unacked one in this hash.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
_UNACKED_HASH = "unacked"
_UNACKED_SCAN_LIMIT = 10_000


def connect(settings: Settings) -> psycopg.Connection[Any]:
    """A short-lived connection for one command; OperationalError when Postgres is away."""
    import psycopg

    return psycopg.connect(settings.libpq_url, connect_timeout=5, application_name="clerk-sync-cli", autocommit=True)


def raw_connection(session: Any) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy session (the console's way in)."""
    return session.connection().connection.driver_connection  # type: ignore[no-any-return]


# The statuses not done are always counted exactly (few, through their index, and what an operator
# acts on); the others may be estimated.
_DONE = tuple(sorted(set(EVENT_STATUSES) - set(NOT_DONE_STATUSES)))
# Above this many rows, processed and ignored are estimated from Postgres's statistics instead of
# counted: the ledger keeps a row per event for ever (tens of millions in a year of a busy
# application), and a count would scan all of it on every `status` and every console refresh.
EXACT_COUNT_LIMIT = 1_000_000


@dataclass(frozen=True)
class StatusCounts:
    counts: dict[str, int]  # every status of the contract (zeros included)
    estimated: tuple[str, ...] = ()  # the statuses whose count is Postgres's estimate


def status_counts(conn: psycopg.Connection[Any], *, exact_limit: int = EXACT_COUNT_LIMIT) -> StatusCounts:
    """Rows per status: exact below ``exact_limit`` rows, else exact for the statuses not done and
    estimated for the others (``estimated``)."""
    counts = dict.fromkeys(EVENT_STATUSES, 0)
    rows = _estimated_rows(conn)
    done_share = _done_shares(conn) if rows >= exact_limit else {}
    estimating = any(done_share.values())
    where = f" WHERE {NOT_DONE_SQL}" if estimating else ""
    for status, count in conn.execute(f"SELECT status, count(*) FROM webhook_events{where} GROUP BY status"):  # noqa: S608 - constants
        counts[status] = int(count)
    if not estimating:
        return StatusCounts(counts)
    done = max(0.0, rows - sum(counts[status] for status in NOT_DONE_STATUSES))
    total_share = sum(done_share.values())
    for status, share in done_share.items():
        counts[status] = round(done * share / total_share)
    return StatusCounts(counts, estimated=_DONE)


def _estimated_rows(conn: psycopg.Connection[Any]) -> float:
    """The ledger's rows as the planner estimates them (its statistics scaled to the table's size
    now); 0 before any ANALYZE (a new ledger: counted)."""
    row = conn.execute(
        "SELECT reltuples, relpages, pg_relation_size(oid) / current_setting('block_size')::int"
        " FROM pg_class WHERE oid = 'webhook_events'::regclass"
    ).fetchone()
    if row is None or row[0] < 0 or row[1] <= 0:
        return 0.0
    reltuples, relpages, pages = row
    return float(reltuples) / float(relpages) * float(pages)


def _done_shares(conn: psycopg.Connection[Any]) -> dict[str, float]:
    """The share of each done status among ANALYZE's most common values (0 when it is not one)."""
    sampled = conn.execute(
        "SELECT most_common_vals::text::text[], most_common_freqs FROM pg_stats"
        " WHERE schemaname = current_schema() AND tablename = 'webhook_events' AND attname = 'status'"
    ).fetchone()
    frequencies = {} if sampled is None or sampled[0] is None else dict(zip(sampled[0], sampled[1], strict=True))
    return {status: float(frequencies.get(status, 0.0)) for status in _DONE}


def oldest_unprocessed_age(conn: psycopg.Connection[Any]) -> float | None:
    """Seconds since the oldest `pending` or `failed` event arrived; None if there is none."""
    row = conn.execute(
        "SELECT extract(epoch FROM now() - min(received_at)) FROM webhook_events WHERE status IN ('pending', 'failed')"
    ).fetchone()
    return None if row is None or row[0] is None else round(float(row[0]), 3)


def is_paused(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT value FROM clerk_sync_control WHERE name = %s", (PAUSED_FLAG,)).fetchone()
    return row is not None and row[0] == "true"


# How many of the oldest receipts `status` looks at for an event accepted but not yet recorded.
_RECEIPT_SCAN = 100


@dataclass(frozen=True)
class QueueDepth:
    name: str
    available: bool
    waiting: int | None = None
    unacked: int | None = None
    error: str | None = None


def queue_depth(settings: Settings) -> QueueDepth:
    """Messages waiting in the event queue, and those delivered but not yet acked."""
    return _read_queue(settings)[0]


def _read_queue(settings: Settings) -> tuple[QueueDepth, list[tuple[str, float]]]:
    """The queue's depth, and the oldest receipts (svix_id, time accepted), oldest first."""
    name = settings.queue_name
    keys = [name if step == 0 else f"{name}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS]
    import redis

    client = redis_client(settings.redis_url, timeout=5.0, socket_connect_timeout=2)
    try:
        # One round trip for the lengths; the unacked messages' routes only when there are few.
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        pipe.hlen(_UNACKED_HASH)
        pipe.zrange(receipt_keys(name)[1], 0, _RECEIPT_SCAN - 1, withscores=True)
        *lengths, total, receipts = pipe.execute()
        waiting = sum(int(length) for length in lengths)
        # None, or too many to read: the whole hash's size.
        few = 0 < int(total) <= _UNACKED_SCAN_LIMIT
        unacked = _routed_to(client.hvals(_UNACKED_HASH), name) if few else int(total)
    except redis.RedisError as exc:
        return QueueDepth(name=name, available=False, error=f"{type(exc).__name__}: {exc}"), []
    finally:
        client.close()
    oldest = [(raw.decode(), float(score)) for raw, score in receipts]
    return QueueDepth(name=name, available=True, waiting=waiting, unacked=unacked), oldest


def oldest_unrecorded_age(conn: psycopg.Connection[Any], receipts: list[tuple[str, float]]) -> float | None:
    """Seconds since the oldest accepted event with no `webhook_events` row yet; None if none is seen.

    An event the ingress accepted is in the queue (or held by a worker) with a receipt, and has no
    ledger row until a worker records it: with the workers down, every event waits there. Receipts
    are dropped once their event's row is committed (best effort), so those whose row exists are
    skipped; the rest are unprocessed events, accepted at the receipt's time.
    """
    if not receipts:
        return None
    ids = [svix_id for svix_id, _ in receipts]
    recorded = {row[0] for row in conn.execute("SELECT svix_id FROM webhook_events WHERE svix_id = ANY(%s)", (ids,))}
    for svix_id, accepted in receipts:
        if svix_id not in recorded:
            return round(max(0.0, time.time() - accepted), 3)
    return None


def _routed_to(unacked: list[bytes], queue: str) -> int:
    """How many of kombu's unacked entries ([message, exchange, routing key]) are routed to ``queue``."""
    count = 0
    for raw in unacked:
        try:
            _message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        count += routing_key == queue
    return count


def report(conn: psycopg.Connection[Any], settings: Settings) -> dict[str, Any]:
    """Everything `status` and the console's overview report, as one JSON-ready dict."""
    counted = status_counts(conn)
    queue, receipts = _read_queue(settings)
    # Unprocessed: recorded and not done (pending, failed), or accepted and not recorded yet.
    ages = [age for age in (oldest_unprocessed_age(conn), oldest_unrecorded_age(conn, receipts)) if age is not None]
    return {
        "paused": is_paused(conn),
        "counts": counted.counts,
        # The statuses whose count is an estimate (a ledger of more than EXACT_COUNT_LIMIT rows).
        "estimated": list(counted.estimated),
        "dead": counted.counts["dead"],
        "oldest_unprocessed_age_seconds": max(ages, default=None),
        "queue": asdict(queue),
    }
