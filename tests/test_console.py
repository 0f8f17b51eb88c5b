"""The console process without a browser: refusing to start, the login guard and throttle, cookies.

Each test starts the real `console` process (deploy/console.sh: gunicorn) against the run's
Postgres and Redis and talks HTTP to it.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import socket
import subprocess

import pytest
import requests

from devkit.waiting import wait_for
from shared.models import WebhookEvent
from tests.support.console import OPERATOR, PASSWORD, console_env, csrf_token, hidden_input, log_in
from tests.support.ledger import add_event, audit_rows, statuses
from tests.support.processes import free_port

PAGES = ("/", "/dead", "/events/msg_x", "/entities?q=user_a", "/audit", "/dead/discard-all")
CHANGES = ("/pause", "/resume", "/events/msg_x/replay", "/events/msg_x/discard", "/dead/discard-all")


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ({"CONSOLE_USERS": ""}, "CONSOLE_USERS is not set"),
        ({"CONSOLE_SECRET_KEY": ""}, "CONSOLE_SECRET_KEY is not set"),
        ({"CONSOLE_USERS": "ops:plaintext-password"}, "CONSOLE_USERS: entry 1 is not name:hash"),
        ({"CONSOLE_PORT": "eighty"}, "CONSOLE_PORT: must be a whole number"),
        ({"CONSOLE_CONCURRENCY": "abc"}, "CONSOLE_CONCURRENCY: must be a whole number"),
        ({"CONSOLE_BIND": "192.0.2.1"}, "CONSOLE_BIND: 192.0.2.1 is not an address of this machine"),
        ({"CONSOLE_BIND": "no-such-host.invalid"}, "CONSOLE_BIND: 'no-such-host.invalid' does not resolve"),
    ],
)
def test_the_console_refuses_to_start_half_configured(processes, missing, named):
    # Given the console's variables with one missing or malformed
    console = processes.start_console(wait=False, **{**console_env(), **missing})

    # Then the whole process exits (the arbiter, not a worker it would restart), with one line
    code = console.popen.wait(timeout=60)
    assert code == 3
    errors = [line for line in console.log().splitlines() if "configuration error" in line]
    assert len(errors) == 1 and named in errors[0], console.log()
    assert "plaintext-password" not in console.log()


def test_a_port_another_server_holds_stops_the_console_at_once_in_one_line(processes):
    # Given a port something else listens on
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]

        # When the console starts there
        console = processes.start_console(wait=False, CONSOLE_PORT=str(port), **console_env())

        # Then the whole process exits 1 with one port_in_use line (not gunicorn's five retries of
        # two error lines each)
        assert console.popen.wait(timeout=60) == 1
    errors = [json.loads(line) for line in console.log().splitlines() if '"level": "error"' in line]
    assert [(line["event"], line["port"]) for line in errors] == [("port_in_use", port)], console.log()


def test_no_page_is_served_and_nothing_changes_without_a_login(processes, session_factory):
    console = processes.start_console(**console_env())
    http = requests.Session()

    # When an anonymous visitor asks for any page, or posts any change (with a valid CSRF token)
    for path in PAGES:
        response = http.get(f"{console.url}{path}", timeout=10, allow_redirects=False)
        assert response.status_code == 302 and "/login" in response.headers["Location"], path
    token = csrf_token(http.get(f"{console.url}/login", timeout=10).text)
    for path in CHANGES:
        response = http.post(f"{console.url}{path}", data={"csrf_token": token}, timeout=10, allow_redirects=False)
        assert response.status_code == 302 and "/login" in response.headers["Location"], path

    # Then nothing was done
    assert audit_rows(session_factory) == []

    # And after a login, a "next" pointing to another site is ignored
    for target in ("//evil.example/", "/\\evil.example/", "https://evil.example/"):
        token = csrf_token(http.get(f"{console.url}/login", timeout=10).text)
        form = {"csrf_token": token, "username": OPERATOR, "password": PASSWORD, "next": target}
        response = http.post(f"{console.url}/login", data=form, timeout=30, allow_redirects=False)
        assert response.status_code == 302 and response.headers["Location"] == "/", target


def test_logins_are_throttled_after_repeated_failures(processes):
    # Given a console allowing three failed logins per account and address
    console = processes.start_console(**console_env(CONSOLE_LOGIN_LIMIT="3 per 15 minutes"))
    http = requests.Session()

    # When three wrong passwords are tried
    for _ in range(3):
        assert log_in(http, console.url, "wrong password").status_code == 401

    # Then even the right password is refused until the window ends
    refused = log_in(http, console.url, PASSWORD)
    assert refused.status_code == 429
    assert "too many failed logins" in refused.text


def test_a_throttled_login_keeps_the_name_typed_out_of_the_log_and_redis(processes, redis_client):
    # Given a console allowing two failed logins per account and address
    console = processes.start_console(**console_env(CONSOLE_LOGIN_LIMIT="2 per 15 minutes"))
    typed = "Tr0ub4dor-typed-in-the-name-field"

    # When someone types a password into the name field until the login is throttled
    for expected in (401, 401, 429):
        http = requests.Session()
        form = {"csrf_token": csrf_token(http.get(f"{console.url}/login").text), "username": typed, "password": "x"}
        assert http.post(f"{console.url}/login", data=form, allow_redirects=False).status_code == expected

    # Then the throttle is logged, and neither a log line nor a Redis key quotes what was typed
    console.stop()
    assert "console_login_throttled" in console.log()
    assert typed not in console.log()
    assert not [key for key in redis_client.scan_iter() if typed.encode() in key]


def test_the_session_cookie_is_httponly_strict_and_secure_over_https(processes):
    console = processes.start_console(**console_env())

    # When logging in over plain http on the loopback
    plain = log_in(requests.Session(), console.url, PASSWORD)
    cookie = plain.headers["Set-Cookie"]

    # Then the cookie is HttpOnly and SameSite=Strict, and not Secure (it would never come back)
    assert plain.status_code == 302
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie

    # When a TLS proxy on this machine forwards the login as https (the browser sends its https Referer)
    https = {"X-Forwarded-Proto": "https", "Referer": f"{console.url.replace('http:', 'https:')}/login"}
    proxied = log_in(requests.Session(), console.url, PASSWORD, **https)

    # Then the cookie is Secure too
    assert proxied.status_code == 302
    assert "Secure" in proxied.headers["Set-Cookie"]

    # And every page forbids scripts, framing and caching
    page = requests.get(f"{console.url}/login", timeout=10)
    assert "script-src" not in page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"


def test_the_console_listens_on_the_loopback_by_default(processes, base_env, tmp_path):
    # Given the console started with CONSOLE_BIND unset (the contract's default 127.0.0.1), by a
    # user whose home directory is empty
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in {**base_env, **console_env()}.items() if key != "CONSOLE_BIND"}
    proc = subprocess.Popen(
        ["sh", "deploy/console.sh"],
        env={**env, "CONSOLE_PORT": str(port), "PATH": processes.env_path(), "HOME": str(home)},
        cwd=processes.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        # Then it answers on 127.0.0.1 and says so
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/login"), timeout=30, what="the console")
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode()
    assert f"Listening at: http://127.0.0.1:{port}" in output
    # And it left nothing in the home directory (no gunicorn control socket) and logged no error
    assert list(home.iterdir()) == []
    assert '"level": "error"' not in output and "[ERROR]" not in output


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_dead_letters_are_paged_and_a_bad_page_or_filter_is_refused(processes, session_factory):
    # Given 60 dead events and a logged-in operator
    with session_factory.begin() as session:
        for n in range(60):
            session.add(WebhookEvent(svix_id=f"msg_page_{n:02d}", status="dead", event_type="user.created"))
    console = processes.start_console(**console_env())
    http = requests.Session()
    assert log_in(http, console.url, PASSWORD).status_code == 302

    # When the list is read page by page
    first = http.get(f"{console.url}/dead", timeout=10).text
    second = http.get(f"{console.url}/dead?page=2", timeout=10).text

    # Then 50 are on the first page, the other 10 on the second, none twice
    first_ids = set(re.findall(r">(msg_page_\d+)</a>", first))
    second_ids = set(re.findall(r">(msg_page_\d+)</a>", second))
    assert (len(first_ids), len(second_ids)) == (50, 10)
    assert not first_ids & second_ids
    assert "60 dead event(s)" in first and "page 1 of 2" in first

    # And a page or a filter the CLI would refuse is refused with 400, in a sentence
    for query in ("page=0", "page=abc", "since=2999-01-01", "entity=not%20an%20id"):
        response = http.get(f"{console.url}/dead?{query}", timeout=10)
        assert response.status_code == 400, query


def test_an_operator_replays_one_event_and_discards_a_filtered_selection(processes, session_factory):
    # Given three dead events and a logged-in operator
    with session_factory.begin() as session:
        add_event(session, "msg_http_one", "dead", age=dt.timedelta(minutes=3))
        add_event(session, "msg_http_a", "dead", age=dt.timedelta(minutes=2), event_type="user.updated")
        add_event(session, "msg_http_b", "dead", age=dt.timedelta(minutes=1), event_type="user.updated")
    console = processes.start_console(**console_env())
    http = requests.Session()
    assert log_in(http, console.url, PASSWORD).status_code == 302

    # When one event is replayed from its page
    token = csrf_token(http.get(f"{console.url}/events/msg_http_one", timeout=10).text)
    response = http.post(f"{console.url}/events/msg_http_one/replay", data={"csrf_token": token}, timeout=30)
    assert response.status_code == 200
    # and the user.updated ones are discarded through the bulk preview
    preview = http.get(f"{console.url}/dead/discard-all?type=user.updated", timeout=10).text
    form = {"csrf_token": csrf_token(preview), "digest": hidden_input(preview, "digest"), "type": "user.updated"}
    assert http.post(f"{console.url}/dead/discard-all", data=form, timeout=30).status_code == 200

    # Then the replayed event waits for the worker again, the discarded ones are gone
    assert statuses(session_factory) == {"msg_http_one": "pending"}
    # And each action is audited under the operator's name, the bulk one with its filter
    assert [
        (row.operator, row.source, row.action, row.svix_ids, row.filter) for row in audit_rows(session_factory)
    ] == [
        (OPERATOR, "console", "replay", ["msg_http_one"], None),
        (OPERATOR, "console", "discard", ["msg_http_a", "msg_http_b"], {"type": "user.updated"}),
    ]


def test_a_return_path_with_a_line_break_leads_to_the_overview_and_head_shows_the_login(processes, session_factory):
    console = processes.start_console(**console_env())
    http = requests.Session()

    # When HEAD asks for the login form, it is the form (no password checked, no failed login)
    assert http.head(f"{console.url}/login", timeout=10).status_code == 200
    assert "console_login_refused" not in console.log()

    # When a login's "next", or the pause button's "back", holds a line break or another control character
    for target in ("/\r\nSet-Cookie: x=1", "/dead\nX-Injected: 1", "/\u202edead"):
        token = csrf_token(http.get(f"{console.url}/login", timeout=10).text)
        form = {"csrf_token": token, "username": OPERATOR, "password": PASSWORD, "next": target}
        response = http.post(f"{console.url}/login", data=form, timeout=30, allow_redirects=False)
        # Then the answer is the overview, not a 500
        assert response.status_code == 302 and response.headers["Location"] == "/", target
    token = csrf_token(http.get(f"{console.url}/dead", timeout=10).text)
    response = http.post(
        f"{console.url}/pause", data={"csrf_token": token, "back": "/dead\r\nX: y"}, timeout=10, allow_redirects=False
    )
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert [row.action for row in audit_rows(session_factory)] == ["pause"]


def test_logging_out_ends_the_session_even_for_a_copy_of_its_cookie(processes, redis_client):
    # Given two processes of the console, and an operator logged in twice (two browsers)
    console = processes.start_console(**console_env(CONSOLE_CONCURRENCY="2"))
    first, second = requests.Session(), requests.Session()
    assert log_in(first, console.url, PASSWORD).status_code == 302
    assert log_in(second, console.url, PASSWORD).status_code == 302
    token = csrf_token(first.get(f"{console.url}/dead", timeout=10).text)
    copied = dict(first.cookies)

    # When the first logs out
    assert first.post(f"{console.url}/logout", data={"csrf_token": token}, timeout=10).status_code == 200

    # Then a copy of its cookie taken before the logout no longer opens any page, whichever process answers
    for _ in range(6):
        response = requests.get(f"{console.url}/dead", cookies=copied, timeout=10, allow_redirects=False)
        assert response.status_code == 302 and "/login" in response.headers["Location"]
    # nor posts a change with its CSRF token
    response = requests.post(
        f"{console.url}/pause", data={"csrf_token": token}, cookies=copied, timeout=10, allow_redirects=False
    )
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    # And the other login goes on
    assert second.get(f"{console.url}/dead", timeout=10, allow_redirects=False).status_code == 200
    assert redis_client.keys("clerk-sync-console:ended:*")


HOSTILE_IDS = ("x/../../events/msg_victim", "..", "msg/./a", "msg#frag?q=1", "msg\\..\\..\\pause", "msg//double")


def test_an_event_whose_svix_id_holds_dot_segments_opens_and_is_discarded_as_itself(processes, session_factory):
    # Given a dead event, and dead events whose svix-ids a browser would resolve as paths ("..", "/./")
    with session_factory.begin() as session:
        add_event(session, "msg_victim", "dead")
        for svix_id in HOSTILE_IDS:
            add_event(session, svix_id, "dead")
    console = processes.start_console(**console_env())
    http = requests.Session()  # like a browser, requests resolves "." and ".." in the paths it is given
    assert log_in(http, console.url, PASSWORD).status_code == 302
    listing = http.get(f"{console.url}/dead", timeout=10).text

    for svix_id in HOSTILE_IDS:
        # When the operator follows the list's link of the event
        escaped = html.escape(svix_id)
        href = html.unescape(re.search(rf'<a href="([^"]+)">{re.escape(escaped)}</a>', listing).group(1))
        page = http.get(f"{console.url}{href}", timeout=10)

        # Then it is that event's page, whose Discard button discards that event and no other
        assert page.status_code == 200 and f"<code>{escaped}</code>" in page.text, (svix_id, href)
        form = re.search(
            r'<form method="post" action="([^"]+)"[^>]*>(.*?)</form>', page.text.split('id="replay"')[1], re.S
        )
        assert form, page.text
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form.group(2)))
        fields = {name: html.unescape(value) for name, value in fields.items()}
        response = http.post(f"{console.url}{html.unescape(form.group(1))}", data=fields, timeout=30)
        assert response.status_code == 200, (svix_id, response.text)
        assert svix_id not in statuses(session_factory)
    assert statuses(session_factory) == {"msg_victim": "dead"}
    assert [row.svix_ids for row in audit_rows(session_factory)] == [[svix_id] for svix_id in HOSTILE_IDS]


def test_the_limit_filter_lists_and_acts_on_the_oldest_n_as_the_cli_does(processes, session_factory):
    # Given five dead events, the oldest first
    with session_factory.begin() as session:
        for n in range(5):
            add_event(session, f"msg_limit_{n}", "dead", age=dt.timedelta(minutes=10 - n))
    console = processes.start_console(**console_env())
    http = requests.Session()
    assert log_in(http, console.url, PASSWORD).status_code == 302

    # When the list is asked for the oldest three (`dlq list --limit 3`)
    listing = http.get(f"{console.url}/dead?limit=3", timeout=10).text
    # Then three are listed and counted, and the form keeps the limit
    assert re.findall(r">(msg_limit_\d)</a>", listing) == ["msg_limit_0", "msg_limit_1", "msg_limit_2"]
    assert "3 dead event(s) matching" in listing and 'name="limit" value="3"' in listing

    # When the oldest two are discarded through the preview (`dlq discard --all --limit 2`)
    preview = http.get(f"{console.url}/dead/discard-all?limit=2", timeout=10).text
    assert re.findall(r">(msg_limit_\d)</a>", preview) == ["msg_limit_0", "msg_limit_1"]
    form = {"csrf_token": csrf_token(preview), "digest": hidden_input(preview, "digest"), "limit": "2"}
    assert http.post(f"{console.url}/dead/discard-all", data=form, timeout=30).status_code == 200

    # Then exactly those two are gone, audited with the limit as their filter
    assert sorted(statuses(session_factory)) == ["msg_limit_2", "msg_limit_3", "msg_limit_4"]
    assert [(row.svix_ids, row.filter) for row in audit_rows(session_factory)] == [
        (["msg_limit_0", "msg_limit_1"], {"limit": 2})
    ]
    # And a limit the CLI would refuse is refused, in a sentence
    for limit in ("0", "abc", "100001", "-1", "1e3"):
        response = http.get(f"{console.url}/dead?limit={limit}", timeout=10)
        assert response.status_code == 400 and "limit must be from 1 to 100000" in response.text, limit


def test_a_right_to_left_override_in_an_events_data_is_shown_not_obeyed(processes, session_factory):
    # Given dead events whose data holds a right-to-left override: in a payload, and in a body kept as text
    override = "\u202e"
    payload = {"type": "user.created", "data": {"id": "user_a", "first_name": f"Eve{override}gnp.exe"}}
    with session_factory.begin() as session:
        add_event(session, "msg_rlo_json", "dead", payload=payload)
        add_event(session, "msg_rlo_text", "dead", payload=None, raw_body=f"not json {override}olleh")
    console = processes.start_console(**console_env())
    http = requests.Session()
    assert log_in(http, console.url, PASSWORD).status_code == 302

    for svix_id, shown in (("msg_rlo_json", "Eve\\u202egnp.exe"), ("msg_rlo_text", "not json \\u202eolleh")):
        # When the operator opens the event's page
        page = http.get(f"{console.url}/events/{svix_id}", timeout=10)
        # Then the override is shown as its escape, and nothing of the page is reordered by it
        assert page.status_code == 200
        assert override not in page.text
        assert shown in page.text


def test_a_nul_in_a_svix_id_or_a_filter_is_a_404_or_400_page_and_changes_nothing(processes, session_factory):
    # Given a dead event and a logged-in operator
    with session_factory.begin() as session:
        add_event(session, "msg_kept", "dead")
    console = processes.start_console(**console_env())
    http = requests.Session()
    assert log_in(http, console.url, PASSWORD).status_code == 302
    token = csrf_token(http.get(f"{console.url}/dead", timeout=10).text)

    # When a svix-id holding a NUL is opened, replayed or discarded (no row can hold one)
    for path in ("/events/msg_kept%00", "/event?svix_id=msg%00kept"):
        response = http.get(f"{console.url}{path}", timeout=10)
        # Then the answer is the page of an event that does not exist, not a server error
        assert response.status_code == 404 and "no event with this svix-id" in response.text, path
    for action in ("replay", "discard"):
        form = {"csrf_token": token, "svix_id": "msg_kept\x00"}
        response = http.post(f"{console.url}/event/{action}", data=form, timeout=10)
        assert response.status_code == 404 and "no event with svix_id" in response.text, action

    # And a filter holding one is refused in a sentence, on the list, a preview and a confirmation
    for path in ("/dead?type=user.created%00", "/dead?error=%00", "/dead/discard-all?type=%00"):
        response = http.get(f"{console.url}{path}", timeout=10)
        assert response.status_code == 400 and "holds a NUL" in response.text, path
    form = {"csrf_token": token, "error": "\x00", "digest": "0"}
    response = http.post(f"{console.url}/dead/replay-all", data=form, timeout=10)
    assert response.status_code == 400 and "holds a NUL" in response.text
    assert statuses(session_factory) == {"msg_kept": "dead"} and audit_rows(session_factory) == []


def test_an_entitys_timeline_shows_its_latest_events_and_says_the_rest_are_in_the_cli(processes, session_factory):
    # Given a user with more events than a page shows, in Clerk's order
    with session_factory.begin() as session:
        for n in range(500 + 5):
            payload = {"type": "user.updated", "timestamp": 1716883200000 + n, "data": {"id": "user_many"}}
            add_event(session, f"msg_many_{n:04d}", "processed", entity_id="user_many", payload=payload)
    console = processes.start_console(**console_env())
    http = requests.Session()
    assert log_in(http, console.url, PASSWORD).status_code == 302

    for path in ("/entities?q=user_many", "/events/msg_many_0000"):
        # When the entity's page, or the page of one of its events, is opened
        page = http.get(f"{console.url}{path}", timeout=30).text
        # Then its latest events are listed in order, and the page says where the others are
        listed = re.findall(r">(msg_many_\d+)</a>", page)
        assert listed == [f"msg_many_{n:04d}" for n in range(5, 500 + 5)], path
        assert "Only the latest 500 events are shown" in page and "clerk-sync events --entity" in page
