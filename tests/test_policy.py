"""Policy lives in services: every entry point leaves the same audit record, and no route
shows a non-admin a quarantined image or moderation internals."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from demo.synth import Product
from services.audit import AuditEvent, SqliteAuditLog
from services.auth.principal import Scope
from services.ids import point_id
from services.ingest.intake import IngestItem
from services.moderation.review import Decision
from services.payload import SYSTEM_FIELDS
from services.tagging.taxonomy import parse_taxonomy
from tests.api_fixtures import auth, runtime_of, settle
from tests.conftest import ADMIN, png_bytes
from tests.test_admin import csrf, login
from tests.test_cli import run
from tests.test_moderation import flag_file, jpeg, near_duplicate, photo, upload

TAXONOMY = "dimensions: [{name: colour, labels: [red, blue, green]}]"
INTERNAL_KEYS = {"moderation", "moderation_status", "phash", "reviewed_by", "review_reason"}


def _events(data_dir: Path, action: str) -> list[AuditEvent]:
    return [e for e in SqliteAuditLog(data_dir / "audit.sqlite").list(500) if e.action == action]


def _same_record(event: AuditEvent) -> tuple[Any, ...]:
    """What must not depend on the entry point: action, target, reason, details (the job
    that carried it out differs by construction)."""
    details = {k: v for k, v in event.details.items() if k != "job"}
    return (event.action, event.target, event.reason, json.dumps(details, sort_keys=True))


def test_same_change_leaves_the_same_audit_record_from_api_dashboard_and_cli(
    app: Flask, client: FlaskClient, tokens: dict[str, str], tmp_path: Path, tiny_model_dir: Path
) -> None:
    rt = runtime_of(app)
    data_dir = rt.settings.data_dir
    ids = [
        r.image_id
        for r in rt.ingestor.ingest(
            ADMIN, [IngestItem(png_bytes(i), f"{i}.png") for i in range(3)]
        ).results
    ]
    admin = auth(tokens["admin"])

    # Through the API.
    r = client.put("/api/v1/taxonomy?retag=false", json=parse_taxonomy(TAXONOMY).model_dump())
    assert r.status_code == 401
    r = client.put(
        "/api/v1/taxonomy?retag=false",
        data=TAXONOMY,
        headers={**admin, "Content-Type": "application/yaml"},
    )
    assert r.status_code == 200, r.json
    assert client.delete(f"/api/v1/images/{ids[0]}", headers=admin).status_code == 202
    settle(app)

    # Through the dashboard.
    dash = app.test_client()
    login(dash, app)
    token = csrf(dash, "/admin/taxonomy")
    r = dash.post("/admin/taxonomy", data={"yaml": TAXONOMY, "action": "save", "csrf_token": token})
    assert r.status_code == 302
    r = dash.post(f"/admin/images/{ids[1]}/delete", data={"csrf_token": token})
    assert r.status_code == 200 and "cannot be undone" in r.get_data(as_text=True)  # asked
    r = dash.post(f"/admin/images/{ids[1]}/delete", data={"csrf_token": token, "confirmed": "1"})
    assert r.status_code == 302
    settle(app)
    rt.close()  # the CLI opens the embedded index next

    # Through the CLI (a separate process over the same data).
    env = {
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "SIGHTLINE_MODEL": str(tiny_model_dir),
        "SIGHTLINE_DATA_DIR": str(data_dir),
    }
    (tmp_path / "taxonomy.yaml").write_text(TAXONOMY)
    run(env, "taxonomy", "load", str(tmp_path / "taxonomy.yaml"), "--no-retag")
    run(env, "delete", ids[2])

    replaced = _events(data_dir, "taxonomy.replace")
    deleted = _events(data_dir, "image.delete")
    assert len(replaced) == 3 and len(deleted) == 3
    assert len({_same_record(e) for e in replaced}) == 1  # one version, same details
    assert {e.target: e.details["filename"] for e in deleted} == {
        image_id: f"{n}.png" for n, image_id in enumerate(ids)
    }
    assert all(set(e.details) == {"job", "filename"} and e.reason is None for e in deleted)
    for events in (replaced, deleted):
        actors = [e.actor for e in reversed(events)]  # oldest first: API, dashboard, CLI
        assert actors[0] == "key:admin-key" and actors[1] == "user:ops"
        assert actors[2].startswith("cli:")


def test_every_system_field_is_declared(runtime: Any) -> None:
    """The visibility rule is an allow-list over declared system fields; an undeclared
    field written by ingest, tagging or moderation would pass as user metadata."""
    runtime.tagging.replace(ADMIN, parse_taxonomy(TAXONOMY), retag=False)
    runtime.moderation.add_image(ADMIN, png_bytes(5), "c", threshold=0.0, scan=False)
    item = IngestItem(png_bytes(5), "a.png", {"title": "t"})
    (result,) = runtime.ingestor.ingest(ADMIN, [item]).results
    payload = runtime.search.record(ADMIN, result.image_id).payload
    assert payload["moderation_status"] == "quarantined" and payload["tags"]
    assert set(payload) - {"title"} <= SYSTEM_FIELDS


def test_filter_warnings_name_no_internal_field_to_a_searcher(runtime: Any) -> None:
    """A typo's suggestion and the listed fields come from what the caller may see: a
    search-only key never learns moderation's field names from a warning."""
    from services.filters import parse_filters
    from tests.conftest import SEARCHER

    runtime.moderation.add_image(ADMIN, png_bytes(6), "c", threshold=0.0, scan=False)
    runtime.ingestor.ingest(ADMIN, [IngestItem(png_bytes(6), "a.png", {"colour": "red"})])
    runtime.ingestor.ingest(ADMIN, [IngestItem(png_bytes(7), "b.png", {"colour": "blue"})])
    for expr in ("moderation_statu=x", "moderation.matche=x", "phas=1", "colr=red"):
        [warning] = runtime.search.unknown_fields(SEARCHER, parse_filters([expr]))
        told = warning.split(";", 1)[1]  # past the echo of the caller's own field name
        assert "moderation" not in told and "phash" not in told, warning
    [typo] = runtime.search.unknown_fields(SEARCHER, parse_filters(["colr=red"]))
    assert "did you mean 'colour'?" in typo
    [mod] = runtime.search.unknown_fields(ADMIN, parse_filters(["moderation_statu=x"]))
    assert "did you mean 'moderation_status'?" in mod  # a moderator may be told


# -- the authorisation matrix --------------------------------------------------------------


@dataclass
class Catalog:
    """Ids the matrix requests refer to; spares are consumed by destructive requests."""

    visible: list[str]
    hidden: list[str]  # quarantined
    approved: str  # quarantined, then approved by a reviewer with a reason
    entries: list[str]
    job: str
    hidden_bytes: bytes
    consumed: set[str] = field(default_factory=set)

    def take(self, pool: list[str]) -> str:
        """A spare id from ``pool`` (the first one is never consumed)."""
        spare = next(i for i in pool[1:] if i not in self.consumed)
        self.consumed.add(spare)
        return spare


@pytest.fixture
def catalog(app: Flask, client: FlaskClient, tokens: dict[str, str]) -> Iterator[Catalog]:
    rt = runtime_of(app)
    rt.tagging.replace(ADMIN, parse_taxonomy(TAXONOMY), retag=False)
    admin, ingest = tokens["admin"], tokens["ingest"]
    bads = [photo(40 + i) for i in range(9)]
    entries = [
        flag_file(client, admin, jpeg(b, 95), threshold="0.999")["entry"]["id"] for b in bads
    ]
    hidden = [upload(client, ingest, near_duplicate(b), f"dup{i}.jpg") for i, b in enumerate(bads)]
    others = [
        Product("shoe", "blue", "plain"),
        Product("hat", "green", "dotted"),
        Product("bag", "yellow", "checked"),
        Product("trousers", "black", "plain"),
        Product("jacket", "white", "checked"),
        Product("t-shirt", "blue", "dotted"),
    ]
    visible = [
        upload(client, ingest, jpeg(photo(60 + i, p)), f"ok{i}.jpg") for i, p in enumerate(others)
    ]
    settle(app)
    for image_id in visible:
        assert rt.search.record(ADMIN, image_id).payload["moderation_status"] == "clear"
    approved = hidden.pop()
    rt.moderation.decide(ADMIN, [approved], Decision.APPROVE, "fine art, keep it")
    for image_id in hidden:
        assert rt.search.record(ADMIN, image_id).payload["moderation_status"] == "quarantined"
    job = rt.uploads.ingest_stored(ADMIN, [visible[0]])
    settle(app)
    data, _ = rt.search.original(ADMIN, hidden[0])
    yield Catalog(visible, hidden, approved, entries, job, data)


Request = tuple[str, dict[str, Any]]  # path, keyword arguments of FlaskClient.open
Recipe = Callable[[Catalog, str | None], Request]
MISSING = "0" * 64


def _json(path: str, body: dict[str, Any]) -> Request:
    return path, {"json": body}


def _file(path: str, name: str, data: bytes, **form: str) -> Request:
    return path, {
        "data": {name: (io.BytesIO(data), "x.png"), **form},
        "content_type": "multipart/form-data",
    }


# Every (method, rule) of the API. A recipe takes the catalog and, for routes that act on
# one image, the image id to aim at; image routes are tried on a visible, a quarantined and
# a missing image.
RECIPES: dict[tuple[str, str], tuple[bool, Recipe]] = {
    ("POST", "/api/v1/images"): (
        False,
        lambda c, _: _file("/api/v1/images", "files", png_bytes(900)),
    ),
    ("POST", "/api/v1/images/urls"): (
        False,
        lambda c, _: _json("/api/v1/images/urls", {"urls": ["http://127.0.0.1:9/x.jpg"]}),
    ),
    ("GET", "/api/v1/jobs/<job_id>"): (False, lambda c, _: (f"/api/v1/jobs/{c.job}", {})),
    ("POST", "/api/v1/jobs/<job_id>/retry"): (
        False,
        lambda c, _: (f"/api/v1/jobs/{c.job}/retry", {}),
    ),
    ("GET", "/api/v1/images/<image_id>"): (True, lambda c, i: (f"/api/v1/images/{i}", {})),
    ("GET", "/api/v1/images/<image_id>/file"): (
        True,
        lambda c, i: (f"/api/v1/images/{i}/file", {}),
    ),
    ("GET", "/api/v1/images/<image_id>/thumbnail"): (
        True,
        lambda c, i: (f"/api/v1/images/{i}/thumbnail", {}),
    ),
    ("DELETE", "/api/v1/images/<image_id>"): (True, lambda c, i: (f"/api/v1/images/{i}", {})),
    ("GET", "/api/v1/search"): (False, lambda c, _: ("/api/v1/search?q=a+photo&k=50", {})),
    ("POST", "/api/v1/search/image"): (
        False,
        lambda c, _: _file("/api/v1/search/image?k=50", "file", c.hidden_bytes),
    ),
    ("GET", "/api/v1/images/<image_id>/similar"): (
        True,
        lambda c, i: (f"/api/v1/images/{i}/similar?k=50", {}),
    ),
    ("POST", "/api/v1/recommend"): (
        True,
        lambda c, i: _json("/api/v1/recommend", {"positive": [i], "k": 50}),
    ),
    ("POST", "/api/v1/tag"): (
        True,
        lambda c, i: _json("/api/v1/tag", {"image_id": i}),
    ),
    ("GET", "/api/v1/info"): (False, lambda c, _: ("/api/v1/info", {})),
    ("GET", "/api/v1/taxonomy"): (False, lambda c, _: ("/api/v1/taxonomy", {})),
    ("PUT", "/api/v1/taxonomy"): (
        False,
        lambda c, _: _json(
            "/api/v1/taxonomy?retag=false", parse_taxonomy(TAXONOMY).model_dump(mode="json")
        ),
    ),
    ("POST", "/api/v1/retag"): (False, lambda c, _: ("/api/v1/retag", {})),
    ("POST", "/api/v1/flagged"): (
        False,
        lambda c, _: _json(
            "/api/v1/flagged", {"text": "a photo of a weapon", "category": "w", "scan": False}
        ),
    ),
    ("GET", "/api/v1/flagged"): (False, lambda c, _: ("/api/v1/flagged", {})),
    ("PATCH", "/api/v1/flagged/<entry_id>"): (
        False,
        lambda c, _: _json(f"/api/v1/flagged/{c.entries[0]}", {"note": "edited"}),
    ),
    ("DELETE", "/api/v1/flagged/<entry_id>"): (
        False,
        lambda c, _: (f"/api/v1/flagged/{c.take(c.entries)}", {}),
    ),
    ("POST", "/api/v1/flagged/scan"): (False, lambda c, _: ("/api/v1/flagged/scan", {})),
    ("POST", "/api/v1/moderate"): (
        True,
        lambda c, i: _json("/api/v1/moderate", {"image_id": i}),
    ),
    ("GET", "/api/v1/moderation/queue"): (False, lambda c, _: ("/api/v1/moderation/queue", {})),
    ("POST", "/api/v1/moderation/decisions"): (
        False,
        lambda c, _: _json(
            "/api/v1/moderation/decisions",
            {"image_ids": [c.take(c.hidden)], "action": "approve"},
        ),
    ),
    ("GET", "/api/v1/moderation/audit"): (False, lambda c, _: ("/api/v1/moderation/audit", {})),
    ("GET", "/api/v1/openapi.json"): (False, lambda c, _: ("/api/v1/openapi.json", {})),
    ("GET", "/healthz"): (False, lambda c, _: ("/healthz", {})),
    ("GET", "/readyz"): (False, lambda c, _: ("/readyz", {})),
    ("GET", "/metrics"): (False, lambda c, _: ("/metrics", {})),
    ("GET", "/api/docs"): (False, lambda c, _: ("/api/docs", {})),
    ("GET", "/api/docs/"): (False, lambda c, _: ("/api/docs/", {})),
    ("GET", "/api/docs/assets/<name>"): (
        False,
        lambda c, _: ("/api/docs/assets/swagger-ui.css", {}),
    ),
}


def _routes(app: Flask) -> dict[tuple[str, str], Scope | None]:
    """(method, rule) -> the scope its operation needs, for every JSON API route."""
    out = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/admin") or rule.endpoint == "static":
            continue
        operation = getattr(app.view_functions[rule.endpoint], "operation", None)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out[(method, rule.rule)] = operation.scope if operation is not None else None
    return out


def _walk(value: Any) -> Iterator[str]:
    """Every key of a JSON document, at any depth."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


SEES_MODERATION = (Scope.MODERATE, Scope.ADMIN)


def _expected(scope: Scope | None, key: Scope | None, target: str) -> set[int]:
    if scope is None:
        return {200}
    if key is None:
        return {401}
    if not (key is scope or key is Scope.ADMIN):
        return {403}
    if target == "missing" or (target == "hidden" and key not in SEES_MODERATION):
        return {404}
    return {200, 201, 202}


def test_authorisation_matrix_hides_quarantined_images_and_internals(
    app: Flask, client: FlaskClient, tokens: dict[str, str], catalog: Catalog
) -> None:
    routes = _routes(app)
    assert set(routes) == set(RECIPES), "every route needs a recipe in RECIPES"
    hidden = {*catalog.hidden, *(point_id(i) for i in catalog.hidden)}
    secrets = ["fine art, keep it", *catalog.entries]
    # Admin last: its deletions and decisions must not take what the others are shown.
    keys: list[Scope | None] = [None, Scope.SEARCH, Scope.INGEST, Scope.MODERATE, Scope.ADMIN]
    checked = 0
    for key in keys:
        headers = auth(tokens[key.value]) if key is not None else {}
        for (method, rule), scope in sorted(routes.items()):
            per_image, recipe = RECIPES[(method, rule)]
            targets = (
                {
                    "visible": catalog.visible[0],
                    "hidden": catalog.hidden[0],
                    "missing": MISSING,
                }
                if per_image
                else {"none": None}
            )
            for target, image_id in targets.items():
                if method == "DELETE" and target != "missing" and image_id is not None:
                    pool = catalog.visible if target == "visible" else catalog.hidden
                    image_id = catalog.take(pool)
                refused = key is not Scope.ADMIN and key is not scope
                if refused and method != "GET" and scope in SEES_MODERATION:
                    # Refused before any state is read: no need to spend a spare.
                    path, kwargs = f"{rule.replace('<entry_id>', catalog.entries[0])}", {}
                else:
                    path, kwargs = recipe(catalog, image_id)
                r = client.open(path, method=method, headers=headers, **kwargs)
                where = f"{method} {path} as {key} on {target}"
                assert r.status_code in _expected(scope, key, target), (where, r.get_data()[:300])
                checked += 1
                if key in SEES_MODERATION:
                    continue
                body = r.get_data(as_text=True) if r.mimetype.endswith("json") else ""
                asked = {image_id, point_id(image_id)} if image_id else set()
                assert not any(h in body for h in hidden - asked), where  # errors echo the ask
                assert not any(s in body for s in secrets), where
                if body:
                    assert not (set(_walk(json.loads(body))) & INTERNAL_KEYS), where
        settle(app)
    assert checked > 100
