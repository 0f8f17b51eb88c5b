"""What the ingress builds once at start-up and reuses for every request."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from svix.webhooks import Webhook

from shared.config import Settings
from shared.publish import EventPublisher


@dataclass
class IngressState:
    settings: Settings
    verifiers: tuple[Webhook, ...]
    publisher: EventPublisher

    @classmethod
    def from_settings(cls, settings: Settings) -> IngressState:
        return cls(
            settings=settings,
            verifiers=tuple(Webhook(secret) for secret in settings.require_webhook_secrets()),
            publisher=EventPublisher(settings),
        )


def state() -> IngressState:
    return current_app.extensions["clerk_sync"]  # type: ignore[no-any-return]
