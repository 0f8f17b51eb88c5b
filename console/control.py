"""Pause and resume from any page (the banner's button), through ``worker.ops.control``."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, request
from werkzeug.wrappers import Response

from console.auth import current_actor, safe_path
from console.state import state
from shared.publish import QueueUnavailable
from worker.ops import control

blueprint = Blueprint("control", __name__)


def back() -> Response:
    """To the page the button was on (a path on this console only)."""
    return redirect(safe_path(request.form.get("back")))


@blueprint.post("/pause")
def pause() -> Response:
    console = state()
    with console.sessions.begin() as session:
        was_paused = control.pause(session, actor=current_actor())
    flash("already paused" if was_paused else "paused: events are recorded as pending and not applied", "info")
    return back()


@blueprint.post("/resume")
def resume() -> Response:
    console = state()
    try:
        resumed = control.resume(
            console.sessions.begin,
            console.publisher,
            actor=current_actor(),
            stale_pending_seconds=console.settings.stale_pending_seconds,
        )
    except QueueUnavailable:
        flash(
            "resumed, but the queue is unavailable: held events stay pending until the sweeper enqueues them", "error"
        )
        return back()
    flash(f"{'resumed' if resumed.was_paused else 'was not paused'}: released {resumed.released} held event(s)", "info")
    return back()
