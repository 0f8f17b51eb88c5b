"""What an operator types, parsed and bounded: ``--since``, ``--limit``, entity ids, svix-ids.

Import-free (standard library only) so that the CLI's parser can use it and still start in a
fraction of a second; the console reads its form fields with the same functions, so both
refuse the same input with the same one-line message.
"""

from __future__ import annotations

import datetime as dt
import re

DEFAULT_LIST_LIMIT = 100
# Larger limits are typing mistakes: no operator reads or confirms a million events.
MAX_LIMIT = 100_000
MAX_SVIX_ID_LENGTH = 255  # webhook_events.svix_id
EARLIEST_SINCE = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# A --since a little ahead of this machine's clock is another machine's clock, not a mistake.
SINCE_CLOCK_SKEW = dt.timedelta(minutes=5)
_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# A Clerk id: a lower-case prefix, an underscore, letters and digits (user_2g7n..., org_..., orgmem_..., orginv_...).
ENTITY_ID = re.compile(r"^[a-z]{1,16}_[A-Za-z0-9_-]{1,64}$")


def parse_since(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """``2h``, ``3d``, ``30m``, ``1w`` ago, or an ISO date/datetime (UTC unless it says)."""
    now = now or dt.datetime.now(dt.UTC)
    match = _RELATIVE.match(text)
    try:
        if match:
            amount, unit = int(match.group(1)), match.group(2).lower()
            moment = now - dt.timedelta(**{_UNITS[unit]: amount})
        else:
            moment = dt.datetime.fromisoformat(text.strip())
            moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    except OverflowError:
        raise ValueError(f"--since {text!r}: reaches before {EARLIEST_SINCE.year}") from None
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected an ISO date or datetime (2024-05-01, 2024-05-01T12:00Z) or a duration (2h, 3d)"
        ) from None
    if moment < EARLIEST_SINCE:
        raise ValueError(f"--since {text!r}: reaches before {EARLIEST_SINCE.year}")
    if moment > now + SINCE_CLOCK_SKEW:
        raise ValueError(f"--since {text!r}: is in the future, so it would match nothing")
    return moment


def parse_limit(text: str) -> int:
    """``--limit`` as typed (the CLI's argument, the console's field): a whole number, 1 to ``MAX_LIMIT``."""
    text = text.strip()
    if not text.isdigit() or len(text) > len(str(MAX_LIMIT)):
        raise ValueError(f"--limit must be from 1 to {MAX_LIMIT}, got {text!r}")
    return check_limit(int(text))


def check_limit(value: int) -> int:
    """A limit an operator can mean: 1 to ``MAX_LIMIT``."""
    if not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"--limit must be from 1 to {MAX_LIMIT}, got {value}")
    return value


def check_entity_id(text: str) -> str:
    """``text`` if it is shaped like a Clerk id, else ValueError naming the rule."""
    if not ENTITY_ID.match(text):
        raise ValueError(f"--entity {text!r}: not a Clerk id (user_..., org_..., orgmem_..., orginv_..., orgdmn_...)")
    return text


def storable(text: str) -> bool:
    """Whether Postgres's text can hold ``text``: no NUL, no lone surrogate (an argument that was not UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(name: str, text: str | None) -> str | None:
    """A text filter (``--type``, ``--error``; None when not given) a stored value could hold, else ValueError."""
    if text is not None and not storable(text):
        raise ValueError(f"--{name} {text!r}: holds a NUL or a byte that is not UTF-8, which no stored value can")
    return text


def check_svix_id(text: str) -> str:
    """A svix-id as the ledger can hold it: 1-255 printable characters, no surrounding blanks."""
    if not text or len(text) > MAX_SVIX_ID_LENGTH or not text.isprintable() or text != text.strip():
        raise ValueError(f"not a svix-id: {text!r}")
    return text
