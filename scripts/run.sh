#!/usr/bin/env bash
# `make run`: create the database, migrate, and start web, worker and beat with honcho.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

# A development webhook secret, generated once and kept in .env (honcho reads it).
if [ -z "${CLERK_WEBHOOK_SECRET:-}" ] && ! grep -qs '^CLERK_WEBHOOK_SECRET=' .env; then
  secret="whsec_$($BIN/python -c 'import base64,os;print(base64.b64encode(os.urandom(24)).decode())')"
  echo "CLERK_WEBHOOK_SECRET=$secret" >> .env
  echo "run: generated a development CLERK_WEBHOOK_SECRET in .env (use your Clerk endpoint's secret in production)"
fi
set -a; [ -f .env ] && . ./.env; set +a

if [ -z "${DATABASE_URL:-}" ] && [ -z "${REDIS_URL:-}" ]; then
  scripts/ensure-services.sh || true
fi
$BIN/python scripts/create_db.py
$BIN/alembic upgrade head
exec $BIN/honcho start -f Procfile web worker beat
