"""Entity search: by Clerk id or email, the synced row as it stands and the events that touched it (the latest 500)."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request
from werkzeug.wrappers import Response

from console import dead_letters as dead_letters_views
from console.state import state
from worker.ops import dead_letters, entities

blueprint = Blueprint("entities", __name__)
MAX_QUERY = 320  # the longest email address


@blueprint.get("/entities")
def search() -> str | Response | tuple[str, int]:
    query = (request.args.get("q") or "").strip()
    if not query:
        return render_template("entities.html", query="", found=[], history={}, error=None)
    if len(query) > MAX_QUERY or not query.isprintable():
        return render_template("entities.html", query="", found=[], history={}, error="not an id or an email"), 400
    with state().reading() as session:
        if query.startswith("msg_") and dead_letters.get_event(session, query) is not None:
            return redirect(dead_letters_views.event_url(query))
        found = entities.find(session, query)
        ids = [entity.clerk_id for entity in found] or ([query] if "@" not in query else [])
        history = {clerk_id: dead_letters_views.entity_timeline(session, clerk_id) for clerk_id in ids}
    shown = dead_letters_views.TIMELINE_SHOWN
    return render_template("entities.html", query=query, found=found, history=history, error=None, shown=shown)
