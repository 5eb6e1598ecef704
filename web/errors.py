"""One place that turns exceptions into ``{"error": {"code", "message"}}`` and a status."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, has_request_context, jsonify, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
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


TITLES = {
    400: "Bad request",
    401: "Please log in",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    413: "Too large",
    415: "Not an image Sightline reads",
    422: "That cannot be done",
    429: "Too many requests",
    502: "A remote server failed",
    503: "Temporarily unavailable",
}


def _wants_page() -> bool:
    """Dashboard pages get dashboard error pages; its scripts (JSON) and the API, JSON."""
    if not has_request_context() or not request.path.startswith("/admin"):
        return False
    return request.accept_mimetypes.best != "application/json" and not request.is_json


def _page(status: int, message: str, expired_form: bool = False) -> ResponseReturnValue:
    """An error as a dashboard page: what happened, and ways on (no raw JSON, no trace)."""
    retry = None
    if request.method == "GET" and status < 500 and status not in (403, 404):
        retry = request.full_path
    elif (
        expired_form and request.url_rule is not None and "GET" in (request.url_rule.methods or ())
    ):
        retry = request.path
    try:
        html = render_template(
            "admin/error.html",
            status=status,
            title="This form has expired"
            if expired_form
            else TITLES.get(status, "Something went wrong"),
            message=message,
            retry=retry,
            home=url_for("admin.search"),
        )
    except Exception:  # the page itself failed (a store down): plain words still help
        log.exception("error page failed")
        html = f"<!doctype html><title>Error {status}</title><h1>Error {status}</h1><p><a href='/admin/'>Dashboard</a></p>"
    return html, status, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}


def register_error_handlers(app: Flask) -> None:
    """Map domain, web and HTTP errors to JSON responses (dashboard pages: HTML pages)."""

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> ResponseReturnValue:
        if _wants_page():
            return _page(err.status, err.message)
        return error_response(err.status, err.code, err.message, **err.extra)

    @app.errorhandler(e.SightlineError)
    def _domain_error(err: e.SightlineError) -> ResponseReturnValue:
        status = status_of(err)
        if status >= 500:
            log.error("%s: %s", type(err).__name__, err)
        if _wants_page():
            return _page(status, str(err) if status < 500 else "The server could not do that now.")
        return error_response(status, err.code, str(err))

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> ResponseReturnValue:
        code = (err.name or "error").lower().replace(" ", "_")
        message = err.description or err.name or "error"
        if err.code == 413:
            limit = request.max_content_length if has_request_context() else None
            message = f"request body too large (limit {limit or 'exceeded'} bytes)"
        if _wants_page():
            if isinstance(err, CSRFError):
                message = (
                    "The page this form came from is older than your session (you logged in "
                    "again, or the server's key changed). Nothing was changed: reload the "
                    "page and send the form again."
                )
                return _page(400, message, expired_form=True)
            return _page(err.code or 500, message)
        response = error_response(err.code or 500, code, message)
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> ResponseReturnValue:
        log.exception("unhandled error")
        if _wants_page():
            return _page(500, "Something failed on the server; it is in the server log.")
        return error_response(500, "internal_error", "internal error; see the server log")
