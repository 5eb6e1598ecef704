"""OpenAPI 3.1 document built from the views' own ``Operation`` schemas."""

from __future__ import annotations

import re
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


def build_openapi(app: Flask, version: str) -> dict[str, Any]:
    """Describe every view that carries an ``Operation``."""
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
                props = {
                    name: (
                        {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": d,
                        }
                        if name == "files"
                        else {"type": "string", "format": "binary", "description": d}
                        if name == "file"
                        else {"type": "string", "description": d}
                    )
                    for name, d in op.form.items()
                }
                content["multipart/form-data"] = {"schema": {"type": "object", "properties": props}}
            if content:
                entry["requestBody"] = {"required": True, "content": content}
            if op.tag_filters:
                entry["parameters"].append(
                    {
                        "name": "filters",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                        "style": "form",
                        "explode": True,
                        "description": "Taxonomy dimensions as filters on assigned tags, "
                        "e.g. colour=red or colour=red|blue.",
                    }
                )
            if op.response is not None:
                content = {"application/json": {"schema": _schema(op.response, components)}}
            else:
                content = {
                    op.binary or "application/octet-stream": {
                        "schema": {"type": "string", "format": "binary"}
                    }
                }
            entry["responses"][str(op.status)] = {"description": "success", "content": content}
            for status in op.errors:
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
