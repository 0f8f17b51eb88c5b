"""What every page shares: the paused banner, error pages, the audit page."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from flask import Flask, render_template, request, session
from flask_wtf.csrf import CSRFError
from markupsafe import Markup
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from console.state import state
from shared.models import WebhookEvent
from shared.terminal import bidi_visible
from worker.ops import audit, status

AUDIT_PAGE_SIZE = 100


# Ledger columns the event page shows in its own places; any other column (those a later
# migration adds) is listed as it is.
SHOWN_COLUMNS = frozenset(
    {"id", "svix_id", "event_type", "status", "attempts", "last_error", "errors", "payload", "raw_body",
     "svix_timestamp", "entity_id", "received_at", "processed_at", "next_attempt_at", "conflicts"}
)  # fmt: skip


def install(app: Flask) -> None:
    # Every value a page shows: a bidirectional override in an event's data cannot reorder the page.
    app.jinja_env.finalize = _shown_as_it_is
    app.context_processor(_banner)
    app.add_template_filter(_when, "when")
    app.add_template_filter(_clerk_time, "clerk_time")
    app.add_template_filter(_duration, "duration")
    app.add_template_filter(_show, "show")
    app.add_template_global(_extra_fields, "extra_fields")
    app.register_error_handler(CSRFError, _csrf_refused)
    app.register_error_handler(HTTPException, _http_error)
    app.add_url_rule("/audit", "audit", _audit_page)


def _banner() -> dict[str, Any]:
    """Paused or not, on every page an operator sees once logged in."""
    if "operator" not in session:
        return {"paused": None}
    try:
        with state().reading() as db:
            paused = status.is_paused(status.raw_connection(db))
    except SQLAlchemyError:  # Postgres away: the page (an error page, say) still renders, without the banner
        paused = None
    return {"paused": paused, "here": request.full_path.rstrip("?")}


def _csrf_refused(error: CSRFError) -> tuple[str, int]:
    return render_template("error.html", code=400, message=f"refused: {error.description}"), 400


def _http_error(error: HTTPException) -> tuple[str, int]:
    code = error.code or 500
    return render_template("error.html", code=code, message=error.description), code


def _audit_page() -> str:
    with state().reading() as db:
        actions = audit.recent(db, limit=AUDIT_PAGE_SIZE)
    return render_template("audit.html", actions=actions)


def _when(moment: dt.datetime | None) -> str:
    return "" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clerk_time(millis: int | None) -> str:
    return "" if millis is None else _when(dt.datetime.fromtimestamp(millis / 1000, tz=dt.UTC))


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _shown_as_it_is(value: Any) -> Any:
    """Text (not markup the templates built) with its bidirectional controls as visible escapes."""
    return bidi_visible(value) if isinstance(value, str) and not isinstance(value, Markup) else value


def _show(value: Any) -> str:
    """A column's value as text: JSON for objects, ISO for times, empty for null."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return _when(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def _extra_fields(row: WebhookEvent) -> list[tuple[str, str]]:
    columns = WebhookEvent.__table__.columns.keys()
    return [(name, _show(getattr(row, name, None))) for name in columns if name not in SHOWN_COLUMNS]
