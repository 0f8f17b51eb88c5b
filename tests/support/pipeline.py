"""Apply deliveries the way the Celery task does, without a broker: ``process_batch`` on a real database."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from worker.pipeline.batch import process_batch
from worker.pipeline.ledger import Delivery


def deliver_one(factory: sessionmaker[Session], delivery: Delivery, *, settings: Settings) -> str:
    """One delivery as a batch of one (what the worker does with a lone message); its status."""
    return process_batch(factory, [delivery], settings=settings)[delivery.svix_id]
