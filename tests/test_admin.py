"""The dashboard without a browser: login, sessions, CSRF, every page with real data."""

from __future__ import annotations

import io
import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from services.auth.accounts import (
    InvalidAccount,
    SqliteAccountStore,
    hash_password,
    verify_password,
)
from services.auth.principal import Scope
from services.encoder import Encoder
from services.settings import Settings
from services.tagging.taxonomy import parse_taxonomy
from tests.api_fixtures import make_app, runtime_of, settle
from tests.conftest import ADMIN, png_bytes, set_taxonomy

PASSWORD = "correct horse battery"


def csrf(client: FlaskClient, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match, page[:300]
    return match.group(1)


def login(client: FlaskClient, app: Flask, username: str = "ops") -> None:
    runtime_of(app).access.create_account(ADMIN, username, PASSWORD)
    token = csrf(client, "/admin/login")
    r = client.post(
        "/admin/login",
        data={"username": username, "password": PASSWORD, "csrf_token": token},
    )
    assert r.status_code == 302 and r.location.endswith("/admin/search")


def test_passwords_are_scrypt_hashed_and_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stored = hash_password("s3cret-passphrase")
    assert stored.startswith("scrypt$") and "s3cret" not in stored
    assert verify_password("s3cret-passphrase", stored)
    assert not verify_password("s3cret-passphrasE", stored)
    assert not verify_password("x", "garbage")
    accounts = SqliteAccountStore(tmp_path / "a.sqlite")
    with pytest.raises(InvalidAccount):
        accounts.create("ok-name", "short")
    with pytest.raises(InvalidAccount):
        accounts.create("bad name!", PASSWORD)
    accounts.create("ops", PASSWORD)
    assert accounts.authenticate("ops", PASSWORD) is not None
    assert accounts.authenticate("ops", PASSWORD + "x") is None
    assert accounts.authenticate("nobody", PASSWORD) is None


def test_every_page_needs_login(client: FlaskClient) -> None:
    for path in (
        "/admin/",
        "/admin/search",
        "/admin/upload",
        "/admin/taxonomy",
        "/admin/moderation",
        "/admin/moderation/flagged",
        "/admin/moderation/audit",
        "/admin/status",
        "/admin/accounts",
        "/admin/account",
    ):
        r = client.get(path)
        assert r.status_code == 302 and "/admin/login" in r.location, path
    assert client.get("/admin/jobs/x", headers={"Accept": "application/json"}).status_code == 401


def test_login_rejects_bad_password_and_missing_csrf(app: Flask, client: FlaskClient) -> None:
    runtime_of(app).access.create_account(ADMIN, "ops", PASSWORD)
    r = client.post("/admin/login", data={"username": "ops", "password": PASSWORD})
    assert r.status_code == 400  # no CSRF token
    token = csrf(client, "/admin/login")
    r = client.post(
        "/admin/login", data={"username": "ops", "password": "nope-nope-nope", "csrf_token": token}
    )
    assert r.status_code == 401 and "Wrong username or password" in r.get_data(as_text=True)
    assert client.get("/admin/search").status_code == 302
    # After login, a form posted without the token is refused too; logout ends the session.
    login(client, app)
    assert client.post("/admin/logout").status_code == 400
    client.post("/admin/logout", data={"csrf_token": csrf(client, "/admin/search")})
    assert client.get("/admin/search").status_code == 302


def test_pages_render_real_data(app: Flask, client: FlaskClient, catalog: list[str]) -> None:
    runtime = runtime_of(app)
    set_taxonomy(runtime, parse_taxonomy("dimensions: [{name: colour, labels: [red, blue]}]"))
    login(client, app)
    page = client.get("/admin/search").get_data(as_text=True)
    assert page.count('class="tile') == 12 and "thumbnail" in page
    page = client.get("/admin/search?q=a+photo&tag_colour=red").get_data(as_text=True)
    assert 'option value="red" selected' in page
    image = client.get(f"/admin/images/{catalog[0]}").get_data(as_text=True)
    assert catalog[0] in image and "Similar images" in image and "item 0" in image
    assert client.get(f"/admin/images/{catalog[0]}/thumbnail?size=128").mimetype == "image/jpeg"
    status = client.get("/admin/status").get_data(as_text=True)
    assert '<td class="num">12</td>' in status and "in-process worker thread" in status
    token = csrf(client, "/admin/taxonomy")
    r = client.post(
        "/admin/taxonomy",
        data={
            "yaml": "dimensions: [{name: shade, labels: [dark, light]}]",
            "action": "preview",
            "csrf_token": token,
        },
    )
    preview = r.get_data(as_text=True)
    assert 'id="preview-table"' in preview and preview.count("<tr>") == 7  # header + 6 samples
    r = client.post(
        "/admin/taxonomy", data={"yaml": "dimensions: [", "action": "preview", "csrf_token": token}
    )
    assert "not valid YAML" in r.get_data(as_text=True)


def test_upload_and_job_json(app: Flask, client: FlaskClient) -> None:
    login(client, app)
    token = csrf(client, "/admin/upload")
    r = client.post(
        "/admin/upload",
        data={"files": [(io.BytesIO(png_bytes(1)), "one.png")]},
        headers={"X-CSRFToken": token},
        content_type="multipart/form-data",
    )
    assert r.status_code == 202, r.json
    settle(app)
    job = client.get(f"/admin/jobs/{r.json['job_id']}").json
    assert job["state"] == "done" and job["items"][0]["state"] == "done"
    assert job["items"][0]["moderation_status"] == "clear"
    # An upload of a flagged image's bytes: the page can say it was quarantined.
    runtime_of(app).moderation.add_image(ADMIN, png_bytes(2), "c", threshold=0.999, scan=False)
    r = client.post(
        "/admin/upload",
        data={"files": [(io.BytesIO(png_bytes(2)), "two.png")]},
        headers={"X-CSRFToken": token},
        content_type="multipart/form-data",
    )
    settle(app)
    job = client.get(f"/admin/jobs/{r.json['job_id']}").json
    assert job["items"][0]["moderation_status"] == "quarantined"
    r = client.post(
        "/admin/upload",
        data={"files": [(io.BytesIO(b"not an image"), "bad.png")]},
        headers={"X-CSRFToken": token},
        content_type="multipart/form-data",
    )
    assert r.status_code == 422 and r.json["error"]["message"]


def test_login_attempts_are_rate_limited(app: Flask, client: FlaskClient) -> None:
    token = csrf(client, "/admin/login")
    codes = [
        client.post(
            "/admin/login", data={"username": "x", "password": "guess-guess", "csrf_token": token}
        ).status_code
        for _ in range(21)
    ]
    assert codes[:20] == [401] * 20 and codes[20] == 429


def test_dashboard_images_fit_browsing_and_are_cacheable(
    settings: Settings, encoder: Encoder
) -> None:
    """With an API limit of 5 a minute, a signed-in user still pages through 30
    thumbnails (their own, larger budget), an API key is stopped at 5, and a browser that
    has a thumbnail revalidates it by ETag (304, no body)."""
    settings.web.rate_limit = "5/minute"
    app = make_app(settings, encoder)
    try:
        client = app.test_client()
        runtime = runtime_of(app)
        image_id = runtime.store.put(png_bytes(3, size=(64, 48)))
        runtime.uploads.ingest_stored(ADMIN, [image_id])
        settle(app)
        login(client, app)
        codes = [
            client.get(f"/admin/images/{image_id}/thumbnail?size=128").status_code
            for _ in range(30)
        ]
        assert codes == [200] * 30
        first = client.get(f"/admin/images/{image_id}/thumbnail?size=128")
        assert "immutable" in first.headers["Cache-Control"] and first.headers["ETag"]
        again = client.get(
            f"/admin/images/{image_id}/thumbnail?size=128",
            headers={"If-None-Match": first.headers["ETag"]},
        )
        assert again.status_code == 304 and again.data == b""
        _, token = runtime.access.create_key(ADMIN, "k", [Scope.SEARCH])
        api = [
            app.test_client()
            .get(
                f"/api/v1/images/{image_id}/thumbnail", headers={"Authorization": f"Bearer {token}"}
            )
            .status_code
            for _ in range(7)
        ]
        assert api[:5] == [200] * 5 and api[5:] == [429, 429]
    finally:
        runtime_of(app).close()


def test_login_follows_only_same_site_paths(app: Flask, client: FlaskClient) -> None:
    """``next`` after login: a path on this site is followed; another site, however it is
    spelt (``//``, a backslash browsers read as a slash, a tab they drop), is not."""
    runtime_of(app).access.create_account(ADMIN, "ops", PASSWORD)
    form = {"username": "ops", "password": PASSWORD}
    for target, lands in (
        ("/admin/status", "/admin/status"),
        ("//evil.example/x", "/admin/search"),
        ("/\\evil.example/x", "/admin/search"),
        ("/\t/evil.example/x", "/admin/search"),
        ("https://evil.example/", "/admin/search"),
    ):
        token = csrf(client, "/admin/login")
        r = client.post(
            "/admin/login", query_string={"next": target}, data={**form, "csrf_token": token}
        )
        assert r.status_code == 302 and r.location.endswith(lands), (target, r.location)
        client.post("/admin/logout", data={"csrf_token": csrf(client, "/admin/search")})
