"""Celery application and thin tasks calling ``services`` (event-driven ingestion)."""
