"""WSGI entry point for gunicorn (``gunicorn -c infra/gunicorn.conf.py web.wsgi:app``)."""

from web.app import create_app

app = create_app()
