"""What the ingress builds once at start-up and reuses for every request."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app
from svix.webhooks import Webhook

from shared.config import Settings
from shared.queue import EventPublisher, make_celery, redis_client


@dataclass
class IngressState:
    settings: Settings
    verifiers: tuple[Webhook, ...]
    publisher: EventPublisher
    broker: redis.Redis

    @classmethod
    def from_settings(cls, settings: Settings) -> IngressState:
        return cls(
            settings=settings,
            verifiers=tuple(Webhook(secret) for secret in settings.require_webhook_secrets()),
            publisher=EventPublisher(make_celery(settings, role="publisher", name="clerk_sync_ingress"), settings),
            broker=redis_client(settings.redis_url, timeout=1.0),
        )


def state() -> IngressState:
    return current_app.extensions["clerk_sync"]  # type: ignore[no-any-return]
