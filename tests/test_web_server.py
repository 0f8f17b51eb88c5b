"""The `web` process as the Procfile starts it (nginx in front of granian): connections, slow clients, stop, config.

Everything here runs against real processes with raw sockets where a client library would
hide what matters (keep-alive, the server closing, bytes trickling in). The only time bound
asserted is Svix's own: a delivery not answered within 15 s counts as failed.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from devkit.services import ROOT
from devkit.waiting import wait_for
from tests.support.broker import queued_ids
from tests.support.processes import children, free_port, web_argv
from tests.support.rawhttp import Answer, closed_by_server, connect, read_answer, request_bytes
from tests.support.signing import load_payload, new_svix_id, post_event, signed_headers

URL = "/webhooks/clerk"
# Svix gives up on a delivery after 15 s: the client timeout of every delivery below.
SVIX_TIMEOUT_SECONDS = 15.0


def signed_request(payload: str = "user.created", **header_overrides: str) -> tuple[str, bytes, dict[str, str]]:
    svix_id = new_svix_id()
    body = json.dumps(load_payload(payload)).encode()
    headers = {**signed_headers(body, svix_id=svix_id), "Content-Length": str(len(body)), **header_overrides}
    return svix_id, body, headers


def exchange(sock: socket.socket, headers: dict[str, str], body: bytes) -> Answer:
    sock.sendall(request_bytes(URL, headers=headers, body=body))
    return read_answer(sock)


# --------------------------------------------------------------------------- connection hygiene


def test_refusals_with_a_body_leave_the_keep_alive_connection_usable(processes, redis_client):
    # Given the web process and one keep-alive connection to it
    web = processes.start_web(workers=1)
    queue = processes.env["CLERK_SYNC_QUEUE"]
    sock = connect(web.url)

    # When it carries a bad signature, a missing header and a non-UTF-8 body, each with its body sent
    svix_id, body, headers = signed_request()
    bad_signature = exchange(sock, {**headers, "svix-signature": "v1,bm90IGEgc2lnbmF0dXJl"}, body)
    missing = exchange(sock, {k: v for k, v in headers.items() if k != "svix-id"}, body)
    _, _, utf8_headers = signed_request()
    not_utf8 = exchange(sock, {**utf8_headers, "Content-Length": "4"}, b"\xff\xfe\xfd\xfc")

    # Then each is refused, and a signed delivery on the same connection is still answered and queued
    assert (bad_signature.status, missing.status, not_utf8.status) == (401, 400, 400)
    accepted = exchange(sock, headers, body)
    assert accepted.status == 200, accepted.body
    assert queued_ids(redis_client, queue) == [svix_id]
    sock.close()


def test_a_body_over_the_limit_is_refused_unread_and_its_connection_closed(processes, redis_client):
    # Given the web process with an 8 KiB limit, and a client announcing a far larger body
    web = processes.start_web(workers=1, MAX_BODY_BYTES="8192")
    queue = processes.env["CLERK_SYNC_QUEUE"]
    sock = connect(web.url)
    _, _, headers = signed_request()

    # When only the headers are sent (the client waits for an answer before sending the body)
    sock.sendall(request_bytes(URL, headers={**headers, "Content-Length": "5000000"}))
    answer = read_answer(sock)

    # Then it is refused 413 and told, then shown, that the connection is over: nothing hangs
    assert answer.status == 413
    assert json.loads(answer.body) == {"error": "body_too_large"}
    assert answer.headers.get("connection") == "close"
    assert closed_by_server(sock)
    sock.close()
    # And a new connection is answered as usual, and nothing was queued for the refused one
    svix_id, body, headers = signed_request()
    assert len(body) <= 8192
    with connect(web.url) as fresh:
        assert exchange(fresh, headers, body).status == 200
    assert queued_ids(redis_client, queue) == [svix_id]
    # And nginx's own word about it is one of the process's JSON lines, like every other line
    records = [json.loads(line) for line in web.log().splitlines() if line.strip()]
    assert any(r["event"] == "nginx_log" and "too large body" in r["message"] for r in records)


@pytest.mark.parametrize("varied", [False, True], ids=["same_request", "varied_length_and_query"])
def test_nginx_repeating_a_line_for_each_refused_client_is_logged_once_a_second(processes, varied):
    # Given the web process with an 8 KiB limit
    web = processes.start_web(workers=1, MAX_BODY_BYTES="8192")
    _, _, headers = signed_request()

    # When 300 clients in a row announce a body over it (nginx logs a line for each), the same request
    # each time or each with its own length and query string (which nginx's line quotes)
    for n in range(300):
        length, target = (5_000_000 + n, f"{URL}?n={n}") if varied else (5_000_000, URL)
        with connect(web.url) as sock:
            sock.sendall(request_bytes(target, headers={**headers, "Content-Length": str(length)}))
            assert read_answer(sock).status == 413

    # Then the line is logged once a second, not 300 times, the later ones saying how many they stand for
    def logged() -> list[dict[str, object]]:
        records = [json.loads(line) for line in web.log().splitlines() if line.strip()]
        return [r for r in records if r["event"] == "nginx_log" and "too large body" in str(r["message"])]

    lines = wait_for(logged, timeout=10, what="nginx's line relayed")
    assert len(lines) < 30, len(lines)
    assert "repeated" not in lines[0]
    assert all(isinstance(line["repeated"], int) and line["repeated"] > 0 for line in lines[1:])


def test_a_signed_delivery_with_many_headers_is_answered_by_the_ingress(processes, redis_client):
    # Given the web process, and a signed delivery carrying 120 more short headers than Svix sends
    # (what proxies on the way add), a few kilobytes: well within nginx's header buffers
    web = processes.start_web(workers=1)
    queue = processes.env["CLERK_SYNC_QUEUE"]
    svix_id, body, headers = signed_request(**{f"X-Hop-{index}": "1" for index in range(120)})

    # When it is posted
    with connect(web.url) as sock:
        answer = exchange(sock, headers, body)

    # Then the ingress answers it and queues it (granian, behind nginx, refuses more than 100 headers
    # with an empty 431: nginx hands it only the headers the ingress reads)
    assert (answer.status, answer.body) == (200, b'{"status":"queued"}\n')
    assert queued_ids(redis_client, queue) == [svix_id]


@pytest.mark.parametrize("valid_first", [True, False])
def test_a_signature_in_either_of_two_signature_headers_is_accepted(processes, redis_client, valid_first):
    # Given the web process, and a signed delivery whose signature header comes twice (a proxy or a
    # sender that repeats it), one of them holding a signature of another secret's
    web = processes.start_web(workers=1)
    queue = processes.env["CLERK_SYNC_QUEUE"]
    svix_id, body, headers = signed_request()
    valid, other = headers.pop("svix-signature"), "v1,dGhpcyBpcyBub3QgdGhlIHNpZ25hdHVyZQ=="
    first, second = (valid, other) if valid_first else (other, valid)
    headers.update({"svix-signature": first, "Svix-Signature": second})  # two lines: names are case-blind

    # When it is posted (nginx joins the two lines with ", ", as HTTP allows)
    with connect(web.url) as sock:
        answer = exchange(sock, headers, body)

    # Then the valid signature counts wherever it stands, and the event is queued
    assert (answer.status, answer.body) == (200, b'{"status":"queued"}\n')
    assert queued_ids(redis_client, queue) == [svix_id]


MALFORMED_REQUESTS = {
    "header_too_large": (431, request_bytes(URL, headers={"X-Big": "a" * 20000, "Content-Length": "0"})),
    "negative_length": (400, request_bytes(URL, headers={"Content-Length": "-1"})),
    "no_host": (400, b"POST /webhooks/clerk HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
    "internal_path": (404, request_bytes("/.errors/400", headers={}, method="GET")),
    "trace": (405, request_bytes(URL, headers={}, method="TRACE")),
    "transfer_encoding": (501, request_bytes(URL, headers={"Transfer-Encoding": "gzip, chunked"})),
    "http_version": (505, b"GET /healthz HTTP/3.0\r\nHost: 127.0.0.1\r\n\r\n"),
}


def test_what_nginx_refuses_itself_is_answered_in_json(processes):
    # Given the web process
    web = processes.start_web(workers=1)
    for name, (status, raw) in MALFORMED_REQUESTS.items():
        # When a request nginx refuses before the ingress sees it arrives (too large, malformed)
        with connect(web.url) as sock:
            sock.sendall(raw)
            answer = read_answer(sock)
        # Then it is answered with its status and one JSON line, as the ingress answers, not an HTML page
        assert answer.status == status, (name, answer)
        assert answer.headers["content-type"] == "application/json", (name, answer)
        assert answer.body.endswith(b"\n") and answer.body.count(b"\n") == 1, (name, answer)
        assert set(json.loads(answer.body)) == {"error"}, (name, answer)


# A byte HTTP forbids in a header value, or a non-ASCII one, in each header passed to the ingress.
MALFORMED_HEADERS = {
    "svix-id": "msg_\x01abc",
    "svix-timestamp": "\u00e9",
    "svix-signature": "v1,abc=\x7f",
    "webhook-id": "msg_\u00e9",
    "Content-Type": "application/json\x1b",
}


def test_a_header_holding_a_control_or_non_ascii_byte_is_refused_in_json(processes, redis_client):
    # Given the web process
    web = processes.start_web(workers=1)
    queue = processes.env["CLERK_SYNC_QUEUE"]
    for name, value in MALFORMED_HEADERS.items():
        # When a signed delivery arrives with one header holding such a byte
        _, body, headers = signed_request(**{name: value})
        with connect(web.url) as sock:
            answer = exchange(sock, headers, body)
        # Then it is refused with a reason that says so (not an empty 400, nor a header "missing")
        assert (answer.status, json.loads(answer.body)) == (400, {"error": "malformed_headers"}), (name, answer)
        assert answer.headers["content-type"] == "application/json", (name, answer)
    # and a well-formed one is still accepted, even with such a byte in a header the ingress does not
    # read (a proxy's X-Forwarded-For), the refused ones queued nowhere
    svix_id, body, headers = signed_request(**{"X-Forwarded-For": "10.0.0.1\x1f\u00e9", "X-Other": "\x01"})
    with connect(web.url) as sock:
        assert exchange(sock, headers, body).status == 200
    assert queued_ids(redis_client, queue) == [svix_id]


# A request target holding a byte nginx lets through but granian's parser refuses (it answered an empty 400).
MALFORMED_TARGETS = {
    "non_ascii_path": URL + "\u00e9",
    "non_ascii_query": URL + "?from=\u00ff",
    "angle_bracket_path": URL + "<",
    "backtick_path": URL + "`",
    "quote_query": URL + '?a="',
    "angle_bracket_query": URL + "?a=>",
}


def test_a_request_target_holding_a_byte_the_ingress_server_refuses_is_refused_in_json(processes, redis_client):
    # Given the web process and one keep-alive connection to it
    web = processes.start_web(workers=1)
    queue = processes.env["CLERK_SYNC_QUEUE"]
    with connect(web.url) as sock:
        for name, target in MALFORMED_TARGETS.items():
            # When a signed delivery arrives whose path or query holds such a byte
            _, body, headers = signed_request()
            sock.sendall(request_bytes(target, headers=headers, body=body))
            answer = read_answer(sock)
            # Then it is refused as nginx refuses a control byte there: one JSON line, not an empty 400
            assert (answer.status, answer.body) == (400, b'{"error":"bad_request"}\n'), (name, answer)
            assert answer.headers["content-type"] == "application/json", (name, answer)
        # and the connection still carries a well-formed delivery, the refused ones queued nowhere
        svix_id, body, headers = signed_request()
        assert exchange(sock, headers, body).status == 200
    assert queued_ids(redis_client, queue) == [svix_id]


# --------------------------------------------------------------------------- slow clients


class Trickle:
    """Connections that send one piece a second: some stuck in their headers, some in a 100 KB body.

    A header trickler that the server cuts (a header timeout) connects again, as an attacker
    would. The attack stops when ``stop()`` is called; it never runs for more than ``limit`` s.
    """

    def __init__(self, url: str, *, header_connections: int, body_connections: int, limit: float = 120.0) -> None:
        self.url = url
        self.selector = selectors.DefaultSelector()
        self.headers = [self._open_header() for _ in range(header_connections)]
        self.bodies = [self._open_body() for _ in range(body_connections)]
        self.reconnects = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + limit
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _open_header(self) -> socket.socket:
        sock = connect(self.url, timeout=5)
        sock.sendall(f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
        return sock

    def _open_body(self) -> socket.socket:
        sock = connect(self.url, timeout=5)
        _, _, headers = signed_request()
        sock.sendall(request_bytes(URL, headers={**headers, "Content-Length": str(100 * 1024)}) + b"{")
        return sock

    def _run(self) -> None:
        line = 0
        while not self._stop.wait(1.0) and time.monotonic() < self._deadline:
            line += 1
            for index, sock in enumerate(self.headers):
                try:
                    sock.sendall(f"X-Slow-{line}: {line}\r\n".encode())
                except OSError:
                    sock.close()
                    self.headers[index] = self._open_header()
                    self.reconnects += 1
            for sock in self.bodies:
                try:
                    sock.sendall(b" ")
                except OSError:
                    continue

    def open_bodies(self) -> int:
        """How many body tricklers the server still holds open (it neither answered nor closed them)."""
        held = 0
        for sock in self.bodies:
            sock.setblocking(False)
            try:
                sock.recv(1)  # b"": closed; data: answered; either way not held
            except BlockingIOError:
                held += 1
            except OSError:
                continue
        return held

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.headers + self.bodies:
            sock.close()


def deliver(url: str, *, count: int, pause: float = 0.0) -> list[str]:
    """``count`` signed events, each on a fresh connection and answered 200 within Svix's timeout."""
    delivered = []
    for _ in range(count):
        svix_id = new_svix_id()
        response = post_event(url, load_payload("user.created"), svix_id=svix_id, timeout=SVIX_TIMEOUT_SECONDS)
        assert response.status_code == 200, response.text
        delivered.append(svix_id)
        time.sleep(pause)
    return delivered


def test_slow_clients_do_not_keep_signed_deliveries_from_being_answered(processes, redis_client):
    # Given the web process with its default settings, and 64 connections trickling headers
    # plus 64 trickling a declared 100 KB body, one piece a second each
    web = processes.start_web(workers=2)
    queue = processes.env["CLERK_SYNC_QUEUE"]
    attack = Trickle(web.url, header_connections=64, body_connections=64)
    try:
        time.sleep(3)  # every connection open and trickling

        # When Svix delivers ten signed events on fresh connections meanwhile
        delivered = deliver(web.url, count=10, pause=0.5)

        # Then every delivery was answered 2xx within Svix's timeout and is queued, while the
        # attack was still holding its connections (the body tricklers are neither answered nor cut)
        assert sorted(queued_ids(redis_client, queue)) == sorted(delivered)
        assert attack.open_bodies() == 64
    finally:
        attack.stop()


def test_a_flood_of_slow_clients_beyond_eight_thousand_connections_does_not_keep_deliveries_out(
    processes, redis_client
):
    # Given the web process and one client holding 9,000 connections that trickle their headers, each
    # reconnecting when cut (nginx's 8,192 connections were all taken by it: no delivery got in)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    web = processes.start_web(workers=1)
    queue = processes.env["CLERK_SYNC_QUEUE"]
    try:
        attack = Trickle(web.url, header_connections=9_000, body_connections=0)
        try:
            time.sleep(3)  # every connection open and trickling

            # When Svix delivers five signed events meanwhile
            delivered = deliver(web.url, count=5)

            # Then each was answered 2xx within Svix's timeout and is queued
            assert sorted(queued_ids(redis_client, queue)) == sorted(delivered)
        finally:
            attack.stop()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def granian_workers(web_pid: int) -> list[int]:
    """The granian worker processes under the `web` process (its server's children)."""
    found, pending = [], [web_pid]
    while pending:
        for child in children(pending.pop()):
            pending.append(child)
            if "granian" in Path(f"/proc/{child}/cmdline").read_text(errors="replace"):
                found.append(child)
    return [pid for pid in found if not set(children(pid)) & set(found)]


def test_a_delivery_cut_by_a_dying_server_worker_is_answered_503_and_web_recovers(processes, redis_client):
    # Given the web process whose Redis accepts connections and never answers, so that a delivery
    # stays in its server worker for a second
    with socket.create_server(("127.0.0.1", 0)) as hung_redis:
        web = processes.start_web(workers=1, REDIS_URL=f"redis://127.0.0.1:{hung_redis.getsockname()[1]}/0")
        (worker,) = granian_workers(web.popen.pid)
        _, body, headers = signed_request()
        sock = connect(web.url, timeout=SVIX_TIMEOUT_SECONDS)
        sock.sendall(request_bytes(URL, headers=headers, body=body))
        time.sleep(0.3)

        # When that worker dies with the delivery in it
        os.kill(worker, signal.SIGKILL)
        answer = read_answer(sock)
        sock.close()

    # Then the delivery is answered 503 with Retry-After, as the ingress answers when it cannot queue,
    # so that Svix retries it (nginx's 502 is no answer the contract gives)
    assert answer.status == 503, answer
    assert json.loads(answer.body) == {"error": "unavailable"}
    assert answer.headers.get("retry-after")
    # And web stays up: a new worker answers
    wait_for(lambda: requests.get(f"{web.url}/healthz", timeout=5).status_code == 200, timeout=60, what="a new worker")
    assert web.popen.poll() is None


# --------------------------------------------------------------------------- stopping


def accepts(url: str) -> bool:
    try:
        connect(url, timeout=1).close()
    except OSError:
        return False
    return True


def test_sigterm_finishes_the_request_in_flight_and_loses_nothing(processes, redis_client):
    # Given the web process and a signed delivery whose body is half sent
    web = processes.start_web(workers=2)
    queue = processes.env["CLERK_SYNC_QUEUE"]
    svix_id, body, headers = signed_request()
    sock = connect(web.url, timeout=SVIX_TIMEOUT_SECONDS)
    sock.sendall(request_bytes(URL, headers=headers, body=body[: len(body) // 2]))
    time.sleep(0.5)

    # When the process group gets SIGTERM (as honcho, Heroku and Kubernetes stop a process)
    web.kill(signal.SIGTERM)

    # Then it stops taking new connections
    wait_for(lambda: not accepts(web.url), timeout=30, what="the listener closed")
    # And the request in flight, once its body is complete, is answered 200 and queued
    sock.sendall(body[len(body) // 2 :])
    answer = read_answer(sock)
    assert answer.status == 200, answer.body
    sock.close()
    assert queued_ids(redis_client, queue) == [svix_id]
    # And the process then exits cleanly, leaving no server behind
    assert web.popen.wait(timeout=60) == 0
    web.stopped = True
    assert not accepts(web.url)


def test_sigterm_under_load_never_answers_2xx_for_an_event_not_queued(processes, redis_client):
    # Given the web process taking a stream of deliveries from four clients
    web = processes.start_web(workers=2)
    queue = processes.env["CLERK_SYNC_QUEUE"]
    answered: list[tuple[str, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        for _ in range(500):  # bounded: the stop below ends it long before
            if stop.is_set():
                return
            svix_id = new_svix_id()
            try:
                status = post_event(web.url, load_payload("user.updated"), svix_id=svix_id, session=session).status_code
            except requests.RequestException:
                status = 0  # refused or cut: Svix would retry
            with lock:
                answered.append((svix_id, status))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    wait_for(lambda: len(answered) >= 40, timeout=60, what="deliveries flowing")

    # When it gets SIGTERM in the middle of the stream
    web.kill(signal.SIGTERM)
    exit_code = web.popen.wait(timeout=60)
    web.stopped = True
    stop.set()
    for thread in clients:
        thread.join()

    # Then it exits cleanly, and every delivery answered 2xx is in the queue
    assert exit_code == 0
    accepted = {svix_id for svix_id, status in answered if 200 <= status < 300}
    assert accepted, "no delivery was accepted before the stop"
    assert accepted <= set(queued_ids(redis_client, queue))
    # And the others were refused or cut, never given a success answer
    assert all(status == 0 or status >= 500 for svix_id, status in answered if svix_id not in accepted)


# --------------------------------------------------------------------------- configuration


def run_web_until_exit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # A process that kept restarting (or never refused) would hit this timeout and fail the test.
    env = {**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}
    return subprocess.run(web_argv(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLERK_WEBHOOK_SECRET", None),
        ("CLERK_WEBHOOK_SECRET", ""),
        ("CLERK_WEBHOOK_SECRET", "not-a-whsec-secret"),
        ("CLERK_WEBHOOK_SECRET", "whsec_%%%"),
        ("REDIS_URL", "redis//nohost"),
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("HOST", "not a host"),
        ("WEB_CONCURRENCY", "two"),
        ("WEB_CONCURRENCY", "0"),
        ("WEB_THREADS", "-4"),
        ("MAX_BODY_BYTES", "1MB"),
        ("PROMETHEUS_MULTIPROC_DIR", "/dev/null"),
    ],
)
def test_a_bad_setting_stops_web_with_one_line(base_env, name, value):
    # Given the web process's environment with one missing or malformed variable
    env = {**base_env, "PORT": str(free_port()), "HOST": "127.0.0.1"}
    env.pop(name, None)
    if value is not None:
        env[name] = value

    # When it starts as the Procfile starts it
    result = run_web_until_exit(env)

    # Then the whole process exits non-zero with one line naming the variable, before serving
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_web_exits_when_its_port_is_taken(base_env):
    # Given a port something else listens on
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {**base_env, "PORT": str(port), "HOST": "127.0.0.1"}

        # When web starts there, then it exits non-zero (it does not run without its listener),
        # saying why in one line and never that it listens (its readiness probe reached the other)
        result = run_web_until_exit(env)
    assert result.returncode != 0
    assert "web_listening" not in result.stdout
    said = [json.loads(line) for line in result.stdout.splitlines() if "port_in_use" in line]
    assert [(line["event"], line["port"]) for line in said] == [("port_in_use", port)]


@pytest.mark.parametrize("host", ["192.0.2.1", "no-such-host.invalid"])
def test_a_host_this_machine_cannot_listen_on_stops_web_with_one_line(base_env, host):
    # Given HOST well-formed but not an address of this machine (a documentation address, a name
    # that does not resolve)
    env = {**base_env, "PORT": str(free_port()), "HOST": host}

    # When web starts, then it exits non-zero with one line naming HOST, before starting any server
    result = run_web_until_exit(env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "HOST" in lines[0]
    assert "web_server_starting" not in result.stdout, result.stdout
