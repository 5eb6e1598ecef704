"""Sightline's domain core: no Flask, no Celery, only the libraries it needs."""
