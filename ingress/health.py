"""Liveness and readiness: the load balancer's and the orchestrator's view."""

from __future__ import annotations

from flask import Blueprint

from ingress.state import state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[dict[str, str], int]:
    """200 while the process lives."""
    return {"status": "ok"}, 200


@bp.get("/readyz")
def readyz() -> tuple[dict[str, str], int]:
    """200 when the broker would take an event; 503 otherwise (unreachable, refusing writes, or
    full), when every delivery would be answered 503 too."""
    ingress = state()
    refusal = ingress.publisher.refusal()
    if refusal is not None:
        return {"status": "unavailable", "broker": refusal}, 503
    ingress.gate.open()
    return {"status": "ready"}, 200
