"""The overview's last hour: outcomes and lag per minute from the ledger, and the charts drawn from them."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text

from console import charts
from shared.models import WebhookEvent
from worker.ops import activity


def test_last_hour_counts_each_outcome_in_its_minute(session_factory):
    # Given events finished 2 and 10 minutes ago, one an hour and a half ago, and failed attempts
    with session_factory() as session:
        now = session.scalar(text("SELECT date_trunc('minute', now())"))
    two_ago, ten_ago = now - dt.timedelta(minutes=2), now - dt.timedelta(minutes=10)
    long_ago = now - dt.timedelta(minutes=90)

    def event(svix_id: str, status: str, at: dt.datetime, **fields) -> WebhookEvent:
        moment = at + dt.timedelta(seconds=20)
        return WebhookEvent(svix_id=svix_id, status=status, processed_at=moment, updated_at=moment, **fields)

    with session_factory.begin() as session:
        session.add_all(
            [
                # processed 4 s and 10 s after Svix sent them: lags 4 and 10
                event("msg_p1", "processed", two_ago, svix_timestamp=int((two_ago).timestamp()) + 16),
                event("msg_p2", "processed", two_ago, svix_timestamp=int((two_ago).timestamp()) + 10),
                event("msg_i1", "ignored", two_ago),
                event(
                    "msg_d1",
                    "dead",
                    ten_ago,
                    errors=[
                        {"at": (ten_ago - dt.timedelta(minutes=1)).isoformat(), "error": "first"},
                        {"at": ten_ago.isoformat(), "error": "last"},
                        {"at": ten_ago.isoformat(), "event": "replayed", "attempts_before": 2},  # a note, not a failure
                    ],
                ),
                event("msg_old", "processed", long_ago, svix_timestamp=int(long_ago.timestamp())),
                # a failed event still waiting for its retry, and a row with a malformed note
                WebhookEvent(
                    svix_id="msg_f1",
                    status="failed",
                    updated_at=two_ago,
                    errors=[{"at": two_ago.isoformat(), "error": "timeout"}],
                ),
                WebhookEvent(svix_id="msg_junk", status="pending", errors=[{"at": "t", "error": "e"}]),
            ]
        )

    # When the last hour is read
    with session_factory() as session:
        minutes = activity.last_hour(session)

    # Then there are 60 minutes ending with the current one, each outcome in its own minute
    assert len(minutes) == 60 and minutes[-1].start == now and minutes[0].start == now - dt.timedelta(minutes=59)
    by_start = {minute.start: minute for minute in minutes}
    at_two = by_start[two_ago]
    assert (at_two.processed, at_two.ignored, at_two.failed, at_two.dead) == (2, 1, 1, 0)
    assert (at_two.lag_p50, at_two.lag_max) == (7.0, 10.0)
    at_ten = by_start[ten_ago]
    assert (at_ten.dead, at_ten.failed) == (1, 1)
    assert by_start[ten_ago - dt.timedelta(minutes=1)].failed == 1
    assert sum(minute.processed for minute in minutes) == 2  # the one 90 minutes ago is outside

    # And the charts hold those totals, scaled to a round top
    outcomes = charts.outcomes_chart(minutes)
    assert {series.name: series.total for series in outcomes.series} == {
        "processed": 2,
        "ignored": 1,
        "failed": 3,
        "dead": 1,
    }
    assert [tick.label for tick in outcomes.y_ticks] == ["0", "1", "2"]
    lag = charts.lag_chart(minutes)
    assert [tick.label for tick in lag.y_ticks] == ["0", "5", "10"]
    # a lone value (no neighbour) gets a dot, since a line needs two points
    assert [len(series.dots) for series in lag.series] == [1, 1]


def test_nice_ceiling_rounds_up_to_a_readable_top():
    assert [charts.nice_ceiling(v) for v in (0, 0.4, 1, 1.2, 3, 7, 11, 240, 2600)] == [
        1, 1, 1, 2, 5, 10, 20, 250, 5000,
    ]  # fmt: skip
