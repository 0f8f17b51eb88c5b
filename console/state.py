"""What the console keeps per process: its settings, a session factory, a publisher."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import session_factory

if TYPE_CHECKING:
    from shared.publish import EventPublisher


class ConsoleState:
    """Built once by ``create_app``; the publisher is made on the first replay or resume."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions: sessionmaker[Session] = session_factory(settings)
        self._publisher: EventPublisher | None = None
        self._lock = threading.Lock()

    @property
    def publisher(self) -> EventPublisher:
        with self._lock:
            if self._publisher is None:
                from shared.publish import EventPublisher

                # 5 s: an operator waits for the answer, a blip should not fail the action.
                self._publisher = EventPublisher(self.settings, timeout=5.0)
            return self._publisher

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for a page that only reads."""
        with self.sessions() as session:
            yield session


def state() -> ConsoleState:
    return current_app.extensions["clerk_sync"]  # type: ignore[no-any-return]
