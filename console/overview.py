"""The overview: counts per status, queue depth, oldest backlog, paused, the last hour in charts.

The page refreshes itself (a meta refresh: the console runs no script).
"""

from __future__ import annotations

from flask import Blueprint, render_template

from console import charts
from console.state import state
from worker.ops import activity, status

blueprint = Blueprint("overview", __name__)
REFRESH_SECONDS = 15


@blueprint.get("/")
def index() -> str:
    console = state()
    with console.reading() as session:
        report = status.report(status.raw_connection(session), console.settings)
        minutes = activity.last_hour(session)
    return render_template(
        "overview.html",
        report=report,
        outcomes=charts.outcomes_chart(minutes),
        lag=charts.lag_chart(minutes),
        refresh_seconds=REFRESH_SECONDS,
    )
