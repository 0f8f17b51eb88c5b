"""`clerk-sync send EVENT_FILE|TYPE --url URL`: sign a payload and post it, as Svix would."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared.terminal import without_password
from worker.cli.common import CliError, one_line

if TYPE_CHECKING:
    from requests import Response

    from shared.config import Settings

DEFAULT_URL = "http://127.0.0.1:8000/webhooks/clerk"
# How much of the ingress's answer a result or an error quotes (an error page can be long HTML).
ANSWER_WIDTH = 160


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("send", help="sign an event (a file or a built-in sample type) and post it")
    parser.add_argument("event", metavar="EVENT_FILE|TYPE", help="a JSON file, or a type such as user.created")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"ingress URL (default {DEFAULT_URL})")
    parser.add_argument("--svix-id", help="svix-id to send under (default: a new one)")
    parser.set_defaults(handler=run)


def _samples() -> Any:
    # importlib.resources (and uuid, below) only when a command needs them: start-up stays short.
    from importlib import resources

    return resources.files("worker.cli") / "samples"


def sample_types() -> list[str]:
    folder = _samples()
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_event(spec: str) -> str:
    """The body to send: a file's exact bytes (decoded, never translated: CRLF stays CRLF), or a built-in sample.

    A file that is not UTF-8 is refused: Svix signs and Clerk sends JSON text, and the signature is
    computed over the text.
    """
    path = Path(spec)
    if path.is_file():
        return _file_text(path)
    if spec in sample_types():
        return (_samples() / f"{spec}.json").read_text()
    raise CliError(f"{spec!r} is neither a file nor a sample type ({', '.join(sample_types())})", exit_code=2)


def _file_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {str(path)!r}: {exc.strerror}", exit_code=2) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
        raise CliError(f"{str(path)!r} is not UTF-8 ({byte}): a webhook body is JSON text", exit_code=2) from None


def webhook_url(url: str) -> str:
    """The ingress endpoint ``--url`` names (a bare host gets /webhooks/clerk); a usage error when it is not one."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise CliError(f"--url {without_password(url)!r} is not a valid URL ({exc})", exit_code=2) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"--url {without_password(url)!r} is not an http(s) URL", exit_code=2)
    return url.rstrip("/") + "/webhooks/clerk" if parts.path in ("", "/") else url


def run(args: argparse.Namespace, settings: Settings) -> int:
    import uuid

    url = webhook_url(args.url)
    secret = settings.require_webhook_secrets(without_it="send has no secret to sign the event with")[0]
    body = load_event(args.event)
    try:
        json.loads(body)
    except json.JSONDecodeError:
        print("clerk-sync: warning: the body is not JSON; sending it anyway", file=sys.stderr)
    svix_id = args.svix_id or f"msg_{uuid.uuid4().hex}"
    response = _post(url, svix_id, body, secret)
    answer = one_line(response.text, ANSWER_WIDTH)
    if not response.ok:
        # An error page may be long HTML: its first words, on the one line of the error.
        raise CliError(
            f"the ingress answered {response.status_code} {one_line(response.reason, 40)} to {svix_id}: {answer}"
        )
    print(f"{response.status_code} {svix_id} {answer}")
    return 0


def _post(url: str, svix_id: str, body: str, secret: str) -> Response:
    """``body`` signed as Svix signs it, posted to ``url``: the answer, or one line when there is none."""
    import requests
    from svix.webhooks import Webhook

    now = dt.datetime.now(dt.UTC)
    headers = {
        "svix-id": svix_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(secret).sign(svix_id, now, body),
        "content-type": "application/json",
    }
    try:
        return requests.post(url, data=body.encode(), headers=headers, timeout=10)
    except requests.RequestException as exc:
        raise CliError(f"cannot post to {without_password(url)}: {type(exc).__name__}") from None
