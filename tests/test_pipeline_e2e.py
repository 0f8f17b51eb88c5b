"""End to end through real gunicorn, Celery worker, Redis and Postgres."""

from __future__ import annotations

from sqlalchemy import func, select

from shared.models import User, WebhookEvent
from tests.support.signing import load_payload, post_event
from tests.support.waiting import wait_for


def test_signed_event_is_recorded_and_applied(processes, session_factory):
    # Given a running ingress and worker
    web = processes.start_web()
    processes.start_worker()

    # When a signed user.updated arrives twice under one svix-id
    payload = load_payload("user.updated")
    for _ in range(2):
        assert post_event(web.url, payload, svix_id="msg_e2e_one").status_code == 200

    # Then one ledger row ends processed and the user row holds the primary email
    def processed():
        with session_factory() as session:
            return (
                session.scalar(select(WebhookEvent.status).where(WebhookEvent.svix_id == "msg_e2e_one")) == "processed"
            )

    wait_for(processed, timeout=30, what="event processed")
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 1
        user = session.scalars(select(User)).one()
        assert user.email == "john.doe@example.com"
