"""`clerk-sync send`: sign a sample or a file and post it to a running ingress."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading

import pytest
from sqlalchemy import select

from devkit.waiting import wait_for
from shared.models import User
from tests.support.cli import one_line_error, run_cli
from tests.support.ledger import ledger_row
from tests.support.processes import free_port
from tests.support.signing import load_payload


def user_email(session_factory, clerk_id: str) -> str | None:  # type: ignore[no-untyped-def]
    with session_factory() as session:
        return session.scalar(select(User.email).where(User.clerk_id == clerk_id))


def test_send_a_sample_type_and_a_file(processes, session_factory, base_env, tmp_path):
    # Given a running ingress and worker
    web = processes.start_web()
    processes.start_worker()

    # When the built-in user.created sample is sent
    sample = run_cli(base_env, "send", "user.created", "--url", web.url, cwd=tmp_path)

    # Then it is accepted and the user lands in the table
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("200 msg_")
    wait_for(
        lambda: user_email(session_factory, "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S") == "john.doe@example.com",
        timeout=60,
        what="the sample user row",
    )

    # When a file of one's own is sent, with Windows line ends
    payload = load_payload("user.updated")
    payload["data"]["id"] = "user_from_file"
    event_file = tmp_path / "my-event.json"
    event_file.write_bytes(json.dumps(payload, indent=2).replace("\n", "\r\n").encode())
    sent = run_cli(base_env, "send", str(event_file), "--url", web.url, "--svix-id", "msg_file", cwd=tmp_path)

    # Then that user lands too, from the file's exact bytes (CRLF and all)
    assert sent.returncode == 0, sent.stderr
    wait_for(
        lambda: user_email(session_factory, "user_from_file") == "john.doe@example.com",
        timeout=60,
        what="the user row from the file",
    )
    row = ledger_row(session_factory, "msg_file")
    assert row is not None and row.body_sha256 == hashlib.sha256(event_file.read_bytes()).hexdigest()

    # When a body that is not JSON is sent: the result on stdout, the warning one line on stderr
    (tmp_path / "text.json").write_text("not json\n")
    text = run_cli(base_env, "send", "text.json", "--url", web.url, "--svix-id", "msg_text", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == ['200 msg_text {"status":"queued"}']
    assert text.stderr == "clerk-sync: warning: the body is not JSON; sending it anyway\n"

    # When the ingress refuses it (no such path), the answer is one line on stderr, exit 1
    missed = run_cli(base_env, "send", "user.created", "--url", f"{web.url}/nowhere", cwd=tmp_path)
    assert (missed.returncode, missed.stdout) == (1, "")
    error = one_line_error(missed)
    assert error.startswith("clerk-sync: the ingress answered 404 Not Found to msg_")
    assert error.endswith('{"error": "not_found"}')


def test_unknown_type_is_a_usage_error(base_env, tmp_path):
    result = run_cli(base_env, "send", "user.exploded", "--url", "http://127.0.0.1:1", cwd=tmp_path)

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "user.exploded" in result.stderr


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["user.created", "--url", "http://[bad"], "not a valid URL"),
        (["user.created", "--url", "http://ops:hunter2@[bad"], "not a valid URL"),
        (["user.created", "--url", "http://127.0.0.1:99999"], "not a valid URL"),
        (["user.created", "--url", "ftp://ops:hunter2@127.0.0.1"], "not an http(s) URL"),
        (["latin1.json", "--url", "http://127.0.0.1:1"], "not UTF-8 (byte 0xe9 at offset 10)"),
    ],
)
def test_a_bad_url_or_a_file_not_utf8_is_a_usage_error_in_one_line(argv, reason, base_env, tmp_path):
    # Given a file that is JSON in Latin-1, not UTF-8
    (tmp_path / "latin1.json").write_bytes('{"name": "é"}'.encode("latin-1"))

    result = run_cli(base_env, "send", *argv, cwd=tmp_path)

    # Then it is refused in one line, exit 2, never printing the URL's password
    assert result.returncode == 2, result.stderr
    assert reason in one_line_error(result)
    assert "hunter2" not in result.stderr and result.stdout == ""


def test_unreachable_url_fails_in_one_line(base_env, tmp_path):
    url = f"http://ops:hunter2@127.0.0.1:{free_port()}"

    result = run_cli(base_env, "send", "user.created", "--url", url, cwd=tmp_path)

    assert result.returncode == 1
    assert "cannot post to http://ops:***@127.0.0.1" in one_line_error(result)
    assert "hunter2" not in result.stderr


def test_without_a_secret_send_says_it_has_nothing_to_sign_with(base_env, tmp_path):
    env = {key: value for key, value in base_env.items() if key != "CLERK_WEBHOOK_SECRET"}

    result = run_cli(env, "send", "user.created", "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert one_line_error(result) == (
        "clerk-sync: configuration error: CLERK_WEBHOOK_SECRET is not set: send has no secret to sign the event with"
    )


class _ErrorPage(http.server.BaseHTTPRequestHandler):
    """A proxy's error page: several lines of HTML."""

    def do_POST(self) -> None:
        page = b"<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n" + b"x" * 400 + b"\n</body>\n</html>\n"
        self.send_response(502)
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *_: object) -> None:
        pass


def test_an_error_page_is_one_capped_line_on_stderr(base_env, tmp_path):
    # Given a server in front of the ingress answering with a page of several lines
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ErrorPage) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_cli(base_env, "send", "user.created", "--url", url, cwd=tmp_path)
        server.shutdown()
    # Then it is one line on stderr, the page flattened and cut, exit 1
    assert (result.returncode, result.stdout) == (1, "")
    error = one_line_error(result)
    assert error.startswith("clerk-sync: the ingress answered 502 Bad Gateway to msg_")
    assert "<html> <head><title>502 Bad Gateway</title></head>" in error and error.endswith("...")
    assert len(error) < 300
