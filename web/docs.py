"""``/api/docs``: Swagger UI over the OpenAPI document, from the files of the
``flask-openapi3-swagger`` package (Swagger UI 5, which reads OpenAPI 3.1; no CDN).

The page is static HTML and its start-up is a script file of ours, so it runs under the
same strict CSP as the dashboard (``script-src 'self'; style-src 'self'``). The
online validator badge is off: it would send the document to swagger.io.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import mimetypes
from pathlib import Path

from flask import Blueprint, Response, render_template, request, url_for
from flask.typing import ResponseReturnValue

bp = Blueprint("docs", __name__, template_folder="templates")
ASSETS = Path(str(importlib.resources.files("flask_openapi3_swagger") / "templates" / "swagger"))
SERVED = {"swagger-ui.css": "css", "swagger-ui-bundle.js": "js"}


@bp.get("/api/docs")
@bp.get("/api/docs/")
def docs() -> ResponseReturnValue:
    """The interactive API reference."""
    return render_template(
        "docs/swagger.html",
        spec=url_for("health.openapi"),
        css=url_for("docs.asset", name="swagger-ui.css"),
        bundle=url_for("docs.asset", name="swagger-ui-bundle.js"),
        init=url_for("admin.static", filename="api-docs.js"),
        icon=url_for("admin.static", filename="favicon.svg"),
    )


@functools.cache
def _read(name: str) -> tuple[bytes, str]:
    data = (ASSETS / SERVED[name] / name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:16]


@bp.get("/api/docs/assets/<name>")
def asset(name: str) -> ResponseReturnValue:
    """One of Swagger UI's files (only those the page uses), cached by version."""
    if name not in SERVED:
        return Response("not found", 404, mimetype="text/plain")
    data, tag = _read(name)
    mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    response = Response(data, mimetype=mimetype, headers={"Cache-Control": "public, max-age=86400"})
    response.set_etag(tag)
    return response.make_conditional(request)
