"""What the ingress builds once at start-up and reuses for every request."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from flask import current_app
from svix.webhooks import Webhook

from shared.config import Settings
from shared.publish import EventPublisher, QueueUnavailable

# Redis's connect and reply timeout for a delivery: an outage is a 503 well within 2 s.
PUBLISH_TIMEOUT_SECONDS = 1.0


class BrokerGate:
    """After a publish that waited and failed, deliveries are refused at once for a moment; then one
    at a time tries the broker.

    A broker that hangs costs a publish its whole timeout (1 s): a burst of deliveries would hold
    every request thread for a second each, and the deliveries queued behind them (and /healthz)
    would wait many seconds for a thread before their own second. Once a publish has failed after
    waiting on the broker, the deliveries of the next ``pause`` seconds (those that waited for a
    thread meanwhile) answer 503 without waiting, Svix retries them; after it, one delivery at a
    time tries the broker, the others still answered 503, until one succeeds. /readyz opens the
    gate when the broker takes its write. A publish refused at once (a dropped connection) closes nothing.
    """

    def __init__(self, pause: float) -> None:
        self._pause = pause
        self._failed_at: float | None = None
        self._trial = threading.Lock()

    def publish(self, publisher: EventPublisher, *, svix_id: str, svix_timestamp: int, body: str) -> None:
        """``publisher.publish``, or QueueUnavailable at once while the broker is failing."""
        failed_at, trial = self._failed_at, False
        if failed_at is not None:
            if time.monotonic() - failed_at < self._pause or not self._trial.acquire(blocking=False):
                raise QueueUnavailable("BrokerFailing")
            trial = True
        started = time.monotonic()
        try:
            publisher.publish(svix_id=svix_id, svix_timestamp=svix_timestamp, body=body)
        except QueueUnavailable:
            # A publish refused at once (a dropped connection, Redis refusing) held no thread: only one
            # that waited on the broker, or a trial, closes the gate.
            if trial or time.monotonic() - started >= self._pause / 2:
                self._failed_at = time.monotonic()
            raise
        else:
            self._failed_at = None
        finally:
            if trial:
                self._trial.release()

    def open(self) -> None:
        """The broker takes writes again (/readyz): deliveries go to it at once."""
        self._failed_at = None


@dataclass
class IngressState:
    settings: Settings
    verifiers: tuple[Webhook, ...]
    publisher: EventPublisher
    # The publisher's timeout: a delivery that waited a timeout for a thread is not made to wait another.
    gate: BrokerGate = field(default_factory=lambda: BrokerGate(pause=PUBLISH_TIMEOUT_SECONDS))

    @classmethod
    def from_settings(cls, settings: Settings) -> IngressState:
        return cls(
            settings=settings,
            verifiers=tuple(Webhook(secret) for secret in settings.require_webhook_secrets()),
            publisher=EventPublisher(settings, timeout=PUBLISH_TIMEOUT_SECONDS),
        )

    def enqueue(self, *, svix_id: str, svix_timestamp: int, body: str) -> None:
        """Put a verified event on the queue (through the gate); QueueUnavailable if it is not there."""
        self.gate.publish(self.publisher, svix_id=svix_id, svix_timestamp=svix_timestamp, body=body)


def state() -> IngressState:
    return current_app.extensions["clerk_sync"]  # type: ignore[no-any-return]
