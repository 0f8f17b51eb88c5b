"""clerk-sync: the operator's command line (CONTRACT section 6).

Each command lives in a module of its own exposing ``register(subparsers)``;
``COMMANDS`` below is the whole table of contents. Exit codes: 0 success, 1 the operation
failed, 2 usage or configuration error; errors are one line on stderr, and anything
read from the ledger is printed with its control characters escaped.

Start-up is kept short (``--help`` and ``status`` in a fraction of a second, measured by
``bench/cli_startup.py``): modules here import only the standard library at the top,
a command line naming a command imports that command's module alone, and each command
imports what it needs when it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import import_module
from typing import TYPE_CHECKING

from worker.cli.common import CliError, Parser, as_database_error, printable

if TYPE_CHECKING:
    from shared.config import Settings

# Each command and the module of worker.cli that registers it, in the order --help lists them.
COMMANDS = {
    "dlq": "dlq",
    "status": "status",
    "events": "events",
    "pause": "pause",
    "resume": "pause",
    "backfill": "backfill",
    "reconcile": "reconcile",
    "send": "send",
    "console-password": "console_password",
}


def build_parser(argv: Sequence[str] | None = None) -> Parser:
    """The command line's parser: every command's, or when ``argv`` starts with a command, that command's.

    Parsing ``clerk-sync status ...`` then imports and builds only what ``status`` needs (the
    usage line and every message stay the same); ``--help`` and anything else get every command.
    """
    parser = Parser(prog="clerk-sync", description="Operate clerk-sync: dead letters, status, sync.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = COMMANDS.get(argv[0]) if argv else None
    for module in [named] if named is not None else dict.fromkeys(COMMANDS.values()):
        import_module(f"worker.cli.{module}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command's exit code. A reader that stops reading (`| head`, `| true`) ends it quietly, exit 1."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # what is still buffered meets a closed pipe here, not at exit
    except BrokenPipeError:
        _discard_stdout()
        return 1


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit cannot fail again.

    This is the handling of SIGPIPE the Python documentation recommends (the signal module's page).
    """
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _run(argv: Sequence[str] | None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(argv).parse_args(argv)  # one line and exit 2 on a usage error
    from shared.config import ConfigError

    try:
        settings = None
        if getattr(args, "needs_settings", True):
            settings = _configure(logging=getattr(args, "configures_logging", True))
        return int(args.handler(args, settings) or 0)
    except ConfigError as exc:
        print(f"clerk-sync: configuration error: {exc}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"clerk-sync: {printable(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clerk-sync: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        error = as_database_error(exc)
        if error is None:
            raise
        print(f"clerk-sync: {error}", file=sys.stderr)
        return error.exit_code


def _configure(*, logging: bool) -> Settings:
    """Settings from the environment and ./.env, and logging on stderr (stdout is for tables and --json).

    A command that logs nothing (``status``) skips the logging set-up: structlog's import alone
    is a good part of the start-up time it is kept short for.
    """
    from pathlib import Path

    from dotenv import load_dotenv

    from shared.config import get_settings

    # Variables from ./.env (written by `make run`) for those not already set.
    load_dotenv(Path(".env"), override=False)
    _embedded_server_urls()
    settings = get_settings()
    if logging:
        from shared.logging import configure_logging

        configure_logging(log_format=settings.log_format, level="WARNING", stream="ext://sys.stderr")
    return settings


def _embedded_server_urls() -> None:
    """The URLs of the embedded servers `make run` started here, for DATABASE_URL/REDIS_URL not set.

    `make run` writes them to ``.data/urls.json`` while it runs on embedded servers (and removes the
    file when it does not), so that `clerk-sync status` in a second terminal of the checkout just works.
    """
    import json
    import os
    from pathlib import Path

    path = Path(os.environ.get("CLERK_SYNC_DATA_DIR") or ".data") / "urls.json"
    try:
        urls = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    for name in ("DATABASE_URL", "REDIS_URL"):
        if isinstance(urls, dict) and isinstance(urls.get(name), str) and not os.environ.get(name):
            os.environ[name] = urls[name]
