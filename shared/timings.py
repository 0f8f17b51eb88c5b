"""Every recovery timing, derived from one setting: ``RECOVERY_SECONDS`` (default 120).

CONTRACT section 5: an event held by a worker that dies is applied by another worker within
``RECOVERY_SECONDS``. Such an event is in one of two places when its worker dies:

A. **kombu's unacked hash** (the worker had taken it: reserved, or in a batch). It becomes
   visible again ``visibility_timeout`` after it was taken; every live worker scans the hash
   every ``restore_interval`` and puts what is visible back at the head of the queue.
B. **nowhere but its receipt** (the worker died between kombu's BRPOP and its write to the
   unacked hash, see ``shared.receipts``). beat's sweep, every ``sweep_interval``, enqueues
   again a receipt older than ``lost_message_after`` whose event has no ledger row.

Detection takes at most half the bound on either path; the other half leaves a live worker
room to pick the event up and apply it even when the batch it is busy with runs to the task's
hard time limit (twice on path B: once before the sweep task, once before the event)::

    A:  visibility_timeout + restore_interval + task_time_limit                   <= bound
    B:  lost_message_after + sweep_interval   + 2 * task_time_limit               <= bound

A live worker never looks dead: it holds a message at most ``task_time_limit`` (prefetch is
one message per pool process, and a batch takes the rest straight from the queue), which is
less than ``visibility_timeout`` and ``lost_message_after``. A batch that cannot reach Postgres
waits at most ``database_wait`` in-process (one probe may take ``database_connect_timeout`` more),
then hands its events back to the queue, so the soft time limit never interrupts a database
wait; and the longest statement (``DB_STATEMENT_TIMEOUT_SECONDS``, by default what is left under
the soft limit) ends in Postgres's own error before the soft limit. If a worker is killed while
it holds kombu's restore mutex, the mutex expires (``unacked_mutex_expire``) before anything it
guarded becomes visible. If a worker's host is lost in the middle of a batch's transaction, Postgres
ends that transaction (its last statement within the statement timeout, then
``idle_in_transaction_timeout``) before the batch's messages become visible, so the worker that takes
them over is not kept waiting on its locks for the hours TCP takes to notice the lost host.

``check()`` proves these inequalities for any bound; ``tests/test_timings.py`` runs it over the
defaults. The bound assumes Postgres answers and the queue has no backlog longer than the slack:
an event behind a backlog waits for the backlog, whatever recovered it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Below this the rules cannot hold: libpq's shortest connect timeout is 2 s. Tests use 24.
MINIMUM_BOUND_SECONDS = 24.0


@dataclass(frozen=True)
class RecoveryTimings:
    """Seconds. See the module docstring for what each one bounds."""

    bound: float
    restore_interval: float  # kombu: how often each worker scans its unacked hash (throttle 1)
    visibility_timeout: float  # kombu: a message taken this long ago and not acked is visible again
    unacked_mutex_expire: float  # kombu: the restore scan's mutex, if its holder died
    sweep_interval: float  # beat: due retries and lost messages
    lost_message_after: float  # receipts: no ledger row this long after enqueue -> enqueue again
    task_time_limit: float  # Celery hard limit: the pool process is killed
    task_soft_time_limit: float  # Celery soft limit: the batch hands its events back
    database_wait: float  # a batch waits this long for Postgres, then hands its events back
    database_connect_timeout: int  # libpq connect_timeout: one probe of an unreachable Postgres

    @property
    def statement_timeout_limit(self) -> float:
        """The longest DB_STATEMENT_TIMEOUT_SECONDS that still ends before the soft time limit."""
        return self.task_soft_time_limit - self.database_wait

    @property
    def idle_in_transaction_timeout(self) -> float:
        """How long Postgres keeps a worker's transaction that waits for a client gone silent (a lost
        host: TCP keepalive notices it only hours later), and the locks it holds. No live worker's
        transaction waits for its client longer: its process is killed at the hard time limit."""
        return self.task_time_limit

    def worst_case_unacked(self) -> float:
        """Path A: from the death of the worker holding it in kombu's unacked hash to applied."""
        return self.visibility_timeout + self.restore_interval + self.task_time_limit

    def worst_case_receipt_only(self) -> float:
        """Path B: from the death of the worker that popped it (receipt only) to applied."""
        return self.lost_message_after + self.sweep_interval + 2 * self.task_time_limit

    def check(self) -> list[str]:
        """Every inequality the bound rests on that does not hold (empty: all hold)."""
        rules = {
            "path A (unacked hash) fits the bound": self.worst_case_unacked() <= self.bound,
            "path B (receipt only) fits the bound": self.worst_case_receipt_only() <= self.bound,
            "a live worker's message never becomes visible": self.task_time_limit < self.visibility_timeout,
            "a live worker's message never looks lost": self.task_time_limit < self.lost_message_after,
            "a dead scanner's mutex expires first": self.unacked_mutex_expire <= self.visibility_timeout,
            "a lost worker's locks are gone before its messages are visible again": (
                self.statement_timeout_limit + self.idle_in_transaction_timeout < self.visibility_timeout
            ),
            "soft limit before hard limit": self.task_soft_time_limit < self.task_time_limit,
            "a database wait ends before the soft limit": (
                self.database_wait + self.database_connect_timeout <= self.task_soft_time_limit
            ),
        }
        return [rule for rule, holds in rules.items() if not holds]


def recovery_timings(bound: float) -> RecoveryTimings:
    """The timings for ``RECOVERY_SECONDS = bound``; with 120: scans every 5 s, detection 55 s."""
    step = bound / 24  # 5 s with the default bound
    return RecoveryTimings(
        bound=bound,
        restore_interval=step,  # 5
        visibility_timeout=bound / 2 - step,  # 55: detection on path A within half the bound
        unacked_mutex_expire=2 * step,  # 10
        sweep_interval=step,  # 5
        lost_message_after=bound / 2 - 2 * step,  # 50: detection on path B within half the bound
        task_time_limit=bound / 4,  # 30
        task_soft_time_limit=bound / 4 - step,  # 25
        database_wait=2 * step,  # 10, plus one 5 s connect timeout: 15 <= 25
        database_connect_timeout=max(2, min(5, int(step))),  # 5; libpq counts whole seconds, at least 2
    )
