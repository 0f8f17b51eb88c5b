"""Property: any delivery order, with duplicates, converges to the reference model.

Histories are generated in Clerk's order (devkit/history.py), delivered through
``deliver_one`` (a batch of one) in a random permutation with repeated svix-ids, and the synced
tables compared with applying each distinct event once in Clerk's order; once one
event per transaction, once in batches of random size as the worker applies them.
"""

from __future__ import annotations

import dataclasses
import random
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.history import Event, HistoryBuilder, empty_synced_tables, reference_tables, snapshot
from tests.support.ledger import statuses
from tests.support.pipeline import deliver_one
from worker.pipeline.batch import process_batch
from worker.pipeline.ledger import Delivery

steps = st.lists(st.tuples(st.integers(0, 11), st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=30)


def _history(rng: random.Random, script: list[tuple[int, int, int]]) -> list[Event]:
    builder = HistoryBuilder(rng=rng)
    # Users and an organization to start with; the first user leaves and rejoins under a new membership id.
    user, _ = builder.create_user().entity_id, builder.create_user()
    org = builder.create_org().entity_id
    builder.leave(builder.join(user, org).entity_id)
    builder.join(user, org)
    for choice, a, b in script:
        builder.step(choice, a, b)
    return builder.events


def _deliver(session_factory, app_settings, events: list[Event]) -> list[str]:  # type: ignore[no-untyped-def]
    return [deliver_one(session_factory, Delivery(e.svix_id, None, e.body), settings=app_settings) for e in events]


def _with_duplicates(rng: random.Random, events: list[Event]) -> list[Event]:
    """Shuffled, with some events delivered again under the same svix-id."""
    stream = events + [e for e in events if rng.random() < 0.3]
    rng.shuffle(stream)
    return stream


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps, rng=st.randoms(use_true_random=False), scrub=st.booleans())
def test_any_delivery_order_converges_to_the_model(session_factory, settings, script, rng, scrub):  # type: ignore[no-untyped-def]
    # Given a history in Clerk's order, and empty tables for this example
    app_settings = dataclasses.replace(settings, deleted_user_pii="scrub" if scrub else "keep")
    with session_factory.begin() as session:
        empty_synced_tables(session)
    events = _history(rng, script)

    # When it is delivered shuffled, with duplicates
    stream = _with_duplicates(rng, events)
    delivered = _deliver(session_factory, app_settings, stream)

    # Then the tables equal the model, every event is final, and each svix-id has one row
    assert set(delivered) <= {"processed", "ignored"}
    with session_factory() as session:
        assert snapshot(session) == reference_tables(events, scrub_pii=scrub)
    assert len(statuses(session_factory)) == len(events)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    script=steps,
    rng=st.randoms(use_true_random=False),
    scrub=st.booleans(),
    size=st.integers(1, 40),
    private=st.booleans(),
)
def test_any_delivery_order_in_batches_converges_to_the_model(
    session_factory, settings, script, rng, scrub, size, private
):  # type: ignore[no-untyped-def]
    # Given a history in Clerk's order, and empty tables for this example
    app_settings = dataclasses.replace(
        settings, deleted_user_pii="scrub" if scrub else "keep", sync_private_metadata=private
    )
    with session_factory.begin() as session:
        empty_synced_tables(session)
    events = _history(rng, script)

    # When it is delivered shuffled, with duplicates, in batches of random size (the worker's path)
    stream = _with_duplicates(rng, events)
    delivered: dict[str, str] = {}
    for start in range(0, len(stream), size):
        chunk = [Delivery(e.svix_id, None, e.body) for e in stream[start : start + size]]
        delivered.update(process_batch(session_factory, chunk, settings=app_settings))

    # Then the tables equal the model, every event is final, and each svix-id has one row
    assert set(delivered.values()) <= {"processed", "ignored"}
    with session_factory() as session:
        assert snapshot(session) == reference_tables(events, scrub_pii=scrub, private_metadata=private)
    assert len(statuses(session_factory)) == len(events)


@pytest.mark.parametrize("batch_size", [1, 16], ids=["one-per-transaction", "batches"])
def test_concurrent_workers_converge_to_the_model(session_factory, settings, batch_size):  # type: ignore[no-untyped-def]
    # Given a history over a few rows, where every event touches the same handful of entities
    rng = random.Random(20240528)
    builder = HistoryBuilder(rng=rng)
    users = [builder.create_user().entity_id for _ in range(3)]
    orgs = [builder.create_org().entity_id for _ in range(2)]
    for user in users:
        for org in orgs:
            builder.join(user, org)
    for _ in range(40):
        builder.step(rng.randrange(12), rng.randrange(6), rng.randrange(6))
    events = builder.events

    # When four threads each deliver the whole stream, shuffled and duplicated, at once
    errors: list[BaseException] = []
    results: list[str] = []
    start = threading.Barrier(4)

    def worker(seed: int) -> None:
        try:
            stream = _with_duplicates(random.Random(seed), events)
            start.wait(timeout=30)
            if batch_size == 1:
                results.extend(_deliver(session_factory, settings, stream))
                return
            for first in range(0, len(stream), batch_size):
                chunk = [Delivery(e.svix_id, None, e.body) for e in stream[first : first + batch_size]]
                results.extend(process_batch(session_factory, chunk, settings=settings).values())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)

    # Then no event failed, one row per svix-id, and the tables equal the model
    assert errors == []
    assert set(results) <= {"processed", "ignored"}
    ledger = statuses(session_factory)
    assert set(ledger.values()) <= {"processed", "ignored"}
    assert len(ledger) == len(events)
    with session_factory() as session:
        assert snapshot(session) == reference_tables(events)
