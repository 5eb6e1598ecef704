"""Liveness, readiness, metrics and the OpenAPI document (no API key needed)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from services.errors import Unavailable
from web.errors import ApiError
from web.extension import metrics as app_metrics
from web.extension import runtime
from web.openapi import build_openapi

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """The process answers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Model loaded, index and broker reachable: 200, else 503 naming what is not."""
    checks = runtime().health()
    ready = all(v is True for v in checks.values())
    return jsonify(
        {"status": "ready" if ready else "not ready", "checks": checks}
    ), 200 if ready else 503


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    """Prometheus exposition."""
    if not runtime().settings.web.metrics_public:
        raise ApiError(404, "not_found", "metrics are not public")
    return app_metrics().render()


@bp.get("/api/v1/openapi.json")
def openapi() -> ResponseReturnValue:
    """The OpenAPI 3.1 document of /api/v1."""
    try:
        dimensions = runtime().tagging.dimension_names()
    except Unavailable:  # the document still describes everything else
        dimensions = []
    return jsonify(build_openapi(current_app, version="1.0", dimensions=dimensions))
