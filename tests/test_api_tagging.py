"""Tagging over HTTP: taxonomy load/export, /tag, auto-tags on ingest, tag filters, re-tag."""

from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from tests.api_fixtures import auth, settle
from tests.conftest import png_bytes

TAXONOMY_YAML = """
dimensions:
  - name: colour
    labels: [red, green, blue, black]
  - name: mood
    multi_label: true
    labels: [calm, loud]
"""


@pytest.fixture
def taxonomy(client: FlaskClient, tokens: dict[str, str]) -> str:
    r = client.put(
        "/api/v1/taxonomy?retag=false",
        data=TAXONOMY_YAML,
        headers={**auth(tokens["admin"]), "Content-Type": "application/yaml"},
    )
    assert r.status_code == 200, r.json
    assert r.json["retag_job_id"] is None
    return str(r.json["version"])


def test_taxonomy_replace_needs_admin_and_validates(
    client: FlaskClient, tokens: dict[str, str]
) -> None:
    body = {"dimensions": [{"name": "colour", "labels": ["red", "blue"]}]}
    r = client.put("/api/v1/taxonomy", json=body, headers=auth(tokens["ingest"]))
    assert r.status_code == 403
    r = client.put(
        "/api/v1/taxonomy",
        json={"dimensions": [{"name": "colour", "labels": ["red"]}]},
        headers=auth(tokens["admin"]),
    )
    assert r.status_code == 422 and "at least two labels" in r.json["error"]["message"]
    r = client.get("/api/v1/taxonomy", headers=auth(tokens["search"]))
    assert r.status_code == 404  # nothing was stored


def test_taxonomy_export_json_and_yaml(
    client: FlaskClient, tokens: dict[str, str], taxonomy: str
) -> None:
    r = client.get("/api/v1/taxonomy", headers=auth(tokens["search"]))
    assert r.status_code == 200 and r.json["version"] == taxonomy
    assert [d["name"] for d in r.json["taxonomy"]["dimensions"]] == ["colour", "mood"]
    r = client.get("/api/v1/taxonomy?format=yaml", headers=auth(tokens["search"]))
    assert r.mimetype == "application/yaml"
    doc = yaml.safe_load(r.get_data(as_text=True))
    assert doc["dimensions"][1]["multi_label"] is True


def test_ingest_writes_tags_and_search_filters_on_them(
    app: Flask, client: FlaskClient, tokens: dict[str, str], taxonomy: str, catalog: list[str]
) -> None:
    payloads = {
        i: client.get(f"/api/v1/images/{i}", headers=auth(tokens["search"])).json["payload"]
        for i in catalog
    }
    for payload in payloads.values():
        assert payload["taxonomy_version"] == taxonomy
        assert len(payload["tags"]["colour"]) == 1
        scores = payload["tag_scores"]["colour"]
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-3)  # all 4 labels kept
        assert payload["tags"]["colour"][0] == max(scores, key=scores.get)
    colour = payloads[catalog[0]]["tags"]["colour"][0]
    expected = {i for i, p in payloads.items() if p["tags"]["colour"] == [colour]}
    r = client.get(f"/api/v1/search?q=a+photo&k=50&colour={colour}", headers=auth(tokens["search"]))
    assert r.status_code == 200, r.json
    assert {h["image_id"] for h in r.json["results"]} == expected
    # Same filter in the generic syntax, and an unknown parameter is still refused.
    r = client.get(
        f"/api/v1/search?q=a+photo&k=50&where=tags.colour={colour}",
        headers=auth(tokens["search"]),
    )
    assert {h["image_id"] for h in r.json["results"]} == expected
    r = client.get("/api/v1/search?q=a&size=large", headers=auth(tokens["search"]))
    assert r.status_code == 422 and "size" in r.json["error"]["message"]


def test_tag_endpoint_upload_stored_and_adhoc(
    client: FlaskClient, tokens: dict[str, str], taxonomy: str, catalog: list[str]
) -> None:
    h = auth(tokens["search"])
    r = client.post(
        "/api/v1/tag",
        data={"file": (io.BytesIO(png_bytes(0)), "q.png")},
        headers=h,
        content_type="multipart/form-data",
    )
    assert r.status_code == 200, r.json
    dims = {d["name"]: d for d in r.json["dimensions"]}
    scores = [x["score"] for x in dims["colour"]["labels"]]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-5)
    assert len(dims["colour"]["labels"]) == 4 and len(dims["mood"]["labels"]) == 2
    # The stored copy of the same bytes gives the same answer.
    stored = client.post("/api/v1/tag", json={"image_id": catalog[0]}, headers=h).json
    assert stored["dimensions"][0]["assigned"] == dims["colour"]["assigned"]
    np.testing.assert_allclose(
        [x["score"] for x in stored["dimensions"][0]["labels"]], scores, atol=1e-4
    )
    # Ad-hoc labels, as the Hugging Face pipeline takes them.
    r = client.post(
        "/api/v1/tag",
        data={
            "file": (io.BytesIO(png_bytes(3)), "q.png"),
            "candidate_labels": "cat, dog, car",
            "hypothesis_template": "a picture of a {}",
        },
        headers=h,
        content_type="multipart/form-data",
    )
    assert r.status_code == 200, r.json
    assert r.json["taxonomy_version"] is None
    assert sorted(x["label"] for x in r.json["dimensions"][0]["labels"]) == ["car", "cat", "dog"]


def test_tag_endpoint_errors(client: FlaskClient, tokens: dict[str, str]) -> None:
    h = auth(tokens["search"])
    r = client.post(
        "/api/v1/tag",
        data={"file": (io.BytesIO(png_bytes(0)), "q.png")},
        headers=h,
        content_type="multipart/form-data",
    )
    assert r.status_code == 409 and r.json["error"]["code"] == "no_taxonomy"
    r = client.post("/api/v1/tag", json={"image_id": "a" * 64, "url": "http://x"}, headers=h)
    assert r.status_code == 422
    r = client.post("/api/v1/tag", json={"image_id": "a" * 64}, headers=h)
    assert r.status_code == 404
    r = client.post(
        "/api/v1/tag",
        data={"file": (io.BytesIO(b"not an image"), "q.png"), "candidate_labels": "a,b"},
        headers=h,
        content_type="multipart/form-data",
    )
    assert r.status_code in (415, 422)
    r = client.post("/api/v1/tag", json={"url": "http://127.0.0.1:1/x.png"}, headers=h)
    assert r.status_code == 422  # loopback refused by the SSRF guard


def test_taxonomy_change_starts_a_retag_job(
    app: Flask, client: FlaskClient, tokens: dict[str, str], taxonomy: str, catalog: list[str]
) -> None:
    admin = auth(tokens["admin"])
    body = {"dimensions": [{"name": "shade", "labels": ["dark", "light"]}]}
    r = client.put("/api/v1/taxonomy", json=body, headers=admin)
    assert r.status_code == 200 and r.json["retag_job_id"]
    settle(app)
    job = client.get(f"/api/v1/jobs/{r.json['retag_job_id']}", headers=admin).json
    assert job["kind"] == "retag" and job["state"] == "done"
    assert job["counts"]["done"] == len(catalog) + 1  # every image plus the scan itself
    for image_id in catalog:
        payload = client.get(f"/api/v1/images/{image_id}", headers=admin).json["payload"]
        assert payload["taxonomy_version"] == r.json["version"]
        assert set(payload["tags"]) == {"shade"}
    r = client.post("/api/v1/retag", headers=admin)
    assert r.status_code == 202
