"""OpenAPI 3.1 document built from the views' own ``Operation`` schemas."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from flask import Flask
from pydantic import BaseModel

from web.endpoint import Operation
from web.schemas import ErrorResponse

_PARAM = re.compile(r"<(?:[a-z]+:)?([a-zA-Z_]+)>")
REF = "#/components/schemas/{model}"


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    params = []
    schema = model.model_json_schema()
    for name, prop in schema.get("properties", {}).items():
        params.append(
            {
                "name": name,
                "in": "query",
                "required": name in schema.get("required", []),
                "schema": {k: v for k, v in prop.items() if k != "title"},
                "description": prop.get("description", ""),
                **({"style": "form", "explode": True} if prop.get("type") == "array" else {}),
            }
        )
    return params


_FORM_KINDS: dict[str, dict[str, Any]] = {
    "text": {"type": "string"},
    "json": {"type": "object"},
    "file": {"type": "string", "format": "binary"},
    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
}


def _multipart(op: Operation) -> dict[str, Any]:
    """The multipart body of an operation: its fields, which are required, and the JSON
    ones encoded as application/json parts."""
    props = {
        name: {**_FORM_KINDS[f.kind], "description": f.description} for name, f in op.form.items()
    }
    body: dict[str, Any] = {
        "schema": {
            "type": "object",
            "properties": props,
            "required": [name for name, f in op.form.items() if f.required],
        }
    }
    json_parts = {
        name: {"contentType": "application/json"} for name, f in op.form.items() if f.kind == "json"
    }
    if json_parts:
        body["encoding"] = json_parts
    return body


def _errors(op: Operation, path: str) -> set[int]:
    """Every status an operation can answer with besides success: what it declares, plus
    what the shared machinery adds (auth, validation, body limits, rate limits)."""
    errors = set(op.errors) | {429}
    if op.scope is not None:
        errors |= {401, 403}
    if op.query is not None or op.body is not None or op.form or "{" in path:
        errors.add(422)
    if op.body is not None or op.form:
        errors |= {413, 415}
    if "{" in path:
        errors.add(404)
    return errors


def build_openapi(app: Flask, version: str, dimensions: Sequence[str] = ()) -> dict[str, Any]:
    """Describe every view that carries an ``Operation``; search routes take the current
    taxonomy's ``dimensions`` as filter parameters."""
    components: dict[str, Any] = {}
    error_ref = _schema(ErrorResponse, components)
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        op: Operation | None = getattr(app.view_functions[rule.endpoint], "operation", None)
        if op is None:
            continue
        path = _PARAM.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            entry: dict[str, Any] = {
                "operationId": rule.endpoint.replace(".", "_"),
                "summary": op.summary,
                "parameters": [
                    {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                    for p in _PARAM.findall(rule.rule)
                ],
                "responses": {},
            }
            if op.query is not None:
                entry["parameters"] += _query_params(op.query)
            content: dict[str, Any] = {}
            if op.body is not None:
                content["application/json"] = {"schema": _schema(op.body, components)}
                if op.yaml_body:
                    content["application/yaml"] = {"schema": _schema(op.body, components)}
            if op.form:
                content["multipart/form-data"] = _multipart(op)
            if content:
                entry["requestBody"] = {"required": True, "content": content}
            if op.tag_filters:
                entry["parameters"] += [
                    {
                        "name": name,
                        "in": "query",
                        "required": False,
                        "schema": {"type": "array", "items": {"type": "string", "minLength": 1}},
                        "style": "form",
                        "explode": True,
                        "description": f"Taxonomy dimension {name!r}: images tagged with any "
                        "of the given labels (repeat, or a|b).",
                    }
                    for name in dimensions
                ]
            if op.response is not None:
                content = {"application/json": {"schema": _schema(op.response, components)}}
                for media, model in op.also_returns:
                    content[media] = {"schema": _schema(model, components)}
            else:
                content = {
                    op.binary or "application/octet-stream": {
                        "schema": {"type": "string", "format": "binary"}
                    }
                }
            entry["responses"][str(op.status)] = {"description": "success", "content": content}
            for status in sorted(_errors(op, path)):
                entry["responses"][str(status)] = {
                    "description": "error",
                    "content": {"application/json": {"schema": error_ref}},
                }
            if op.scope is not None:
                entry["security"] = [{"apiKey": []}]
                entry["description"] = f"Requires the `{op.scope.value}` scope (admin implies all)."
            paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sightline API", "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
