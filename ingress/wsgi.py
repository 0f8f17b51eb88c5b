"""gunicorn's entry point: `gunicorn -c deploy/gunicorn.conf.py ingress.wsgi:app`."""

from ingress import create_app

app = create_app()
