"""The ``endpoint`` decorator: authenticate, validate, call, serialise, and describe.

Each view carries its own ``Operation`` (scope, schemas, status), which both drives the
request handling here and generates the OpenAPI document, so the two cannot drift apart.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import g, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ValidationError

from services.auth.apikeys import ApiKey
from services.auth.principal import Principal, Scope
from services.errors import InvalidTaxonomy
from services.tagging.taxonomy import load_yaml
from web.errors import ApiError, field_error, validation_error
from web.extension import runtime


@dataclass(frozen=True)
class FormField:
    """One field of a multipart request, as the document describes it."""

    description: str
    kind: str = "text"  # text | json (an object) | file | files (repeated)
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """What an endpoint needs and returns."""

    summary: str
    scope: Scope | None
    response: type[BaseModel] | None = None
    status: int = 200
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    form: dict[str, FormField] = field(default_factory=dict)  # multipart fields
    binary: str | None = None  # media type of a non-JSON response
    errors: tuple[int, ...] = ()
    yaml_body: bool = False  # the body may also be sent as application/yaml
    tag_filters: bool = False  # taxonomy dimension names are accepted as query filters
    # Other media types the success response may come in, with their schema (?format=yaml).
    also_returns: tuple[tuple[str, type[BaseModel]], ...] = ()
    # Largest body this route reads; None = the app-wide limit (uploads).
    max_body: int | None = 64 * 1024


def caller() -> Principal:
    """Who this request acts as (set by ``endpoint`` from the API key)."""
    principal: Principal = g.caller
    return principal


def api_token() -> str:
    """The API key a request carries: ``Authorization: Bearer <key>`` (scheme in any case,
    any spacing) or ``X-API-Key``; empty when there is none."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else ""
    return token or request.headers.get("X-API-Key", "").strip()


def verified_key() -> ApiKey | None:
    """The request's valid, unrevoked API key, verified once per request (the rate limiter
    keys on it before the view authenticates)."""
    if "verified_key" not in g:
        token = api_token()
        g.verified_key = runtime().access.verify_key(token) if token else None
    key: ApiKey | None = g.verified_key
    return key


def authenticate(scope: Scope) -> Principal:
    """The request's API key as a principal, checked for ``scope``: 401 without a valid
    key, 403 without the scope."""
    if not api_token():
        raise ApiError(401, "unauthorized", "an API key is required (Authorization: Bearer <key>)")
    key = verified_key()
    if key is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key")
    principal = key.principal()
    if not principal.allows(scope):
        raise ApiError(403, "forbidden", f"this key lacks the {scope.value!r} scope")
    return principal


def tag_dimensions() -> set[str]:
    """Names of the current taxonomy's dimensions (``colour=red`` filters on search)."""
    return set(runtime().tagging.dimension_names())


MAX_JSON_DEPTH = 32
# One token of JSON structure: a whole string (escapes included) or a bracket. The string
# alternative is unambiguous, so the scan is linear.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_depth(raw: str) -> int:
    """How deeply a JSON text nests (strings skipped), in one linear scan."""
    depth = deepest = 0
    for match in _JSON_TOKENS.finditer(raw):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _body(op: Operation) -> Any:
    """The parsed request body: JSON, or YAML where the operation allows it."""
    mime = request.mimetype or ""
    text = request.get_data(as_text=True)
    if op.yaml_body and mime in YAML_TYPES:
        try:
            return load_yaml(text)
        except InvalidTaxonomy as e:
            raise ApiError(422, "validation_error", f"body: {e}") from e
    if mime != "application/json" and not mime.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    return parse_json(text, "body")


def parse_json(text: str, field_name: str) -> Any:
    """JSON from a body or a form field, bounded in nesting; 422 naming the field."""
    if json_depth(text) > MAX_JSON_DEPTH:
        raise field_error(field_name, f"nested deeper than {MAX_JSON_DEPTH}")
    try:
        return json.loads(text)
    except ValueError as e:
        raise field_error(field_name, f"not valid JSON ({e})") from e


YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")


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
            if op.max_body is not None:
                request.max_content_length = op.max_body
            kwargs: dict[str, Any] = dict(path)
            try:
                if op.query is not None:
                    extra = tag_dimensions if op.tag_filters else None
                    try:
                        kwargs["query"] = op.query.model_validate(_query_args(op.query, extra))
                    except ValidationError as err:
                        raise validation_error(err, "query") from err
                if op.body is not None and op.form and request.mimetype == "multipart/form-data":
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
