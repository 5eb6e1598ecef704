"""What the app holds for its requests: the runtime built in ``create_app``, and metrics.

Handlers reach them through these two functions, never by building anything themselves.
"""

from __future__ import annotations

from flask import current_app

from services.runtime import Runtime
from web.metrics import Metrics

RUNTIME = "sightline"
METRICS = "sightline.metrics"
HISTORY = "sightline.history"


def runtime() -> Runtime:
    """This app's runtime (services, stores, dispatcher)."""
    rt: Runtime = current_app.extensions[RUNTIME]
    return rt


def metrics() -> Metrics:
    """This app's Prometheus metrics."""
    m: Metrics = current_app.extensions[METRICS]
    return m
