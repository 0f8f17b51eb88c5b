#!/usr/bin/env bash
# `make run`: choose or start PostgreSQL and Redis, create the database, migrate, and start
# web, worker and beat with honcho. The decisions live in scripts/launch.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/launch.py "$@"
