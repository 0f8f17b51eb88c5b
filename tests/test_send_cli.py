"""`clerk-sync send`: sign a sample or a file and post it to a running ingress."""

from __future__ import annotations

import json

from sqlalchemy import select

from devkit.waiting import wait_for
from shared.models import User
from tests.support.cli import run_cli
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

    # When a file of one's own is sent
    payload = load_payload("user.updated")
    payload["data"]["id"] = "user_from_file"
    event_file = tmp_path / "my-event.json"
    event_file.write_text(json.dumps(payload))
    sent = run_cli(base_env, "send", str(event_file), "--url", web.url, cwd=tmp_path)

    # Then that user lands too
    assert sent.returncode == 0, sent.stderr
    wait_for(
        lambda: user_email(session_factory, "user_from_file") == "john.doe@example.com",
        timeout=60,
        what="the user row from the file",
    )


def test_unknown_type_is_a_usage_error(base_env, tmp_path):
    result = run_cli(base_env, "send", "user.exploded", "--url", "http://127.0.0.1:1", cwd=tmp_path)

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "user.exploded" in result.stderr


def test_unreachable_url_fails_in_one_line(base_env, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"

    result = run_cli(base_env, "send", "user.created", "--url", url, cwd=tmp_path)

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot post" in result.stderr
