"""What the hook tests share: the test hook module, the application's tables it writes, event bodies."""

from __future__ import annotations

import copy
import json

from tests.support.signing import load_payload

WELCOME = "tests.fixtures.hooks.welcome"

# The application's own tables (tests/fixtures/hooks/welcome.py writes them), created afresh.
APP_TABLES = """
    DROP TABLE IF EXISTS outbox, hook_calls, hook_failures;
    CREATE TABLE outbox (
        id bigserial PRIMARY KEY, kind text NOT NULL, user_clerk_id text NOT NULL, email text
    );
    CREATE TABLE hook_calls (
        id bigserial PRIMARY KEY, event_type text NOT NULL, entity_id text NOT NULL, event_timestamp bigint NOT NULL
    );
    CREATE TABLE hook_failures (entity_id text PRIMARY KEY);
"""


def user_event(event_type: str, user_id: str) -> str:
    """The sample body of ``event_type`` about user ``user_id``."""
    payload = copy.deepcopy(load_payload(event_type))
    payload["data"]["id"] = user_id
    return json.dumps(payload)
