#!/usr/bin/env sh
# The `console` process: the operations console under gunicorn, configured in
# deploy/gunicorn-console.conf.py (bind address, port, refusal without accounts).
# To serve it with another WSGI server, change this one line; console.wsgi:app stays.
exec gunicorn -c deploy/gunicorn-console.conf.py console.wsgi:app "$@"
