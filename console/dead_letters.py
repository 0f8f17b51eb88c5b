"""Dead letters: the filtered, paged list; an event's page; replay and discard of one or of all
a filter matches, after a preview of how many and which.

The filters are the CLI's (type, error, since, entity), read by the same functions, and the
changes are the CLI's too (``worker.ops.dead_letters``, audited there). A bulk action acts on
exactly the events its preview showed: the confirmation carries a digest of their svix-ids,
and if the selection changed in between, the operator sees the new preview instead.

A svix-id is whatever the sender put in its header: ``a/../../events/msg_b`` or ``..`` would be
resolved by the browser as a path, so a link to ``/events/<id>`` would open another event's
page, whose Discard button discards that other event. Links use ``/events/<id>`` only for plain
ids and ``/event?svix_id=<id>`` for any other; the Replay and Discard forms post the svix-id as
a field to ``/event/replay`` and ``/event/discard``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from console.auth import current_actor
from console.state import state
from shared.models import WebhookEvent
from shared.publish import QueueUnavailable
from worker.ops import dead_letters, inputs, timeline
from worker.ops.dead_letters import DeadFilter, Instruction, OperationError, Result

blueprint = Blueprint("dead_letters", __name__)
PAGE_SIZE = 50
MAX_PAGE = 10_000
PREVIEW_SHOWN = 200
ACTIONS = ("replay", "discard")
FILTER_FIELDS = ("type", "error", "since", "entity", "limit")
# An entity's timeline on a page: its latest this many. A large organization's runs to tens of
# thousands of events, megabytes on the page of each; `clerk-sync events --entity` lists them all.
TIMELINE_SHOWN = 500
# A svix-id that stays itself as a path segment: no "/", ".", "\\" or anything a browser resolves.
PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+")


class BadFilter(ValueError):
    """A filter field the CLI would refuse too; the message is shown above the list."""


def read_filters(fields: MultiDict[str, str]) -> DeadFilter:
    values = {name: (fields.get(name) or "").strip() or None for name in FILTER_FIELDS}
    try:
        event_type, error = (inputs.check_text(name, values[name]) for name in ("type", "error"))
        since = inputs.parse_since(values["since"]) if values["since"] else None
        entity = inputs.check_entity_id(values["entity"]) if values["entity"] else None
        limit = inputs.parse_limit(values["limit"]) if values["limit"] else None
    except ValueError as exc:
        raise BadFilter(str(exc).removeprefix("--")) from None
    return DeadFilter(event_type=event_type, since=since, error=error, entity=entity, limit=limit)


def filter_args(fields: MultiDict[str, str]) -> dict[str, str]:
    """The filter fields as given, for links and hidden inputs."""
    return {name: fields[name] for name in FILTER_FIELDS if fields.get(name)}


def digest(svix_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(svix_ids).encode()).hexdigest()


def page_number() -> int:
    raw = request.args.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        abort(400, f"page must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


@blueprint.app_template_global()
def event_url(svix_id: str) -> str:
    """The event's page: ``/events/<id>`` for a plain id, ``/event?svix_id=<id>`` for any other."""
    if PLAIN_ID.fullmatch(svix_id):
        return url_for("dead_letters.event", svix_id=svix_id)
    return url_for("dead_letters.event_named", svix_id=svix_id)


def entity_timeline(session: Session, entity_id: str) -> list[tuple[WebhookEvent, int | None]]:
    """The latest ``TIMELINE_SHOWN`` events about ``entity_id``, and one more if there are more: the page says so."""
    return timeline.timeline(session, entity_id, latest=TIMELINE_SHOWN + 1)


@blueprint.get("/dead")
def index() -> str | tuple[str, int]:
    page = page_number()
    try:
        filters = read_filters(request.args)
    except BadFilter as exc:
        return render_template("dead_list.html", error=str(exc), rows=[], total=0, page=1, pages=1, args={}), 400
    with state().reading() as session:
        total = dead_letters.count_dead(session, filters)
        if filters.limit is not None:  # the oldest N matching, as `dlq list --limit N`
            total = min(total, filters.limit)
        offset = (page - 1) * PAGE_SIZE
        paged = dataclasses.replace(filters, limit=max(0, min(PAGE_SIZE, total - offset)))
        rows = dead_letters.list_dead(session, paged, offset=offset) if paged.limit else []
    return render_template(
        "dead_list.html",
        rows=rows,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        args=filter_args(request.args),
        error=None,
    )


@blueprint.get("/events/<path:svix_id>")
def event(svix_id: str) -> str:
    with state().reading() as session:
        row = dead_letters.get_event(session, svix_id)
        if row is None:
            abort(404, "no event with this svix-id")
        history = entity_timeline(session, row.entity_id) if row.entity_id else []
    payload = None if row.payload is None else json.dumps(row.payload, indent=2, sort_keys=True, ensure_ascii=False)
    return render_template("event.html", row=row, payload=payload, history=history, shown=TIMELINE_SHOWN)


@blueprint.get("/event")
def event_named() -> str:
    return event(request.args.get("svix_id", ""))


def _act(
    action: str, svix_ids: Sequence[str], *, selection: DeadFilter | None, skip_not_dead: bool
) -> tuple[Result, str | None]:
    """Replay or discard in batches (each its own transaction); returns what was done and any failure."""
    console = state()
    instruction = Instruction(current_actor(), selection=selection, skip_not_dead=skip_not_dead)
    progress = Result()

    def act(session: Session, batch: Sequence[str]) -> Result:
        if action == "replay":
            return dead_letters.replay(session, console.publisher, batch, instruction)
        return dead_letters.discard(session, batch, instruction)

    try:
        dead_letters.in_batches(console.sessions.begin, svix_ids, act, progress=progress)
    except OperationError as exc:
        return progress, str(exc)
    except QueueUnavailable:
        return (
            progress,
            f"the queue is unavailable; {len(progress.done)} of {len(svix_ids)} replayed, the rest still dead",
        )
    return progress, None


def _report(action: str, result: Result, failure: str | None) -> None:
    verb = "replayed" if action == "replay" else "discarded"
    if result.done or not failure:
        flash(f"{verb} {len(result.done)} event(s)", "info")
    if result.skipped:
        flash(f"skipped {len(result.skipped)}: no longer dead", "info")
    if failure:
        flash(failure, "error")


@blueprint.post("/events/<path:svix_id>/<action>")
def act_on_one(svix_id: str, action: str) -> Response:
    if action not in ACTIONS:
        abort(404)
    result, failure = _act(action, [svix_id], selection=None, skip_not_dead=False)
    _report(action, result, failure)
    if action == "discard" and result.done:
        return redirect(url_for("dead_letters.index"))
    return redirect(event_url(svix_id))


@blueprint.post("/event/<action>")
def act_on_named(action: str) -> Response:
    """What the event page's buttons post: the svix-id as a field, never as a path a browser would resolve."""
    svix_id = request.form.get("svix_id", "")
    if not svix_id:
        abort(400, "no svix-id given")
    return act_on_one(svix_id, action)


def _preview(action: str, fields: MultiDict[str, str], *, notice: str | None = None) -> str | tuple[str, int]:
    try:
        filters = read_filters(fields)
    except BadFilter as exc:
        return render_template("dead_list.html", error=str(exc), rows=[], total=0, page=1, pages=1, args={}), 400
    with state().reading() as session:
        svix_ids = dead_letters.matching_ids(session, filters)
    return render_template(
        "bulk_preview.html",
        action=action,
        svix_ids=svix_ids,
        shown=svix_ids[:PREVIEW_SHOWN],
        digest=digest(svix_ids),
        args=filter_args(fields),
        description=filters.as_dict(),
        notice=notice,
    )


@blueprint.get("/dead/<action>-all")
def preview(action: str) -> str | tuple[str, int]:
    if action not in ACTIONS:
        abort(404)
    return _preview(action, request.args)


@blueprint.post("/dead/<action>-all")
def act_on_all(action: str) -> Response | str | tuple[str, int]:
    if action not in ACTIONS:
        abort(404)
    try:
        filters = read_filters(request.form)
    except BadFilter:
        return _preview(action, request.form)
    with state().reading() as session:
        svix_ids = dead_letters.matching_ids(session, filters)
    if not svix_ids or digest(svix_ids) != request.form.get("digest"):
        return _preview(action, request.form, notice="the dead events matching changed since the preview: review again")
    result, failure = _act(action, svix_ids, selection=filters, skip_not_dead=True)
    _report(action, result, failure)
    return redirect(url_for("dead_letters.index", **filter_args(request.form)))  # type: ignore[arg-type]
