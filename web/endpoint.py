"""The ``endpoint`` decorator: authenticate, validate, call, serialise, and describe.

Each view carries its own ``Operation`` (scope, schemas, status), which both drives the
request handling here and generates the OpenAPI document, so the two cannot drift apart.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from flask import g, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ValidationError

from services.auth.principal import Principal, Scope
from web.errors import ApiError, validation_error
from web.extension import runtime


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
    yaml_body: bool = False  # the body may also be sent as application/yaml
    tag_filters: bool = False  # taxonomy dimension names are accepted as query filters


def caller() -> Principal:
    """Who this request acts as (set by ``endpoint`` from the API key)."""
    principal: Principal = g.caller
    return principal


def authenticate(scope: Scope) -> Principal:
    """The request's API key as a principal, checked for ``scope``: 401 without a valid
    key, 403 without the scope."""
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    token = token or request.headers.get("X-API-Key", "").strip()
    if not token:
        raise ApiError(401, "unauthorized", "an API key is required (Authorization: Bearer <key>)")
    key = runtime().access.verify_key(token)
    if key is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key")
    principal = key.principal()
    if not principal.allows(scope):
        raise ApiError(403, "forbidden", f"this key lacks the {scope.value!r} scope")
    return principal


def tag_dimensions() -> set[str]:
    """Names of the current taxonomy's dimensions (``colour=red`` filters on search)."""
    return set(runtime().tagging.dimension_names())


def _body(op: Operation) -> Any:
    """The parsed request body: JSON, or YAML where the operation allows it."""
    mime = request.mimetype or ""
    if op.yaml_body and mime in ("application/yaml", "application/x-yaml", "text/yaml"):
        try:
            return yaml.safe_load(request.get_data(as_text=True))
        except yaml.YAMLError as e:
            raise ApiError(422, "validation_error", f"the body is not valid YAML: {e}") from e
    return request.get_json(silent=True)


def _query_args(
    model: type[BaseModel], extra: Callable[[], set[str]] | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name not in request.args:
            continue
        is_list = str(info.annotation).startswith("list[")
        data[name] = request.args.getlist(name) if is_list else request.args.get(name)
    unknown = set(request.args) - set(model.model_fields)
    if unknown and extra is not None:  # read the taxonomy only when a request needs it
        unknown -= extra()
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
                g.caller = authenticate(op.scope)
            kwargs: dict[str, Any] = dict(path)
            try:
                if op.query is not None:
                    extra = tag_dimensions if op.tag_filters else None
                    kwargs["query"] = op.query.model_validate(_query_args(op.query, extra))
                if op.body is not None and op.form and not request.is_json:
                    kwargs["body"] = None  # sent as multipart: the view reads the form
                elif op.body is not None:
                    payload = _body(op)
                    if not isinstance(payload, dict):
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
