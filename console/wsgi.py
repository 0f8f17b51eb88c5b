"""The console's WSGI entry point for gunicorn (``deploy/console.sh``)."""

from console import create_app

app = create_app()
