"""Create the database named in DATABASE_URL if it does not exist (for `make run`)."""

from __future__ import annotations

import sys

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from shared.config import ConfigError, get_settings


def main() -> int:
    try:
        url = make_url(get_settings().sqlalchemy_url)
    except ConfigError as exc:
        print(f"create_db: {exc}", file=sys.stderr)
        return 2
    name = url.database or "clerk_sync"
    admin = url.set(database="postgres").set(drivername="postgresql")
    conninfo = admin.render_as_string(hide_password=False)
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                print(f"create_db: created database {name}")
    except psycopg.Error as exc:
        print(
            f"create_db: cannot reach PostgreSQL at {url.host}:{url.port or 5432}: {exc}".splitlines()[0],
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
