"""The console in a real headless Chromium against real console, ingress, worker, Redis and Postgres.

One operator's incident from login to repair: a wrong password is refused; dead events
appear with their errors; filters narrow the list; a replay brings an event to `processed`;
a bulk discard shows its preview and waits for confirmation; a body carrying a script tag
stays text; a form without its CSRF token is refused; every change is in the audit table.
The run takes the screenshots of docs/console.md; with UPDATE_SCREENSHOTS=1 (`make screenshots`)
it saves them over the ones in docs/, otherwise beside the test's other files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from devkit.services import ROOT
from devkit.waiting import wait_for
from shared.models import User, WebhookEvent
from tests.support.console import OPERATOR, PASSWORD, browser_page, console_env
from tests.support.ledger import add_event, audit_rows, statuses, wait_until_final
from tests.support.signing import load_payload, post_event, post_events


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the screenshots go: docs/ when asked to update them, else the test's own directory."""
    return ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path


SCRIPT = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'


def log_in(page, url: str, password: str) -> None:
    page.goto(url)
    page.fill("input[name=username]", OPERATOR)
    page.fill("input[name=password]", password)
    click_and_load(page, "button[type=submit]")


def click_and_load(page, selector: str) -> None:
    """Click what leads to another page, and wait until that page has loaded: ``click`` returns once
    the navigation commits, when the new page may not be parsed yet (a list read then is empty)."""
    with page.expect_navigation():
        page.click(selector)


def conflicts_of(session_factory, svix_id: str) -> list:
    with session_factory() as session:
        return session.scalars(select(WebhookEvent.conflicts).where(WebhookEvent.svix_id == svix_id)).one()


def dead_ids_listed(page) -> list[str]:
    return page.locator("#dead-list tbody tr td:first-child").all_inner_texts()


def test_an_operator_repairs_dead_letters_in_the_browser(processes, session_factory, blocking_trigger, shots):
    # Given an ingress, a worker with one attempt per event, the console, and a trigger holding one user
    user_created = load_payload("user.created")
    user_id = user_created["data"]["id"]
    user_created["data"]["first_name"] = SCRIPT
    blocking_trigger.block(user_id)
    web = processes.start_web()
    processes.start_worker(RETRY_MAX_ATTEMPTS="1")
    console = processes.start_console(**console_env())

    # And three events that end dead: the held user (its name a script), a body that is
    # HTML rather than JSON, an organization event with no id; and one that is processed
    poison = {"type": "organization.created", "object": "event", "timestamp": 1716883200012, "data": {"name": "X"}}
    arrivals = {
        "msg_br_held": user_created,
        "msg_br_html": f"<html>{SCRIPT}</html>",
        "msg_br_poison": poison,
        "msg_br_ok": load_payload("organization.created"),
    }
    assert set(post_events(web.url, arrivals).values()) == {200}
    assert wait_until_final(session_factory, 4) == {
        "msg_br_held": "dead",
        "msg_br_html": "dead",
        "msg_br_poison": "dead",
        "msg_br_ok": "processed",
    }

    with browser_page() as page:
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

        # When the operator opens the console, every page leads to the login
        page.goto(f"{console.url}/dead")
        assert "/login" in page.url

        # Then a wrong password is refused, with a message and no session
        log_in(page, f"{console.url}/dead", "not the password")
        assert "wrong name or password" in page.inner_text("main")
        page.goto(f"{console.url}/")
        assert "/login" in page.url

        # When the right password is given, the overview shows the health of the sync
        log_in(page, f"{console.url}/", PASSWORD)
        assert page.url.rstrip("/") == console.url
        assert page.inner_text("#count-dead .number") == "3"
        assert page.inner_text("#count-processed .number") == "1"
        assert "Running" in page.inner_text("#sync-state")
        assert page.locator("svg polyline.series.dead").count() == 1
        assert page.locator("meta[http-equiv=refresh]").count() == 1  # it refreshes itself
        page.screenshot(path=str(shots / "console-overview.png"), full_page=True)

        # And the dead letters appear, each with its error
        click_and_load(page, "text=Dead letters")
        assert sorted(dead_ids_listed(page)) == ["msg_br_held", "msg_br_html", "msg_br_poison"]
        listed = page.inner_text("#dead-list")
        assert "RaiseException (P0001)" in listed and "the body is not JSON" in listed

        # When filtering, the list narrows
        page.fill("input[name=type]", "user.created")
        click_and_load(page, "text=Filter")
        assert dead_ids_listed(page) == ["msg_br_held"]
        page.goto(f"{console.url}/dead?error=JSON")
        assert dead_ids_listed(page) == ["msg_br_html"]
        page.goto(f"{console.url}/dead?since=2999-01-01")
        assert "in the future" in page.inner_text("main")

        # Then the held event's page shows its error, attempts, timeline and the script as text, inert
        page.goto(f"{console.url}/events/msg_br_held")
        assert page.inner_text("#last-error") == "RaiseException (P0001)"
        assert page.inner_text("#attempts") == "1"
        payload = json.loads(page.inner_text("#payload"))
        assert payload["data"]["first_name"] == SCRIPT
        page.screenshot(path=str(shots / "console-event.png"), full_page=True)
        page.goto(f"{console.url}/events/msg_br_html")
        assert SCRIPT in page.inner_text("#payload")
        assert page.locator("script").count() == 0 and page.locator("main img").count() == 0
        assert page.evaluate("window.__pwned") is None
        assert dialogs == []

        # When the cause is fixed and the operator replays the event
        blocking_trigger.lift()
        page.goto(f"{console.url}/events/msg_br_held")
        click_and_load(page, "#replay")
        assert "replayed 1 event(s)" in page.inner_text("main")

        # Then the worker applies it: processed in the ledger, the user row there
        wait_for(lambda: statuses(session_factory)["msg_br_held"] == "processed", timeout=90, what="replayed")
        with session_factory() as session:
            assert session.scalars(select(User.clerk_id)).all() == [user_id]
        page.reload()
        assert page.inner_text("#event-status") == "processed"

        # And a redelivery of a processed svix-id with another body shows on its page, never applied
        changed = {**load_payload("organization.created"), "timestamp": 1716883299999}
        assert post_event(web.url, changed, svix_id="msg_br_ok").status_code == 200
        wait_for(lambda: conflicts_of(session_factory, "msg_br_ok"), timeout=90, what="the conflict recorded")
        page.goto(f"{console.url}/events/msg_br_ok")
        assert page.locator("#conflicts li").count() == 1
        assert "body_sha256" in page.inner_text("main")

        # When the operator asks to discard all that remain, a preview says how many and which
        page.goto(f"{console.url}/dead")
        click_and_load(page, "text=Discard all 2")
        assert "Discard 2 dead event(s)?" in page.inner_text("h1")
        assert sorted(page.locator("#preview-ids li").all_inner_texts()) == ["msg_br_html", "msg_br_poison"]

        # Then nothing is discarded until it is confirmed
        assert statuses(session_factory)["msg_br_html"] == "dead"
        click_and_load(page, "#confirm")
        assert "discarded 2 event(s)" in page.inner_text("main")
        assert statuses(session_factory) == {"msg_br_held": "processed", "msg_br_ok": "processed"}

        # When a form is posted without its CSRF token, it is refused and nothing changes
        page.goto(f"{console.url}/dead")
        page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
        click_and_load(page, "#sync-state button")
        assert "refused" in page.inner_text("main") and "CSRF" in page.inner_text("main")
        assert [row.action for row in audit_rows(session_factory)] == ["replay", "discard"]

        # When pause is pressed with its token, every page says paused until resume
        page.goto(f"{console.url}/dead")
        click_and_load(page, "#sync-state button")
        for path in ("/", "/dead", "/entities", "/audit"):
            page.goto(f"{console.url}{path}")
            assert "PAUSED" in page.inner_text("#sync-state")
        click_and_load(page, "#sync-state button")
        assert "Running" in page.inner_text("#sync-state")

        # Then the audit table holds each change, by this operator, from the console
        page.goto(f"{console.url}/entities?q={user_id}")
        assert "msg_br_held" in page.inner_text("main") and user_id in page.inner_text("main")
        page.goto(f"{console.url}/entities?q=JOHN.DOE@example.com")
        assert f"users {user_id}" in page.inner_text("main") and "msg_br_held" in page.inner_text("main")
        page.goto(f"{console.url}/audit")
        assert page.locator("#audit tbody tr").count() == 4
    rows = audit_rows(session_factory)
    assert [(r.operator, r.source, r.action, sorted(r.svix_ids), r.count) for r in rows] == [
        (OPERATOR, "console", "replay", ["msg_br_held"], 1),
        (OPERATOR, "console", "discard", ["msg_br_html", "msg_br_poison"], 2),
        (OPERATOR, "console", "pause", [], 0),
        (OPERATOR, "console", "resume", [], 0),
    ]
    assert rows[0].filter is None and rows[1].filter == {}
    assert (shots / "console-overview.png").stat().st_size > 10_000


def test_an_event_whose_svix_id_is_a_path_opens_and_is_discarded_as_itself(processes, session_factory):
    # Given a dead event, and one whose svix-id Chromium would resolve as a path to the first's page
    hostile = "x/../../events/msg_br_victim"
    with session_factory.begin() as session:
        add_event(session, "msg_br_victim", "dead")
        add_event(session, hostile, "dead", last_error="\u202eeman eht fo dne")
    console = processes.start_console(**console_env())

    with browser_page() as page:
        log_in(page, f"{console.url}/dead", PASSWORD)
        assert sorted(dead_ids_listed(page)) == ["msg_br_victim", hostile]
        # (the CLI's --limit: the oldest N)
        page.fill("input[name=limit]", "1")
        click_and_load(page, "text=Filter")
        assert dead_ids_listed(page) == ["msg_br_victim"]
        page.goto(f"{console.url}/dead")

        # When the operator opens the hostile event from the list and discards it
        click_and_load(page, f"#dead-list a:text-is('{hostile}')")
        assert page.inner_text("h1 code") == hostile
        click_and_load(page, "#discard")

        # Then that event is gone and the other is still dead
        assert "discarded 1 event(s)" in page.inner_text("main")
        assert statuses(session_factory) == {"msg_br_victim": "dead"}
    assert [row.svix_ids for row in audit_rows(session_factory)] == [[hostile]]


def test_a_nul_typed_in_a_filter_or_a_url_is_answered_with_a_page_in_chromium(processes, session_factory):
    # Given a dead event and a logged-in operator
    with session_factory.begin() as session:
        add_event(session, "msg_br_kept", "dead")
    console = processes.start_console(**console_env())

    with browser_page() as page:
        log_in(page, f"{console.url}/dead", PASSWORD)

        # When a NUL is typed into the type filter (Chromium sends it as %00)
        page.fill("input[name=type]", "user.created\x00")
        with page.expect_navigation() as navigation:
            page.click("text=Filter")
        # Then the list answers 400 with the reason, not a server error
        assert navigation.value.status == 400
        assert "holds a NUL" in page.inner_text("main")

        # And an event's URL holding one is the page of an event that does not exist
        response = page.goto(f"{console.url}/events/msg_br_kept%00")
        assert response.status == 404 and "no event with this svix-id" in page.inner_text("main")
    assert statuses(session_factory) == {"msg_br_kept": "dead"}
