"""Text for an operator's eyes: what data or a driver says, escaped so it shows what it holds.

The CLI prints values read from events (svix-ids, types, errors) and the release step prints a
driver's error: neither may drive the terminal (escape sequences, bidirectional overrides) nor
spill over lines. The console shows payloads: their lines stay, their bidirectional overrides do not.
"""

from __future__ import annotations

import re
import unicodedata

# Bidirectional overrides and isolates reorder what a terminal shows (a "Trojan Source" trick).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def printable(text: object) -> str:
    """``text`` with every control character escaped, so data cannot drive the operator's terminal.

    C0 and C1 controls (escape sequences start with ESC or CSI), DEL and bidirectional
    overrides become ``\\x1b``-style escapes; newlines and tabs too, so one value stays one line.
    """
    value = str(text)
    if value.isprintable() and not _BIDI_CONTROLS.intersection(value):
        return value
    return "".join(_escape(char) for char in value)


def _escape(char: str) -> str:
    if char in _BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Cs"):
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def bidi_visible(text: str) -> str:
    """``text`` with its bidirectional controls shown as ``\\u202e`` escapes and all else as is: a
    name holding a right-to-left override would otherwise show a payload's line (or a cell) reordered.
    In JSON text the escape means the same character, so a payload shown so still reads true."""
    if not _BIDI_CONTROLS.intersection(text):
        return text
    return "".join(f"\\u{ord(char):04x}" if char in _BIDI_CONTROLS else char for char in text)


def driver_reason(exc: BaseException) -> str:
    """A database error's first line as the driver wrote it (SQLAlchemy's wrapper adds the statement
    and hidden parameters after it; libpq names host and port, never the password)."""
    original = getattr(exc, "orig", None) or exc
    return printable((str(original).strip().splitlines() or [type(original).__name__])[0])


# The password of a URL's user info, `//user:PASSWORD@host` (up to the last @ before the path).
_URL_PASSWORD = re.compile(r"(//[^/?#:@]*:)[^/?#]*@")
# libpq's query parameters that hold a secret (`?password=...`), which a DATABASE_URL may carry instead.
_QUERY_SECRET = re.compile(r"([?&](?:password|sslpassword|oauth_client_secret)=)[^&#]*")


def without_password(url: str) -> str:
    """``url`` as it may be printed: every password in it replaced by ``***`` (also in a URL urlsplit refuses)."""
    return _QUERY_SECRET.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", url, count=1))
