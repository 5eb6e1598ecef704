"""Liveness, readiness, metrics and the OpenAPI document (no API key needed)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from services.errors import SightlineError
from web.errors import ApiError
from web.openapi import build_openapi

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """The process answers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Model loaded, index and broker reachable: 200, else 503 naming what is not."""
    ext = current_app.extensions["sightline"]
    checks: dict[str, Any] = {"model": ext.services.encoder.loaded}
    try:
        ext.services.index.list_collections()
        checks["index"] = True
    except (SightlineError, OSError) as e:
        checks["index"] = f"unreachable: {e}"
    broker = ext.settings.queue.broker_url
    if broker:
        try:
            ext.runtime.jobs.r.ping()
            checks["broker"] = True
        except Exception as e:  # any redis/socket error means not ready
            checks["broker"] = f"unreachable: {type(e).__name__}"
    ready = all(v is True for v in checks.values())
    return jsonify(
        {"status": "ready" if ready else "not ready", "checks": checks}
    ), 200 if ready else 503


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    """Prometheus exposition."""
    ext = current_app.extensions["sightline"]
    if not ext.settings.web.metrics_public:
        raise ApiError(404, "not_found", "metrics are not public")
    return ext.metrics.render()


@bp.get("/api/v1/openapi.json")
def openapi() -> ResponseReturnValue:
    """The OpenAPI 3.1 document of /api/v1."""
    return jsonify(build_openapi(current_app, version="1.0"))
