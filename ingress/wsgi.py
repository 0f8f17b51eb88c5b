"""The WSGI entry point: `ingress.wsgi:app` (granian serves it in `web`, see deploy/web.py)."""

from ingress import create_app

app = create_app()
