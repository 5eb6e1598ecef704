"""The HTTP API through Flask's test client over the real runtime (tiny model, real index)."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from PIL import Image
from pydantic import SecretStr
from sentence_transformers import SentenceTransformer

from services.auth.apikeys import Scope
from services.encoder import Encoder
from services.errors import ConfigError
from services.images import decode_image
from services.runtime import build_runtime
from services.settings import ImageLimits, Settings
from services.tagging.taxonomy import parse_taxonomy
from tests.api_fixtures import auth, make_app, runtime_of, settle
from tests.brute import top_k
from tests.conftest import ADMIN, jpeg_bytes, png_bytes, set_taxonomy
from web import create_app
from workers.dispatch import dispatcher_for


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> SentenceTransformer:
    return SentenceTransformer(str(tiny_model_dir), device="cpu")


def _vectors(reference: SentenceTransformer) -> np.ndarray:
    imgs = [decode_image(png_bytes(i), ImageLimits()).image for i in range(12)]
    return np.asarray(reference.encode(imgs, normalize_embeddings=True))


def test_auth_and_scopes(app: Flask, client: FlaskClient, tokens: dict[str, str]) -> None:
    assert client.get("/api/v1/search?q=x").status_code == 401
    r = client.get("/api/v1/search?q=x", headers=auth("sl_nope_nope"))
    assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized"
    r = client.get("/api/v1/jobs/x", headers=auth(tokens["search"]))
    assert r.status_code == 403 and "ingest" in r.json["error"]["message"]
    assert (
        client.get("/api/v1/search?q=x", headers={"X-API-Key": tokens["search"]}).status_code == 200
    )
    assert (
        client.get("/api/v1/search?q=x", headers=auth(tokens["admin"])).status_code == 200
    )  # admin implies all
    keys = runtime_of(app).access.keys
    key_id = tokens["search"].split("_")[1]
    keys.revoke(key_id)
    assert client.get("/api/v1/search?q=x", headers=auth(tokens["search"])).status_code == 401
    assert tokens["ingest"] not in (
        Path(runtime_of(app).settings.data_dir) / "keys.db"
    ).read_bytes().decode(errors="ignore")


def test_upload_mixed_good_and_bad(app: Flask, client: FlaskClient, tokens: dict[str, str]) -> None:
    files = [
        (io.BytesIO(png_bytes(1)), "good.png"),
        (io.BytesIO(b"not an image"), "bad.jpg"),
        (io.BytesIO(jpeg_bytes(2)), "good.jpg"),
    ]
    r = client.post(
        "/api/v1/images",
        data={"files": files},
        headers=auth(tokens["ingest"]),
        content_type="multipart/form-data",
    )
    assert r.status_code == 202
    assert [a["filename"] for a in r.json["accepted"]] == ["good.png", "good.jpg"]
    assert r.json["refused"] == [
        {
            "filename": "bad.jpg",
            "error": "invalid_image",
            "message": "not a recognised image (corrupt, or not an image at all)",
        }
    ]
    settle(app)
    assert (
        client.get(f"/api/v1/jobs/{r.json['job_id']}", headers=auth(tokens["ingest"])).json[
            "counts"
        ]["done"]
        == 2
    )


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"plain text", 422, "invalid_image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415, "unsupported_format"),
    ],
)
def test_upload_refused_entirely_stores_nothing(
    app: Flask, client: FlaskClient, tokens: dict[str, str], data: bytes, status: int, code: str
) -> None:
    r = client.post(
        "/api/v1/images",
        data={"files": [(io.BytesIO(data), "x.jpg")]},
        headers=auth(tokens["ingest"]),
        content_type="multipart/form-data",
    )
    assert (
        r.status_code == 422 and r.json["error"]["code"] == "invalid_image"
    )  # no acceptable image
    assert "x.jpg" in r.json["error"]["message"]
    assert list(runtime_of(app).store.ids()) == []
    # The same bytes as a query image get their own specific status.
    r = client.post(
        "/api/v1/search/image",
        data={"file": (io.BytesIO(data), "q.jpg")},
        headers=auth(tokens["search"]),
        content_type="multipart/form-data",
    )
    assert r.status_code == status and r.json["error"]["code"] == code


def test_upload_validation(client: FlaskClient, tokens: dict[str, str]) -> None:
    h = auth(tokens["ingest"])
    r = client.post("/api/v1/images", data={}, headers=h, content_type="multipart/form-data")
    assert r.status_code == 422 and r.json["error"]["fields"][0]["field"] == "files"
    r = client.post(
        "/api/v1/images",
        data={"files": [(io.BytesIO(png_bytes(1)), "a.png")], "metadata": "{oops"},
        headers=h,
        content_type="multipart/form-data",
    )
    assert r.status_code == 422 and r.json["error"]["fields"][0]["field"] == "metadata"
    r = client.post(
        "/api/v1/images",
        data={"files": [(io.BytesIO(png_bytes(1)), "a.png")], "metadata": '{"image_id": "x"}'},
        headers=h,
        content_type="multipart/form-data",
    )
    assert r.status_code == 422 and "reserved" in r.json["error"]["message"]
    r = client.post(
        "/api/v1/images",
        data={
            "files": [(io.BytesIO(png_bytes(1)), "a.png")],
            "metadata": '{"flag": "\\u0000sightline:true"}',
        },
        headers=h,
        content_type="multipart/form-data",
    )
    assert r.status_code == 422 and "NUL" in r.json["error"]["message"]


def test_request_too_large_is_413(settings: Settings, encoder: Encoder) -> None:
    settings.web.max_request_bytes = 4096
    app = make_app(settings, encoder)
    token = runtime_of(app).access.create_key(ADMIN, "k", [Scope.INGEST])[1]
    r = app.test_client().post(
        "/api/v1/images",
        data={"files": [(io.BytesIO(b"\0" * 10000), "big.png")]},
        headers=auth(token),
        content_type="multipart/form-data",
    )
    assert r.status_code == 413 and r.json["error"]["code"] == "request_entity_too_large"
    runtime_of(app).close()


def test_search_matches_brute_force(
    client: FlaskClient, tokens: dict[str, str], catalog: list[str], reference: SentenceTransformer
) -> None:
    vectors = _vectors(reference)
    q = reference.encode(["red dress"], normalize_embeddings=True)[0]
    r = client.get("/api/v1/search?q=red+dress&k=5", headers=auth(tokens["search"]))
    assert r.status_code == 200
    assert [h["image_id"] for h in r.json["results"]] == [
        w[0] for w in top_k(q, catalog, vectors, 5)
    ]
    assert r.json["results"][0]["payload"]["brand"] == "acme"
    r = client.get(
        "/api/v1/search?q=red+dress&k=5&where=price>=20&where=price<50",
        headers=auth(tokens["search"]),
    )
    want = top_k(q, catalog, vectors, 5, keep=lambda i: 20 <= i * 5 < 50)
    assert [h["image_id"] for h in r.json["results"]] == [w[0] for w in want]
    r = client.get(
        "/api/v1/search?q=red+dress&k=3&one_per=product_id", headers=auth(tokens["search"])
    )
    assert len({h["payload"]["product_id"] for h in r.json["results"]}) == 3


def test_search_validation_names_the_field(client: FlaskClient, tokens: dict[str, str]) -> None:
    h = auth(tokens["search"])
    r = client.get("/api/v1/search?q=x&k=0", headers=h)
    assert r.status_code == 422 and r.json["error"]["fields"][0]["field"] == "k"
    r = client.get("/api/v1/search", headers=h)
    assert r.status_code == 422 and r.json["error"]["fields"][0]["field"] == "q"
    r = client.get("/api/v1/search?q=x&colour=red", headers=h)
    assert r.status_code == 422 and "colour" in r.json["error"]["message"]
    r = client.get("/api/v1/search?q=x&where=price>=cheap", headers=h)
    assert r.status_code == 422 and r.json["error"]["code"] == "invalid_filter"
    assert r.json["error"]["fields"][0]["field"] == "where"


def test_similar_by_image_and_recommend(
    client: FlaskClient, tokens: dict[str, str], catalog: list[str], reference: SentenceTransformer
) -> None:
    vectors = _vectors(reference)
    h = auth(tokens["search"])
    r = client.get(f"/api/v1/images/{catalog[4]}/similar?k=4", headers=h)
    assert [x["image_id"] for x in r.json["results"]] == [
        w[0] for w in top_k(vectors[4], catalog, vectors, 4, lambda i: i != 4)
    ]
    r = client.post(
        "/api/v1/search/image?k=3",
        data={"file": (io.BytesIO(png_bytes(4)), "q.png")},
        headers=h,
        content_type="multipart/form-data",
    )
    assert [x["image_id"] for x in r.json["results"]] == [
        w[0] for w in top_k(vectors[4], catalog, vectors, 3, lambda i: i != 4)
    ]
    r = client.post(
        "/api/v1/recommend",
        json={"positive": [catalog[0]], "negative": [catalog[1]], "k": 3},
        headers=h,
    )
    assert r.status_code == 200 and len(r.json["results"]) == 3
    assert not {catalog[0], catalog[1]} & {x["image_id"] for x in r.json["results"]}
    r = client.post("/api/v1/recommend", json={"positive": [], "k": 3}, headers=h)
    assert r.status_code == 422 and r.json["error"]["fields"][0]["field"] == "positive"
    assert client.get(f"/api/v1/images/{'0' * 64}/similar", headers=h).status_code == 404


def test_image_metadata_file_thumbnail_delete(
    app: Flask, client: FlaskClient, tokens: dict[str, str], catalog: list[str]
) -> None:
    h = auth(tokens["search"])
    r = client.get(f"/api/v1/images/{catalog[2]}", headers=h)
    assert r.json["payload"]["title"] == "item 2" and r.json["payload"]["filename"] == "img2.png"
    r = client.get(f"/api/v1/images/{catalog[2]}/file", headers=h)
    assert r.data == png_bytes(2) and r.mimetype == "image/png"
    r = client.get(f"/api/v1/images/{catalog[2]}/thumbnail?size=64", headers=h)
    thumb = Image.open(io.BytesIO(r.data))
    assert thumb.format == "JPEG" and max(thumb.size) <= 64
    assert (
        client.get(f"/api/v1/images/{catalog[2]}/thumbnail?size=77", headers=h).status_code == 404
    )
    assert client.delete(f"/api/v1/images/{catalog[2]}", headers=h).status_code == 403
    r = client.delete(f"/api/v1/images/{catalog[2]}", headers=auth(tokens["ingest"]))
    assert r.status_code == 202
    settle(app)
    assert client.get(f"/api/v1/images/{catalog[2]}", headers=h).status_code == 404
    assert client.get("/api/v1/images/not-an-id", headers=h).status_code == 404


def test_quarantined_images_hidden_from_non_admin(
    app: Flask, client: FlaskClient, tokens: dict[str, str], catalog: list[str]
) -> None:
    runtime = runtime_of(app)
    hidden = catalog[5]
    runtime.index.set_payload(
        runtime.collections.images,
        [runtime.search.record(ADMIN, hidden).id],
        {"moderation_status": "quarantined"},
    )
    for token, visible in ((tokens["search"], False), (tokens["admin"], True)):
        h = auth(token)
        ids = [
            x["image_id"] for x in client.get("/api/v1/search?q=x&k=12", headers=h).json["results"]
        ]
        assert (hidden in ids) is visible
        ids = [
            x["image_id"]
            for x in client.get(f"/api/v1/images/{catalog[0]}/similar?k=11", headers=h).json[
                "results"
            ]
        ]
        assert (hidden in ids) is visible
        assert client.get(f"/api/v1/images/{hidden}", headers=h).status_code == (
            200 if visible else 404
        )


def test_url_ingest_endpoint(client: FlaskClient, tokens: dict[str, str]) -> None:
    h = auth(tokens["ingest"])
    r = client.post("/api/v1/images/urls", json={"urls": ["http://127.0.0.1:9/x.png"]}, headers=h)
    assert r.status_code == 202 and r.json["job_id"]
    r = client.post("/api/v1/images/urls", json={"urls": ["ftp://x/y.png"]}, headers=h)
    assert r.status_code == 422
    r = client.post("/api/v1/images/urls", json={"urls": []}, headers=h)
    assert r.status_code == 422 and r.json["error"]["fields"][0]["field"] == "urls"
    assert client.get("/api/v1/jobs/nope", headers=h).status_code == 404


def test_rate_limit_answers_429_with_retry_after(settings: Settings, encoder: Encoder) -> None:
    settings.web.rate_limit = "3/minute"
    app = make_app(settings, encoder)
    token = runtime_of(app).access.create_key(ADMIN, "k", [Scope.SEARCH])[1]
    c = app.test_client()
    statuses = [c.get("/api/v1/search?q=x", headers=auth(token)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    r = c.get("/api/v1/search?q=x", headers=auth(token))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert r.json["error"]["code"] == "too_many_requests"
    assert c.get("/healthz").status_code == 200  # health checks are not limited
    runtime_of(app).close()


def test_security_headers(client: FlaskClient) -> None:
    r = client.get("/healthz")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in r.headers
    assert (
        "Strict-Transport-Security" in client.get("/healthz", base_url="https://localhost").headers
    )


def test_openapi_is_valid_and_covers_every_route(app: Flask, client: FlaskClient) -> None:
    doc = client.get("/api/v1/openapi.json").json
    validate(doc)
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    routes = {
        (rule.rule.replace("<", "{").replace(">", "}"), m.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/") and rule.endpoint != "health.openapi"
        for m in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    assert routes and routes == documented
    search = doc["paths"]["/api/v1/search"]["get"]
    assert {p["name"] for p in search["parameters"]} == {
        "q",
        "k",
        "offset",
        "where",
        "one_per",
        "fields",
    }
    assert "422" in search["responses"] and "401" in search["responses"]
    # The current taxonomy's dimensions are documented as filter parameters.
    set_taxonomy(runtime_of(app), parse_taxonomy("dimensions: [{name: colour, labels: [a, b]}]"))
    doc = client.get("/api/v1/openapi.json").json
    names = {p["name"] for p in doc["paths"]["/api/v1/search"]["get"]["parameters"]}
    assert "colour" in names


def test_health_ready_metrics(
    client: FlaskClient, tokens: dict[str, str], catalog: list[str]
) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json["checks"] == {"model": True, "index": True, "storage": True}
    client.get("/api/v1/search?q=x", headers=auth(tokens["search"]))
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        'sightline_http_requests_total{method="GET",route="/api/v1/search",status="200"} 1.0'
        in text
    )
    assert 'sightline_http_request_seconds_count{method="GET",route="/api/v1/search"} 1.0' in text
    assert 'sightline_embedding_seconds_count{modality="text"}' in text
    assert 'sightline_query_cache_total{result="miss"} 1.0' in text
    # The same query, spaced differently, is answered from the text-query cache.
    embedded = 'sightline_embedded_items_total{modality="text"}'
    before = next(line for line in text.splitlines() if line.startswith(embedded))
    client.get("/api/v1/search?q=%20x%20%20", headers=auth(tokens["search"]))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'sightline_query_cache_total{result="hit"} 1.0' in text
    assert 'sightline_query_cache_total{result="miss"} 1.0' in text
    assert before in text.splitlines()  # nothing more was embedded
    assert 'sightline_index_points{collection="images"} 12.0' in text


def test_embedded_session_secret_survives_a_restart(
    tmp_path: Path, tiny_model_dir: Path, encoder: Encoder
) -> None:
    """No configured key: one is made under DATA_DIR (owner-only) and reused, so a session
    signed before a restart is still valid after it."""
    settings = Settings(data_dir=tmp_path / "d", model=str(tiny_model_dir))
    first = create_app(settings, build_runtime(settings, dispatcher_for(settings), encoder=encoder))
    signer = first.session_interface.get_signing_serializer(first)
    assert signer is not None
    cookie = signer.dumps({"user": "ada"})
    runtime_of(first).close()
    second = create_app(
        settings, build_runtime(settings, dispatcher_for(settings), encoder=encoder)
    )
    again = second.session_interface.get_signing_serializer(second)
    assert again is not None and again.loads(cookie) == {"user": "ada"}
    path = settings.data_dir / "session.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text()) == 64
    runtime_of(second).close()


def test_not_ready_when_broker_down_and_secret_required(
    tmp_path: Path, tiny_model_dir: Path, encoder: Encoder
) -> None:
    from tests.servers import free_port

    settings = Settings(data_dir=tmp_path / "d", model=str(tiny_model_dir))
    settings.queue.broker_url = SecretStr(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ConfigError, match="dispatcher"):
        build_runtime(settings, encoder=encoder)  # a broker needs its (Celery) dispatcher
    with pytest.raises(ConfigError, match="SIGHTLINE_WEB__SECRET_KEY"):
        create_app(settings, build_runtime(settings, dispatcher_for(settings), encoder=encoder))
    settings.web.secret_key = SecretStr("s3cret-for-tests")
    settings.web.rate_limit_storage = "memory://"
    app = create_app(settings, build_runtime(settings, dispatcher_for(settings), encoder=encoder))
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and r.json["checks"]["broker"].startswith("unreachable")
