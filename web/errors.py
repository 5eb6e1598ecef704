"""One place that turns exceptions into ``{"error": {"code", "message"}}`` and a status."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, has_request_context, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from services import errors as e

log = logging.getLogger(__name__)

# The one table from domain errors to HTTP: bases, plus the few leaves whose status is
# more specific than their base's. Most specific first: the first matching class decides.
STATUS: list[tuple[type[e.SightlineError], int]] = [
    (e.ImageTooLarge, 413),
    (e.UnsupportedFormat, 415),
    (e.InvalidInput, 422),
    (e.NotFound, 404),
    (e.Forbidden, 403),
    (e.Conflict, 409),
    (e.FetchFailed, 502),
    (e.Unavailable, 503),
    (e.ConfigError, 500),
]


def status_of(err: e.SightlineError) -> int:
    """The HTTP status of a domain error."""
    return next((status for cls, status in STATUS if isinstance(err, cls)), 500)


class ApiError(Exception):
    """An error raised by the web layer itself (auth, validation) with its status."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def error_response(status: int, code: str, message: str, **extra: Any) -> ResponseReturnValue:
    """The JSON error body every endpoint uses."""
    return jsonify({"error": {"code": code, "message": message, **extra}}), status


def field_error(field: str, message: str) -> ApiError:
    """422 for one named field, in the same shape as schema validation errors."""
    return ApiError(
        422,
        "validation_error",
        f"{field}: {message}",
        fields=[{"field": field, "message": message}],
    )


def validation_error(err: ValidationError, where: str = "body") -> ApiError:
    """422 naming each offending field (``where`` for rules across fields)."""
    fields = [
        {"field": ".".join(str(p) for p in d["loc"]) or where, "message": d["msg"]}
        for d in err.errors()
    ]
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return ApiError(422, "validation_error", f"invalid request: {summary}", fields=fields)


def register_error_handlers(app: Flask) -> None:
    """Map domain, web and HTTP errors to JSON responses."""

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> ResponseReturnValue:
        return error_response(err.status, err.code, err.message, **err.extra)

    @app.errorhandler(e.SightlineError)
    def _domain_error(err: e.SightlineError) -> ResponseReturnValue:
        status = status_of(err)
        if status >= 500:
            log.error("%s: %s", type(err).__name__, err)
        return error_response(status, err.code, str(err))

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> ResponseReturnValue:
        code = (err.name or "error").lower().replace(" ", "_")
        message = err.description or err.name or "error"
        if err.code == 413:
            limit = request.max_content_length if has_request_context() else None
            message = f"request body too large (limit {limit or 'exceeded'} bytes)"
        response = error_response(err.code or 500, code, message)
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> ResponseReturnValue:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the server log")
