"""Bad operator input at the command line: one line and exit 2 (1 for an unknown id), nothing changed, nothing executed.

Covers issue 12's operator-input points: absurd ``--since``, negative or huge ``--limit``,
unknown ids, control characters in stored data, and ``--all`` asking before it acts.
"""

from __future__ import annotations

import argparse
import os
import pty
import select as io_select
import subprocess

import pytest

from devkit.services import bin_path
from shared.config import load_settings
from shared.passwords import check_password
from tests.support.cli import one_line_error, run_cli
from tests.support.ledger import add_event, audit_rows, statuses
from worker.cli import COMMANDS, build_parser
from worker.ops import status
from worker.pipeline import ledger

# What a payload would send to take over a terminal: clear screen, set the title, 8-bit CSI, bidi override.
HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202eevil"
TERMINAL_CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e")


@pytest.mark.parametrize(
    "argv",
    [
        ["dlq", "list", "--since", "last tuesday"],
        ["dlq", "list", "--since", "99999999999d"],
        ["dlq", "list", "--since", "1900-01-01"],
        ["dlq", "list", "--since", "2999-01-01"],
        ["dlq", "list", "--limit", "-5"],
        ["dlq", "list", "--limit", "0"],
        ["dlq", "list", "--limit", "100000000000000000000000"],
        ["dlq", "list", "--limit", "ten"],
        ["dlq", "list", "--entity", "'; drop table users; --"],
        ["dlq", "replay", "--all", "--limit", "1000001", "--yes"],
        ["dlq", "show", ""],
        ["dlq", "show", "msg_x" * 60],
        ["events", "--entity", "\x1b[2J"],
        ["events"],
        ["dlq"],
        ["nonsense"],
        [],
        ["backfill", "--page-size", "0"],
        ["backfill", "--retries", "99999999999"],
        ["pause", "--operator", "a b"],
        ["dlq", "replay"],
        ["dlq", "discard", "msg_a", "--all"],
        # An argument that was not UTF-8 (a lone surrogate once decoded), which Postgres cannot compare
        ["dlq", "list", "--type", "user.\udcff"],
        ["dlq", "list", "--error", "\udcff"],
        ["dlq", "discard", "--all", "--yes", "--type", "\udcff"],
    ],
)
def test_argument_errors_exit_2_with_one_line(argv, base_env, tmp_path):
    result = run_cli(base_env, *argv, cwd=tmp_path)
    assert result.returncode == 2, (argv, result.stdout, result.stderr)
    assert result.stdout == ""
    one_line_error(result)


@pytest.mark.parametrize("argv", [["--bogus"], ["dlq", "--bogus"], ["dlq", "list", "--bogus"], ["--bogus", "status"]])
def test_an_unknown_option_is_named_with_or_without_a_command(argv, base_env, tmp_path):
    result = run_cli(base_env, *argv, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert one_line_error(result) == "clerk-sync: usage: unrecognized arguments: --bogus (see --help)"


def test_unknown_ids_exit_1_and_change_nothing(session_factory, base_env, tmp_path):
    # Given one dead event
    with session_factory.begin() as session:
        add_event(session, "msg_known", "dead")

    # When an operator names events that do not exist, alone or with a real one
    for argv in (
        ["dlq", "show", "msg_nobody"],
        ["dlq", "replay", "msg_nobody"],
        ["dlq", "discard", "msg_known", "msg_nobody"],
    ):
        result = run_cli(base_env, *argv, cwd=tmp_path)

        # Then each is refused in one line naming the id, with exit 1: the operation failed, the usage was right
        assert result.returncode == 1, (argv, result.stderr)
        assert "msg_nobody" in one_line_error(result)

    # And nothing changed, nothing was audited
    assert statuses(session_factory) == {"msg_known": "dead"}
    assert audit_rows(session_factory) == []


def test_control_characters_from_the_ledger_are_escaped(session_factory, base_env, tmp_path):
    # Given dead events whose stored fields carry terminal escape sequences
    with session_factory.begin() as session:
        add_event(
            session,
            "msg_hostile",
            "dead",
            event_type=f"user.created{HOSTILE}",
            last_error=f"boom {HOSTILE}",
            errors=[{"at": "2024-01-01T00:00:00+00:00", "error": f"boom {HOSTILE}"}],
            payload={"type": "user.created", "data": {"id": "user_a", "first_name": HOSTILE}},
        )
        add_event(session, "msg_raw", "dead", payload=None, raw_body=f"not json {HOSTILE}")

    # When an operator lists, shows and follows the entity's timeline
    outputs = [
        run_cli(base_env, "dlq", "list", cwd=tmp_path),
        run_cli(base_env, "dlq", "show", "msg_hostile", cwd=tmp_path),
        run_cli(base_env, "dlq", "show", "msg_raw", cwd=tmp_path),
        run_cli(base_env, "events", "--entity", "user_a", cwd=tmp_path),
        run_cli(base_env, "dlq", "list", "--json", cwd=tmp_path),
    ]

    # Then no control character reaches the terminal; each shows as an escape
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert not any(control in result.stdout for control in TERMINAL_CONTROLS), result.stdout
    assert "\\x1b[2J" in outputs[0].stdout
    assert "\\x9b31m" in outputs[1].stdout and "\\u202eevil" in outputs[1].stdout
    assert "\\u001b[2J" in outputs[1].stdout  # inside the payload, as JSON writes it
    assert "not json \\x1b[2J" in outputs[2].stdout
    assert "\\x07" in outputs[3].stdout


def run_on_terminal(env: dict[str, str], argv: list[str], answer: str, cwd) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin, type ``answer`` at its question."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [bin_path("clerk-sync"), *argv], env=env, cwd=cwd, stdin=terminal, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    os.close(terminal)
    try:
        # Wait for the question on stderr before answering it.
        asked = ""
        while "[y/N]" not in asked:
            ready, _, _ = io_select.select([proc.stderr], [], [], 60)
            assert ready, f"no question asked; stderr so far: {asked!r}"
            chunk = os.read(proc.stderr.fileno(), 4096).decode()
            assert chunk, f"the command ended without asking: {asked!r}"
            asked += chunk
        os.write(controller, answer.encode() + b"\n")
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        os.close(controller)
    return proc.returncode, asked + stdout + stderr


def test_bulk_actions_ask_on_a_terminal_and_need_yes_elsewhere(session_factory, base_env, tmp_path):
    # Given three dead events of two types
    with session_factory.begin() as session:
        add_event(session, "msg_u1", "dead")
        add_event(session, "msg_u2", "dead")
        add_event(session, "msg_o1", "dead", event_type="organization.created", entity_id="org_a")

    # When discard --all runs without a terminal and without --yes, with or without filters
    for argv in (["dlq", "discard", "--all"], ["dlq", "replay", "--all", "--type", "user.created"]):
        refused = run_cli(base_env, *argv, cwd=tmp_path)
        # Then it is refused in one line that names --yes
        assert refused.returncode == 2
        assert "--yes" in one_line_error(refused)
    assert set(statuses(session_factory).values()) == {"dead"}

    # When an operator on a terminal answers no, nothing changes
    code, screen = run_on_terminal(base_env, ["dlq", "discard", "--all", "--type", "user.created"], "n", tmp_path)
    assert code == 1, screen
    assert "discard 2 event(s), dead events matching type=user.created?" in screen
    assert len(statuses(session_factory)) == 3

    # When the operator answers yes, the two matching are discarded
    code, screen = run_on_terminal(base_env, ["dlq", "discard", "--all", "--type", "user.created"], "y", tmp_path)
    assert code == 0, screen
    assert statuses(session_factory) == {"msg_o1": "dead"}

    # And --yes does it without asking; the audit keeps the filter of each bulk action
    done = run_cli(base_env, "dlq", "discard", "--all", "--entity", "org_a", "--yes", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert statuses(session_factory) == {}
    assert [(row.filter, sorted(row.svix_ids)) for row in audit_rows(session_factory)] == [
        ({"type": "user.created"}, ["msg_u1", "msg_u2"]),
        ({"entity": "org_a"}, ["msg_o1"]),
    ]


def test_console_password_prints_a_hash_the_console_accepts(base_env, tmp_path):
    # Given a password typed into a pipe (not an argument: it stays out of ps and shell history)
    hashed = subprocess.run(
        [bin_path("clerk-sync"), "console-password", "--name", "ops"], input="a long enough secret\n",
        env=base_env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    # Then it prints name:hash, which CONSOLE_USERS accepts and which checks the password
    assert hashed.returncode == 0, hashed.stderr
    settings = load_settings({"CONSOLE_USERS": hashed.stdout.strip()})
    ((name, password_hash),) = settings.console_users
    assert name == "ops"
    assert check_password(password_hash, "a long enough secret")
    assert not check_password(password_hash, "a long enough secreT")
    assert "a long enough secret" not in hashed.stdout

    # And a short password is refused in one line
    short = subprocess.run(
        [bin_path("clerk-sync"), "console-password"], input="short\n", env=base_env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert short.returncode == 2
    assert "12 characters" in one_line_error(short)


def test_status_reads_the_flag_the_worker_writes():
    assert status.PAUSED_FLAG == ledger.PAUSED_FLAG


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (subparsers,) = (action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return dict(subparsers.choices)


def test_a_command_parsed_alone_is_the_command_of_the_whole_parser():
    # Given the parser of every command (what --help lists)
    every = _commands(build_parser())
    # Then the command table names exactly those commands, in --help's order
    assert list(every) == list(COMMANDS)
    for name, module in COMMANDS.items():
        # When the parser is built for a command line that starts with one command
        alone = _commands(build_parser([name, "--help"]))
        # Then it holds that command (and only its module's), with the same arguments and help
        assert name in alone
        assert set(alone) == {other for other, owner in COMMANDS.items() if owner == module}
        assert alone[name].format_help() == every[name].format_help()
