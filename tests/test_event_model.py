"""The validated event model: every synced type's schema, and the one-line reason a body is refused."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from shared.events import SYNCED_TYPES, InvalidEvent, Unsynced, parse
from shared.resources import BY_EVENT_TYPE, RESOURCES
from tests.support.signing import FIXTURES, PAYLOADS, load_payload
from worker.pipeline.handlers import HANDLERS


def test_every_sample_of_a_synced_type_parses_to_its_resource():
    for path in sorted(PAYLOADS.glob("*.json")):
        body = path.read_text()
        event = parse(body)
        event_type = json.loads(body)["type"]
        if event_type in SYNCED_TYPES:
            assert not isinstance(event, Unsynced)
            assert event.type == event_type
            assert event.resource is BY_EVENT_TYPE[event_type]
            assert event.entity_id == json.loads(body)["data"]["id"]
        else:
            assert event == Unsynced(event_type)


def test_every_synced_type_has_a_send_sample_and_keeps_its_data_as_sent():
    samples = {path.stem for path in PAYLOADS.glob("*.json")}
    assert samples >= SYNCED_TYPES
    for event_type in sorted(SYNCED_TYPES):
        body = (PAYLOADS / f"{event_type}.json").read_text()
        event = parse(body)
        assert not isinstance(event, Unsynced)
        assert json.loads(bytes(event.clerk_data)) == json.loads(body)["data"]


def test_a_body_cannot_choose_its_own_clerk_data():
    payload = load_payload("organizationDomain.created")
    payload["clerk_data"] = {"forged": True}

    event = parse(json.dumps(payload))

    assert not isinstance(event, Unsynced)
    assert json.loads(bytes(event.clerk_data)) == payload["data"]


def test_older_shapes_from_the_docs_parse():
    for path in sorted((FIXTURES / "variants").glob("*.json")):
        assert not isinstance(parse(path.read_text()), Unsynced), path.name


def test_fields_clerk_adds_later_are_accepted_and_ignored():
    payload = load_payload("user.updated")
    payload["brand_new_envelope_field"] = {"nested": [1, 2, 3]}
    payload["data"]["brand_new_field"] = "x"
    payload["data"]["email_addresses"][0]["brand_new_field"] = None
    event = parse(json.dumps(payload))
    assert event.entity_id == payload["data"]["id"]  # type: ignore[union-attr]


def test_times_in_seconds_and_milliseconds_are_both_milliseconds():
    payload = load_payload("user.deleted")
    in_ms = parse(json.dumps(payload))
    payload["timestamp"] //= 1000
    in_seconds = parse(json.dumps(payload))
    assert in_ms.timestamp_ms // 1000 == in_seconds.timestamp_ms // 1000  # type: ignore[union-attr]
    assert in_seconds.timestamp_ms % 1000 == 0  # type: ignore[union-attr]


def test_membership_events_name_their_user_and_organization():
    event = parse(json.dumps(load_payload("organizationMembership.deleted")))
    assert event.parents == {  # type: ignore[union-attr]
        "users": "user_2h8op3Isl1QR7tKu5FGNfaLKEoU",
        "organizations": "org_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
    }


def mutated(name: str, change: Any) -> str:
    payload = copy.deepcopy(load_payload(name))
    change(payload)
    return json.dumps(payload)


def _set(path: str, value: Any) -> Any:
    def change(payload: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = payload
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[last] = value

    return change


def _drop(path: str) -> Any:
    def change(payload: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = payload
        for key in parents:
            target = target[key]
        del target[last]

    return change


# (sample, mutation, the exact reason)
REFUSED = [
    ("user.updated", _drop("data.updated_at"), "data.updated_at is missing"),
    ("user.updated", _set("timestamp", "yesterday"), "timestamp: expected int, got str"),
    ("user.updated", _drop("timestamp"), "timestamp is missing"),
    ("user.updated", _set("data.email_addresses", "jd@example.com"), "data.email_addresses: expected array | null, got str"),
    ("user.updated", _set("data.email_addresses.0.email_address", 7), "data.email_addresses[0].email_address: expected str, got int"),
    ("user.updated", _set("data.updated_at", 1e30), "data.updated_at: expected int, got float"),
    ("user.updated", _set("data.updated_at", 10**30), "data.updated_at: expected int <= 4102444800000"),
    ("user.updated", _set("data.updated_at", -1), "data.updated_at: expected int >= 946684800"),
    ("user.updated", _set("data.updated_at", 50_000_000_000), "data.updated_at is not a time in seconds or milliseconds between 2000 and 2100"),
    ("user.updated", _set("data.updated_at", True), "data.updated_at: expected int, got bool"),
    # Every struct's time fields are checked for the gap between seconds and milliseconds.
    ("user.updated", _set("data.last_sign_in_at", 50_000_000_000), "data.last_sign_in_at is not a time in seconds or milliseconds between 2000 and 2100"),
    ("user.updated", _set("data.last_active_at", 50_000_000_000), "data.last_active_at is not a time in seconds or milliseconds between 2000 and 2100"),
    ("organization.updated", _set("data.created_at", 50_000_000_000), "data.created_at is not a time in seconds or milliseconds between 2000 and 2100"),
    ("organizationInvitation.created", _set("data.expires_at", 50_000_000_000), "data.expires_at is not a time in seconds or milliseconds between 2000 and 2100"),
    ("organizationDomain.updated", _set("data.updated_at", 50_000_000_000), "data.updated_at is not a time in seconds or milliseconds between 2000 and 2100"),
    ("organizationMembership.deleted", _set("data.updated_at", 50_000_000_000), "data.updated_at is not a time in seconds or milliseconds between 2000 and 2100"),
    ("user.updated", _set("data.id", "org_2g7np7Hrk0SN6kj5EDMLDaKNL0S"), "data.id: expected str matching regex '^user_[!-~]+$'"),
    ("user.updated", _set("data.id", "user_" + "x" * 60), "data.id: expected str of length <= 64"),
    ("user.updated", _set("data.id", "user_ünïcode"), "data.id: expected str matching regex '^user_[!-~]+$'"),
    ("user.updated", _set("data.public_metadata", ["a"]), "data.public_metadata: expected object | null, got array"),
    ("user.updated", _set("data", None), "data: expected object, got null"),
    ("user.updated", _set("instance_id", 5), "instance_id: expected str | null, got int"),
    ("organizationMembership.created", _drop("data.organization"), "data.organization is missing"),
    ("organizationMembership.created", _drop("data.public_user_data"), "data.public_user_data is missing"),
    ("organizationMembership.created", _set("data.public_user_data.user_id", None), "data.public_user_data.user_id: expected str, got null"),
    ("organizationMembership.updated", _set("data.role", 1), "data.role: expected str | null, got int"),
    ("user.deleted", _set("timestamp", 1.5), "timestamp: expected int, got float"),
    ("organization.deleted", _drop("data.id"), "data.id is missing"),
]  # fmt: skip


@pytest.mark.parametrize(("sample", "change", "reason"), REFUSED, ids=[r[2][:60] for r in REFUSED])
def test_an_invalid_body_is_refused_naming_the_field_and_the_rule(sample, change, reason):
    with pytest.raises(InvalidEvent) as info:
        parse(mutated(sample, change))
    assert str(info.value) == f"invalid_payload: {reason}"
    assert info.value.event_type == json.loads(mutated(sample, change)).get("type")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "the body is not JSON"),
        ("[1, 2]", "the body is not a JSON object"),
        ('{"data": {"id": "user_1"}}', "type is missing"),
        ('{"type": 5, "data": {}}', "type: expected str"),
        ('{"type": "user.created", "timestamp": 1716883200012, "data": {"id": "user_1", "first_name": "a\\u0000"}}',
         "the body holds \\u0000, which Postgres cannot store"),
        ('{"type": "user.created", "data": ' + "[" * 100_000 + "]" * 100_000 + "}", "the body nests too deeply"),
        ('{"type": "user.created", "timestamp": 1716883200012, "data": {"id": "user_1", "x": '
         + "[" * 100_000 + "]" * 100_000 + "}}", "the body nests too deeply"),
        ('{"type": "session.created", "data": ' + "{\"a\": " * 100_000 + "1" + "}" * 100_000 + "}",
         "the body nests too deeply"),
    ],
)  # fmt: skip
def test_a_body_that_is_no_event_is_refused_in_one_line(body, reason):
    with pytest.raises(InvalidEvent) as info:
        parse(body)
    assert str(info.value) == f"invalid_payload: {reason}"
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "extra",
    ['"a\\u0000b"', '"a\\ud800b"'],
    ids=["a NUL", "a lone surrogate"],
)
def test_a_type_that_is_not_synced_is_unsynced_whatever_its_body_holds_that_postgres_refuses(extra):
    # Given a session event (recorded without its body) holding what Postgres cannot store
    body = '{"type": "session.created", "timestamp": 1716883200012, "data": {"id": "sess_1"}, "zz": ' + extra + "}"
    # Then it is merely not synced, as any session event
    assert parse(body) == Unsynced("session.created")


def test_an_escaped_backslash_before_u0000_is_text_not_a_nul():
    body = mutated("user.updated", _set("data.first_name", "a\\u0000"))  # the six characters \u0000
    assert "\\\\u0000" in body
    assert parse(body).data.first_name == "a\\u0000"  # type: ignore[union-attr]


def test_every_synced_type_has_a_handler_and_a_resource():
    assert set(HANDLERS) == SYNCED_TYPES == {t for r in RESOURCES for t in r.event_types}
