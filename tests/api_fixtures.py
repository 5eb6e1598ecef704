"""Fixtures for HTTP tests: the app over real services, keys per scope, a small catalog."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from services.auth.apikeys import SqliteKeyStore
from services.auth.principal import Scope
from services.encoder import Encoder
from services.runtime import Runtime, build_runtime
from services.settings import Settings
from tests.conftest import ADMIN, png_bytes
from web import create_app


def make_app(settings: Settings, encoder: Encoder) -> Flask:
    keys = SqliteKeyStore(settings.data_dir / "keys.db")
    return create_app(settings, runtime=build_runtime(settings, encoder=encoder, keys=keys))


def runtime_of(app: Flask) -> Runtime:
    """The runtime an app was built with."""
    rt: Runtime = app.extensions["sightline"]
    return rt


@pytest.fixture
def app(settings: Settings, encoder: Encoder) -> Iterator[Flask]:
    app = make_app(settings, encoder)
    yield app
    runtime_of(app).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def tokens(app: Flask) -> dict[str, str]:
    access = runtime_of(app).access
    return {
        scope.value: access.create_key(ADMIN, f"{scope.value}-key", [scope])[1] for scope in Scope
    }


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def settle(app: Flask) -> None:
    assert runtime_of(app).wait_idle(timeout_s=60)


@pytest.fixture
def catalog(app: Flask, client: FlaskClient, tokens: dict[str, str]) -> list[str]:
    """12 images uploaded through the API, indexed."""
    files = [(io.BytesIO(png_bytes(i)), f"img{i}.png") for i in range(12)]
    per_file = {
        f"img{i}.png": {"title": f"item {i}", "price": i * 5, "product_id": f"p{i // 3}"}
        for i in range(12)
    }
    r = client.post(
        "/api/v1/images",
        data={
            "files": files,
            "metadata": '{"brand": "acme"}',
            "per_file": json.dumps(per_file),
        },
        headers=auth(tokens["ingest"]),
        content_type="multipart/form-data",
    )
    assert r.status_code == 202, r.json
    settle(app)
    job = client.get(f"/api/v1/jobs/{r.json['job_id']}", headers=auth(tokens["ingest"])).json
    assert job["state"] == "done" and job["counts"]["done"] == 12
    return [a["image_id"] for a in r.json["accepted"]]
