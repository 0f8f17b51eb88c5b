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
    """200 when the broker answers; 503 otherwise, so no event is accepted to be lost."""
    ingress = state()
    if not ingress.publisher.ping():
        return {"status": "unavailable", "broker": "unreachable"}, 503
    ingress.gate.open()
    return {"status": "ready"}, 200
