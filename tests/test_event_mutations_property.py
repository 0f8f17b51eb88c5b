"""Property: a real Clerk payload, mutated any way, is applied exactly as the reference model says or ends
dead with the synced tables untouched; never applied wrongly, never retried.

Mutations: dropped fields, nulls, wrong types, huge and negative numbers, non-ASCII text, nested junk,
at any place in the envelope or its data.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as label
from hypothesis import strategies as st
from sqlalchemy import select

from devkit.history import Event, empty_synced_tables, reference_tables, snapshot
from shared.models import WebhookEvent
from tests.support.pipeline import deliver_one
from tests.support.signing import load_payload
from worker.pipeline.ledger import Delivery

# A small world the mutated event lands in: the user, the organization and a membership between them.
BASE = ("user.created", "organization.created", "organizationMembership.created")
TARGETS = (
    "user.updated",
    "user.deleted",
    "organization.updated",
    "organization.deleted",
    "organizationMembership.updated",
    "organizationMembership.deleted",
    "organizationInvitation.accepted",
    "organizationDomain.updated",
    "organizationDomain.deleted",
)
JUNK = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.sampled_from([0, -1, 1e30, -1e30, 1.5, 10**12 - 1, 4_102_444_800_001, 2**63]),
        # The edges of Clerk's times: 2000-01-01 and 2100-01-01 in seconds and in milliseconds, and past them.
        st.sampled_from(
            [
                946_684_799,
                946_684_800,
                4_102_444_800,
                4_102_444_801,
                946_684_799_999,
                946_684_800_000,
                4_102_444_800_000,
            ]
        ),
        st.text(max_size=20),
        st.sampled_from(["", "ünïcødé ✓", "user_", "org_x", "<script>alert(1)</script>", "\ud800", "1716883500000"]),
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value (dict keys and list indexes), the root's children first."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


@st.composite
def mutations(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(TARGETS))
    payload = copy.deepcopy(load_payload(name))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(payload)))
        parent = payload
        for key in path[:-1]:
            parent = parent[key]
        operation = draw(st.sampled_from(["drop", "replace", "add"]))
        if operation == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif operation == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(JUNK)
        else:
            parent[path[-1]] = draw(JUNK)
    return payload


def _without(payload: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``payload`` with ``keys`` removed from its data (an older or a trimmed shape)."""
    return {**payload, "data": {key: value for key, value in payload["data"].items() if key not in keys}}


def _deliver(session_factory, app_settings, svix_id: str, payload: dict[str, Any]) -> str:  # type: ignore[no-untyped-def]
    body = json.dumps(payload)
    return deliver_one(session_factory, Delivery(svix_id, None, body), settings=app_settings)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations())
@example(mutation=_without(load_payload("organizationMembership.deleted"), "updated_at", "created_at"))
@example(mutation={**load_payload("user.deleted"), "timestamp": 946_684_800_000})  # 2000-01-01 in milliseconds
def test_a_mutated_payload_is_applied_as_the_model_says_or_dead_and_harmless(session_factory, settings, mutation):  # type: ignore[no-untyped-def]
    # Given the small world, applied
    with session_factory.begin() as session:
        empty_synced_tables(session)
    base = [Event(f"msg_base_{n}", name, 1716883200000 + n, load_payload(name)) for n, name in enumerate(BASE)]
    for event in base:
        assert _deliver(session_factory, settings, event.svix_id, event.payload) == "processed"
    with session_factory() as session:
        before = snapshot(session)

    # When a mutated event arrives
    payload = mutation
    status = _deliver(session_factory, settings, "msg_mutated", payload)

    # Then either it is dead at once with the tables untouched, or the tables equal the model's
    with session_factory() as session:
        after = snapshot(session)
        row = session.scalars(select(WebhookEvent).where(WebhookEvent.svix_id == "msg_mutated")).one()
    assert status in ("processed", "ignored", "dead")
    label(status)
    if status == "dead":
        assert after == before
        assert (row.attempts, row.next_attempt_at) == (1, None)
        assert (row.last_error or "").startswith("invalid_payload: ")
        assert "\n" not in row.last_error
        return
    if payload.get("type") not in TARGETS:  # the mutation renamed the type to one that is not synced
        assert status == "ignored" and after == before
        return
    mutated = Event("msg_mutated", payload["type"], 1716883900000, payload)
    assert after == reference_tables([*base, mutated])
