"""Console passwords: hashed with scrypt by werkzeug.security, checked in constant time.

werkzeug (Pallets, already here under Flask) writes ``scrypt:32768:8:1$salt$hash``: a
memory-hard hash whose text holds no comma or colon after its method, so accounts can sit
in one ``CONSOLE_USERS`` variable as ``name:hash,name:hash``. (An argon2 hash would carry
commas in its parameters and need quoting of its own.)
"""

from __future__ import annotations

import re

METHOD = "scrypt"
MIN_LENGTH = 12
# What werkzeug writes: method[:params]$salt$hash (scrypt, or the older pbkdf2).
HASH_FORMAT = re.compile(r"^(scrypt|pbkdf2)(:[a-z0-9]+)*(:\d+)*\$[^$,\s]+\$[0-9a-f]+$")
# A hash to check against when the name is unknown, so both answers take the same time.
_UNKNOWN_USER_HASH: list[str] = []


def hash_password(password: str) -> str:
    """A salted scrypt hash for ``CONSOLE_USERS``; ValueError for a password that is too short."""
    from werkzeug.security import generate_password_hash

    if len(password) < MIN_LENGTH:
        raise ValueError(f"a console password needs at least {MIN_LENGTH} characters")
    return generate_password_hash(password, method=METHOD)


def is_hash(text: str) -> bool:
    return bool(HASH_FORMAT.match(text))


def check_password(stored_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; with no stored hash, spends the same time and says False."""
    from werkzeug.security import check_password_hash, generate_password_hash

    if stored_hash is None:
        if not _UNKNOWN_USER_HASH:
            _UNKNOWN_USER_HASH.append(generate_password_hash("no such user, no such password", method=METHOD))
        check_password_hash(_UNKNOWN_USER_HASH[0], password)
        return False
    return check_password_hash(stored_hash, password)
