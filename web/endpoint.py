"""The ``endpoint`` decorator: authenticate, validate, call, serialise, and describe.

Each view carries its own ``Operation`` (scope, schemas, status), which both drives the
request handling here and generates the OpenAPI document, so the two cannot drift apart.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ValidationError

from services.apikeys import ApiKey, Scope
from web.errors import ApiError, validation_error


@dataclass(frozen=True)
class Operation:
    """What an endpoint needs and returns."""

    summary: str
    scope: Scope | None
    response: type[BaseModel] | None = None
    status: int = 200
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    form: dict[str, str] = field(default_factory=dict)  # multipart field -> description
    binary: str | None = None  # media type of a non-JSON response
    errors: tuple[int, ...] = ()


def current_key() -> ApiKey:
    """The authenticated key of this request."""
    key: ApiKey = g.api_key
    return key


def authenticate(scope: Scope) -> ApiKey:
    """The request's API key, checked for ``scope``: 401 without a valid key, 403 without scope."""
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    token = token or request.headers.get("X-API-Key", "").strip()
    if not token:
        raise ApiError(401, "unauthorized", "an API key is required (Authorization: Bearer <key>)")
    key = current_app.extensions["sightline"].keys.verify(token)
    if key is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key")
    if not key.allows(scope):
        raise ApiError(403, "forbidden", f"this key lacks the {scope.value!r} scope")
    return key


def _query_args(model: type[BaseModel]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name not in request.args:
            continue
        is_list = str(info.annotation).startswith("list[")
        data[name] = request.args.getlist(name) if is_list else request.args.get(name)
    unknown = set(request.args) - set(model.model_fields)
    if unknown:
        raise ApiError(
            422,
            "validation_error",
            f"unknown query parameter(s): {', '.join(sorted(unknown))}",
            fields=[{"field": u, "message": "unknown parameter"} for u in sorted(unknown)],
        )
    return data


def endpoint(op: Operation) -> Callable[[Callable[..., Any]], Callable[..., ResponseReturnValue]]:
    """Wrap a view: auth -> parse (422 on bad fields) -> call -> JSON with ``op.status``."""

    def wrap(view: Callable[..., Any]) -> Callable[..., ResponseReturnValue]:
        @functools.wraps(view)
        def handler(**path: Any) -> ResponseReturnValue:
            if op.scope is not None:
                g.api_key = authenticate(op.scope)
            kwargs: dict[str, Any] = dict(path)
            try:
                if op.query is not None:
                    kwargs["query"] = op.query.model_validate(_query_args(op.query))
                if op.body is not None:
                    payload = request.get_json(silent=True)
                    if payload is None:
                        raise ApiError(422, "validation_error", "the body must be a JSON object")
                    kwargs["body"] = op.body.model_validate(payload)
            except ValidationError as err:
                raise validation_error(err) from err
            result = view(**kwargs)
            if isinstance(result, BaseModel):
                return jsonify(result.model_dump(mode="json")), op.status
            return result

        handler.operation = op  # type: ignore[attr-defined]
        return handler

    return wrap
