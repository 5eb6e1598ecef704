"""The Celery application, configured from Settings.

``app`` exists for ``celery -A workers.celery_app``; its configuration is read lazily from
the environment the first time Celery needs it, so importing this module connects to
nothing and reads nothing. Publishers (web, CLI, tests) build their own with
``create_celery(settings)``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from services.errors import ConfigError
from services.jobs.kinds import JOB_KINDS, JOBS_QUEUE
from services.settings import Settings, load_settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for Sightline's delivery guarantees."""
    q = settings.queue
    if not q.broker:
        raise ConfigError("Celery needs SIGHTLINE_QUEUE__BROKER_URL (a redis:// URL)")
    transport = {
        "visibility_timeout": q.visibility_timeout_s,
        # How often workers look for messages whose visibility timeout has passed (those of
        # a killed worker). Kombu's default scans every 100 s; scan every few seconds.
        "unacked_restore_interval": max(1, min(10, q.visibility_timeout_s // 5)),
        "unacked_restore_throttle": 1,
        # The scan holds a Redis lock that lives this long (kombu: 300 s) if its holder dies
        # mid-scan: a worker SIGKILLed during a scan would hold up every redelivery for five
        # minutes. A scan takes milliseconds; keep the lock's life short.
        "unacked_mutex_expire": max(5, min(30, q.visibility_timeout_s)),
    }
    return {
        "broker_url": q.broker,
        "result_backend": q.backend,
        # At-least-once: acknowledge after the work is done (the upsert waited for), and
        # put the message back if the worker process dies mid-task.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Redis redelivers unacknowledged messages after this; it must exceed the longest task.
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # keep reconnecting while Redis restarts
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,  # job state lives in the job store, not in results
        "task_default_queue": JOBS_QUEUE,
        "task_routes": {spec.task_name: {"queue": spec.queue} for spec in JOB_KINDS.values()},
        "worker_hijack_root_logger": False,
        "sightline_batch_size": settings.ingest_batch_size,
        "sightline_batch_max_wait_s": q.batch_max_wait_s,
    }


def create_celery(settings: Settings) -> Celery:
    """A configured Celery app with Sightline's tasks registered."""
    app = Celery("sightline", include=["workers.tasks"])
    app.conf.update(celery_config(settings))
    return app


app = Celery("sightline", include=["workers.tasks"])
app.add_defaults(lambda: celery_config(load_settings()))
