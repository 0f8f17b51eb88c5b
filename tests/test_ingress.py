"""The ingress through Flask's test client, against the run's real Redis.

Requests are signed with the svix library's own signer; what the ingress enqueues
is read back from the Redis list Celery uses, and decoded.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import subprocess
import sys
from typing import Any

import pytest
import redis
import requests
from svix.webhooks import Webhook

from ingress import create_app
from shared.config import load_settings
from shared.publish import PROCESS_EVENT_TASK
from tests.support.processes import free_port
from tests.support.signing import FIXTURES, OTHER_SECRET, SECRET, load_payload, new_svix_id, signed_headers

VECTORS = json.loads((FIXTURES / "svix-test-vectors.json").read_text())["vectors"]
URL = "/webhooks/clerk"


@pytest.fixture
def client(settings, redis_client):
    return create_app(settings).test_client()


def queued(redis_client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The Celery messages waiting in ``queue``, decoded: headers plus (args, kwargs, embed)."""
    messages = []
    for raw in redis_client.lrange(queue, 0, -1):
        message = json.loads(raw)
        assert message["properties"]["body_encoding"] == "base64"
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        messages.append({"headers": message["headers"], "args": args, "kwargs": kwargs})
    return messages


def body_of(name: str = "user.created") -> str:
    return json.dumps(load_payload(name))


def raw_signature(secret: str, svix_id: str, timestamp: int, body: bytes) -> str:
    """A v1 signature over raw bytes, for bodies the svix signer cannot take (not UTF-8)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{svix_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def test_signed_event_is_enqueued_raw_with_its_svix_id(client, settings, redis_client):
    # Given a body with odd spacing and non-ASCII text, exactly as Svix might send it
    body = json.dumps(load_payload("user.updated"), indent=3, ensure_ascii=False).replace("Doe", "Dö e") + "\n"
    headers = signed_headers(body, svix_id="msg_ingress_1")

    # When it is posted once
    response = client.post(URL, data=body.encode(), headers=headers)

    # Then it is answered 200 and one message waits, carrying the svix-id and the body as sent
    assert response.status_code == 200, response.get_data(as_text=True)
    messages = queued(redis_client, settings.queue_name)
    assert len(messages) == 1
    message = messages[0]
    assert message["headers"]["id"] == "msg_ingress_1"
    assert message["headers"]["task"] == PROCESS_EVENT_TASK
    assert message["args"] == ["msg_ingress_1", int(headers["svix-timestamp"]), body]
    assert message["kwargs"] == {}
    # And Celery's printable copy of the arguments, which it logs, leaves the body (PII) out
    assert "Dö e" not in message["headers"]["argsrepr"]
    assert "msg_ingress_1" in message["headers"]["argsrepr"]


def test_each_delivery_is_enqueued_even_with_one_svix_id(client, settings, redis_client):
    # Deduplication is the worker's job (in Postgres); the ingress only refuses to lose anything.
    body = body_of()
    for _ in range(2):
        assert client.post(URL, data=body, headers=signed_headers(body, svix_id="msg_twice")).status_code == 200
    assert [m["headers"]["id"] for m in queued(redis_client, settings.queue_name)] == ["msg_twice", "msg_twice"]


@pytest.mark.parametrize("signer", [SECRET, OTHER_SECRET])
@pytest.mark.parametrize("separator", [" ", ",", ", "])
def test_either_secret_signs_during_rotation(base_env, redis_client, signer, separator):
    settings = load_settings({**base_env, "CLERK_WEBHOOK_SECRET": f"{SECRET}{separator}{OTHER_SECRET}"})
    client = create_app(settings).test_client()
    body = body_of()
    response = client.post(URL, data=body, headers=signed_headers(body, secret=signer))
    assert response.status_code == 200
    assert redis_client.llen(settings.queue_name) == 1


def test_signature_from_an_unknown_secret_is_rejected(client, settings, redis_client):
    body = body_of()
    response = client.post(URL, data=body, headers=signed_headers(body, secret=OTHER_SECRET))
    assert response.status_code == 401
    assert redis_client.llen(settings.queue_name) == 0


def test_rotation_header_with_several_signatures(client, settings, redis_client):
    # Svix sends one signature per active secret, separated by spaces.
    body = body_of()
    headers = signed_headers(body, svix_id="msg_multi")
    other = signed_headers(body, svix_id="msg_multi", secret=OTHER_SECRET)["svix-signature"]
    headers["svix-signature"] = f"{other} v2,c29tZXRoaW5n {headers['svix-signature']}"
    assert client.post(URL, data=body, headers=headers).status_code == 200
    assert redis_client.llen(settings.queue_name) == 1


@pytest.mark.parametrize(
    "around", ["v1,!!!x {valid}", "v1 {valid}", "{valid}  v1,abcde", "v1a,AAAA,BB {valid}", "garbage  {valid}"]
)
def test_a_valid_signature_counts_whatever_malformed_entries_stand_beside_it(base_env, redis_client, around):
    # Given two secrets, the body signed by the second one only, beside entries that are not signatures
    settings = load_settings({**base_env, "CLERK_WEBHOOK_SECRET": f"{OTHER_SECRET}, {SECRET}"})
    client = create_app(settings).test_client()
    body = body_of()
    headers = signed_headers(body)
    headers["svix-signature"] = around.format(valid=headers["svix-signature"])
    # Then it is accepted and enqueued
    assert client.post(URL, data=body, headers=headers).status_code == 200
    assert redis_client.llen(settings.queue_name) == 1


def test_unbranded_webhook_headers(client, settings, redis_client):
    body = body_of()
    headers = signed_headers(body, svix_id="msg_unbranded", prefix="webhook")
    assert "svix-id" not in headers
    assert client.post(URL, data=body, headers=headers).status_code == 200
    assert [m["headers"]["id"] for m in queued(redis_client, settings.queue_name)] == ["msg_unbranded"]


@pytest.mark.parametrize("offset", [dt.timedelta(minutes=-6), dt.timedelta(minutes=6), dt.timedelta(days=-400)])
def test_timestamp_outside_tolerance_is_rejected(client, settings, redis_client, offset):
    body = body_of()
    headers = signed_headers(body, timestamp=dt.datetime.now(dt.UTC) + offset)
    response = client.post(URL, data=body, headers=headers)
    assert response.status_code in (400, 401)
    assert redis_client.llen(settings.queue_name) == 0


@pytest.mark.parametrize("missing", ["id", "timestamp", "signature"])
@pytest.mark.parametrize("prefix", ["svix", "webhook"])
def test_missing_header_is_rejected(client, settings, redis_client, missing, prefix):
    body = body_of()
    headers = signed_headers(body, prefix=prefix)
    del headers[f"{prefix}-{missing}"]
    assert client.post(URL, data=body, headers=headers).status_code == 400
    assert redis_client.llen(settings.queue_name) == 0


def test_no_headers_and_no_body(client, settings, redis_client):
    assert client.post(URL).status_code == 400
    assert redis_client.llen(settings.queue_name) == 0


MALFORMED_SIGNATURES = [
    "v1",
    "v1,",
    "v1,not-base64!!",
    "v1,abc",
    "v1,a,b",
    "garbage",
    " ",
    ",",
    "v2,c29tZXRoaW5n",
    "v1,c29tZXRoaW5n",
    "v1,\u00e9\u00e9\u00e9\u00e9",
    "v1," + "A" * 5000,
]
MALFORMED_TIMESTAMPS = ["", "soon", "nan", "inf", "-inf", "1e30", "-1", "0x10", "12 34"]


@pytest.mark.parametrize(
    ("header", "value"),
    [("svix-signature", value) for value in MALFORMED_SIGNATURES]
    + [("svix-timestamp", value) for value in MALFORMED_TIMESTAMPS],
)
def test_malformed_signature_or_timestamp_is_rejected_never_500(client, settings, redis_client, header, value):
    body = body_of()
    headers = signed_headers(body)
    headers[header] = value
    response = client.post(URL, data=body, headers=headers)
    assert response.status_code in (400, 401), response.get_data(as_text=True)
    assert redis_client.llen(settings.queue_name) == 0


def test_overlong_svix_id_is_rejected(client, settings, redis_client):
    body = body_of()
    headers = signed_headers(body, svix_id="msg_" + "x" * 300)
    assert client.post(URL, data=body, headers=headers).status_code == 400
    assert redis_client.llen(settings.queue_name) == 0


def test_body_over_one_mebibyte_is_rejected(client, settings, redis_client):
    body = json.dumps({"type": "user.created", "data": {"pad": "x" * (1024 * 1024)}})
    response = client.post(URL, data=body, headers=signed_headers(body))
    assert response.status_code == 413
    assert redis_client.llen(settings.queue_name) == 0


def test_body_just_under_the_limit_is_accepted(client, settings, redis_client):
    envelope = {"type": "session.created", "data": {"pad": ""}}
    pad = 1024 * 1024 - len(json.dumps(envelope))
    body = json.dumps({"type": "session.created", "data": {"pad": "x" * pad}})
    assert len(body.encode()) == 1024 * 1024
    assert client.post(URL, data=body, headers=signed_headers(body)).status_code == 200
    assert redis_client.llen(settings.queue_name) == 1


def test_lowered_body_limit(base_env, redis_client):
    settings = load_settings({**base_env, "MAX_BODY_BYTES": "1000"})
    client = create_app(settings).test_client()
    small = json.dumps({"type": "session.created", "data": {}})
    big = json.dumps({"type": "session.created", "data": {"pad": "x" * 1000}})
    assert client.post(URL, data=big, headers=signed_headers(big)).status_code == 413
    assert redis_client.llen(settings.queue_name) == 0
    assert client.post(URL, data=small, headers=signed_headers(small)).status_code == 200
    assert redis_client.llen(settings.queue_name) == 1


def test_oversized_chunked_body_is_rejected_by_the_web_process(processes, redis_client):
    # A chunked upload announces no length: the limit must hold while reading (the real web process).
    web = processes.start_web(workers=1, MAX_BODY_BYTES="1000")
    big = json.dumps({"type": "session.created", "data": {"pad": "x" * 5000}}).encode()

    def chunks():
        for start in range(0, len(big), 512):
            yield big[start : start + 512]

    response = requests.post(f"{web.url}{URL}", data=chunks(), headers=signed_headers(big), timeout=30)
    assert response.status_code == 413
    assert redis_client.llen(processes.env["CLERK_SYNC_QUEUE"]) == 0


def test_body_that_is_not_utf8_is_rejected_even_when_signed(client, settings, redis_client):
    body = b'{"type": "user.created", "data": {"first_name": "\xff\xfe"}}'
    svix_id, timestamp = new_svix_id(), int(dt.datetime.now(dt.UTC).timestamp())
    headers = {
        "svix-id": svix_id,
        "svix-timestamp": str(timestamp),
        "svix-signature": raw_signature(SECRET, svix_id, timestamp, body),
        "content-type": "application/json",
    }
    assert client.post(URL, data=body, headers=headers).status_code == 400
    assert redis_client.llen(settings.queue_name) == 0


def test_unsynced_event_type_is_accepted(client, settings, redis_client):
    body = body_of("session.created")
    assert client.post(URL, data=body, headers=signed_headers(body)).status_code == 200
    assert redis_client.llen(settings.queue_name) == 1


def test_signed_body_that_is_not_json_is_still_only_enqueued(client, settings, redis_client):
    # The ingress does not parse bodies; the worker parks such an event as dead.
    body = "this is not json"
    assert client.post(URL, data=body, headers=signed_headers(body)).status_code == 200
    assert queued(redis_client, settings.queue_name)[0]["args"][2] == body


def test_other_methods_and_paths_are_refused_in_json(client, settings, redis_client):
    wrong_method = client.get(URL)
    assert (wrong_method.status_code, wrong_method.get_json()) == (405, {"error": "method_not_allowed"})
    assert "POST" in wrong_method.headers["Allow"]
    unknown = client.post("/webhooks/other", data="{}")
    assert (unknown.status_code, unknown.get_json()) == (404, {"error": "not_found"})
    assert redis_client.llen(settings.queue_name) == 0


@pytest.mark.parametrize(("method", "path"), [("POST", "/webhooks//clerk"), ("GET", "/webhooks///clerk")])
def test_a_path_with_doubled_slashes_is_refused_in_json_never_redirected(client, settings, redis_client, method, path):
    # Given a signed delivery to the webhook path with a slash doubled (a sender's URL typo)
    body = body_of()
    response = client.open(path, method=method, data=body, headers={**signed_headers(body), "Host": "attacker.example"})
    # Then it is an unknown path in the ingress's JSON, not an HTML redirect built from the Host header
    assert (response.status_code, response.get_json()) == (404, {"error": "not_found"})
    assert "Location" not in response.headers
    assert redis_client.llen(settings.queue_name) == 0


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_with_redis_up(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ready"


def test_readyz_and_post_with_redis_unreachable(base_env):
    # Given an ingress whose REDIS_URL points at a closed port
    settings = load_settings({**base_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    client = create_app(settings).test_client()

    # When it is asked whether it is ready, and sent an event
    ready = client.get("/readyz")
    body = body_of()
    posted = client.post(URL, data=body, headers=signed_headers(body))

    # Then both say 503 and Svix is told to retry
    assert ready.status_code == 503
    assert posted.status_code == 503
    assert posted.headers.get("Retry-After")


@pytest.mark.parametrize("vector", VECTORS, ids=[v["svix-id"] for v in VECTORS])
def test_svix_test_vectors_match_our_signing(vector):
    # The vectors' timestamps are too old for verify(); sign at their timestamp and compare.
    timestamp = dt.datetime.fromtimestamp(int(vector["svix-timestamp"]), dt.UTC)
    signature = Webhook(vector["secret"]).sign(vector["svix-id"], timestamp, vector["body"])
    assert signature == vector["svix-signature"]
    raw = raw_signature(vector["secret"], vector["svix-id"], int(vector["svix-timestamp"]), vector["body"].encode())
    assert raw == vector["svix-signature"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["svix-id"] for v in VECTORS])
def test_svix_test_vectors_through_the_ingress(base_env, redis_client, vector):
    # Given an ingress configured with the vector's secret
    settings = load_settings({**base_env, "CLERK_WEBHOOK_SECRET": vector["secret"]})
    client = create_app(settings).test_client()
    headers = {name: vector[name] for name in ("svix-id", "svix-timestamp", "svix-signature")}

    # When the vector arrives as recorded, it is refused for its age, not its signature
    stale = client.post(URL, data=vector["body"].encode(), headers=headers)
    assert stale.status_code == 401
    assert stale.get_json()["error"] == "timestamp_outside_tolerance"

    # And the same body signed now with the same secret is accepted and enqueued as is
    fresh = signed_headers(vector["body"], svix_id=vector["svix-id"], secret=vector["secret"])
    assert client.post(URL, data=vector["body"].encode(), headers=fresh).status_code == 200
    assert queued(redis_client, settings.queue_name)[0]["args"][2] == vector["body"]


def test_the_ingress_loads_no_database_or_worker_code(base_env):
    # Given the WSGI entry point granian's workers import (CONTRACT section 3: no Postgres)
    probe = (
        "import sys, ingress.wsgi; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'psycopg', 'alembic', 'worker'}),"
        " 'shared.models' in sys.modules)"
    )
    # When a fresh interpreter imports it and builds the app
    result = subprocess.run([sys.executable, "-c", probe], env=base_env, capture_output=True, text=True, check=False)
    # Then neither the database layer nor the worker came with it (each costs every web worker's start)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "[] False", result.stdout
