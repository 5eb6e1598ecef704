"""Each finding of the outsider attack on the API, reproduced: nothing a client sends may
stall, crash or leak the service."""

from __future__ import annotations

import io
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from services.auth.principal import Scope
from services.errors import FetchFailed, FetchRefused, InvalidFilter, NotFound
from services.filters import parse_filters
from services.ingest.fetch import fetch_image
from services.ingest.intake import IngestItem
from services.moderation.review import Decision
from services.settings import FetchSettings, Settings
from services.tagging.taxonomy import parse_taxonomy
from tests.api_fixtures import auth, make_app, runtime_of, settle
from tests.conftest import ADMIN, png_bytes
from tests.servers import free_port
from tests.test_admin import PASSWORD, csrf, login
from tests.test_moderation import flag_file, jpeg, near_duplicate, photo, upload

TAXONOMY = "dimensions: [{name: colour, labels: [red, blue, green]}]"


@pytest.fixture
def served(app: Flask) -> Iterator[str]:
    """The app on a real threaded HTTP server on loopback."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


# 1. The filter parser cannot be stalled ---------------------------------------------------


def test_filter_parsing_is_linear_and_bounded() -> None:
    for expr in (" " * 30_000, "a=" + " " * 30_000 + "b", "a" * 511 + "="):
        started = time.perf_counter()
        with pytest.raises(InvalidFilter):
            parse_filters([expr])
        assert time.perf_counter() - started < 0.01
    # The longest accepted expression parses in the same time as a short one.
    longest = "k=" + "v " * 254 + "v"
    started = time.perf_counter()
    for _ in range(1000):
        parse_filters([longest])
    assert (time.perf_counter() - started) / 1000 < 0.001
    with pytest.raises(InvalidFilter, match="at most 32"):
        parse_filters(["a=1"] * 33)


def test_stall_request_is_refused_in_milliseconds_and_health_stays_fast(
    served: str, tokens: dict[str, str]
) -> None:
    body = {"positive": ["0" * 64], "where": [" " * 30_000]}
    timings: list[float] = []

    def health() -> None:
        with httpx.Client() as client:
            for _ in range(20):
                started = time.perf_counter()
                assert client.get(f"{served}/healthz").status_code == 200
                timings.append(time.perf_counter() - started)

    beside = threading.Thread(target=health)
    beside.start()
    with httpx.Client(headers=auth(tokens["search"])) as client:
        for _ in range(5):
            started = time.perf_counter()
            r = client.post(f"{served}/api/v1/recommend", json=body)
            assert r.status_code == 422 and "where" in r.text
            assert time.perf_counter() - started < 0.5
    beside.join()
    assert max(timings) < 0.5


# 2. and 3. Moderation internals and hidden images --------------------------------------


@pytest.fixture
def reviewed(app: Flask, client: FlaskClient, tokens: dict[str, str]) -> dict[str, str]:
    """A quarantined image, and one approved by a reviewer with a reason."""
    entries = [flag_file(client, tokens["admin"], jpeg(photo(s), 95)) for s in (7, 9)]
    assert all(e["scan_job_id"] for e in entries)
    hidden = upload(client, tokens["ingest"], near_duplicate(photo(7)), "dup.jpg")
    approved = upload(client, tokens["ingest"], near_duplicate(photo(9)), "ok.jpg")
    settle(app)
    runtime_of(app).moderation.decide(ADMIN, [approved], Decision.APPROVE, "a reviewer's note")
    return {"hidden": hidden, "approved": approved}


def test_search_keys_get_no_moderation_or_hash_fields(
    client: FlaskClient, tokens: dict[str, str], reviewed: dict[str, str]
) -> None:
    r = client.get("/api/v1/search?q=a+dress&k=20", headers=auth(tokens["search"]))
    hits = {h["image_id"]: h["payload"] for h in r.json["results"]}
    assert reviewed["approved"] in hits and reviewed["hidden"] not in hits
    for payload in hits.values():
        assert not {"moderation", "moderation_status", "phash"} & set(payload)
    assert "a reviewer's note" not in r.get_data(as_text=True)
    r = client.get("/api/v1/search?q=a+dress&k=20", headers=auth(tokens["admin"]))
    admin_hits = {h["image_id"]: h["payload"] for h in r.json["results"]}
    assert admin_hits[reviewed["approved"]]["moderation"]["review_reason"] == "a reviewer's note"
    # fields= picks payload fields, within what the caller may see.
    r = client.get(
        "/api/v1/search?q=a+dress&k=5&fields=filename,phash", headers=auth(tokens["search"])
    )
    assert all(set(h["payload"]) <= {"filename"} for h in r.json["results"])


def test_an_ingest_key_cannot_delete_or_probe_a_hidden_image(
    app: Flask, client: FlaskClient, tokens: dict[str, str], reviewed: dict[str, str]
) -> None:
    hidden = reviewed["hidden"]
    r = client.delete(f"/api/v1/images/{hidden}", headers=auth(tokens["ingest"]))
    missing = client.delete(f"/api/v1/images/{'f' * 64}", headers=auth(tokens["ingest"]))
    assert r.status_code == missing.status_code == 404
    assert r.json["error"]["code"] == missing.json["error"]["code"] == "not_found"
    settle(app)
    rt = runtime_of(app)
    assert rt.store.exists(hidden)
    queue, _ = rt.moderation.queue(ADMIN)
    assert hidden in {r.payload["image_id"] for r in queue}
    assert not [e for e in rt.audit.list(200, hidden) if e.action == "image.delete"]


def test_search_pages_with_offset(
    client: FlaskClient, tokens: dict[str, str], catalog: list[str]
) -> None:
    h = auth(tokens["search"])
    everything = client.get("/api/v1/search?q=item&k=12", headers=h).json["results"]
    first = client.get("/api/v1/search?q=item&k=5", headers=h).json
    second = client.get(f"/api/v1/search?q=item&k=5&offset={first['next_offset']}", headers=h).json
    assert first["next_offset"] == 5 and second["results"][0]["rank"] == 6
    assert [x["image_id"] for x in first["results"] + second["results"]] == [
        x["image_id"] for x in everything[:10]
    ]
    r = client.get("/api/v1/search?q=item&k=600&offset=500", headers=h)
    assert r.status_code == 422


# 4. Unbounded work ----------------------------------------------------------------------


def test_tagging_and_taxonomies_are_bounded(
    client: FlaskClient, tokens: dict[str, str], catalog: list[str]
) -> None:
    h = auth(tokens["search"])
    started = time.perf_counter()
    r = client.post(
        "/api/v1/tag",
        json={"image_id": catalog[0], "candidate_labels": ["x" * 10_000] * 1000},
        headers=h,
    )
    assert r.status_code in (413, 422) and time.perf_counter() - started < 1
    r = client.post(
        "/api/v1/tag",
        json={"image_id": catalog[0], "candidate_labels": [f"l{i}" for i in range(101)]},
        headers=h,
    )
    assert r.status_code == 422 and "candidate_labels" in r.json["error"]["message"]
    # A 15 KB document of YAML anchors that would expand to millions of prompts.
    anchors = "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 8)}]\n" for i in range(7)
    )
    admin = {**auth(tokens["admin"]), "Content-Type": "application/yaml"}
    started = time.perf_counter()
    r = client.put("/api/v1/taxonomy?retag=false", data=anchors, headers=admin)
    assert r.status_code == 422 and "expands" in r.json["error"]["message"]
    assert time.perf_counter() - started < 0.5
    wide = {
        "dimensions": [
            {"name": f"d{d}", "labels": [f"l{i}" for i in range(1000)]} for d in range(3)
        ]
    }
    r = client.put("/api/v1/taxonomy?retag=false", json=wide, headers=auth(tokens["admin"]))
    assert r.status_code == 422 and "prompts" in r.json["error"]["message"]
    many_templates = {"templates": [f"t{i} {{label}}" for i in range(17)], "dimensions": []}
    r = client.put(
        "/api/v1/taxonomy?retag=false", json=many_templates, headers=auth(tokens["admin"])
    )
    assert r.status_code == 422 and "templates" in r.json["error"]["message"]


# 5. URL downloads have one deadline -----------------------------------------------------


@pytest.fixture
def trickle() -> Iterator[str]:
    """A server that sends an endless image body one byte every 0.3 s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n")
            try:
                while not stop.is_set():
                    conn.sendall(b"\x89")
                    time.sleep(0.3)
            except OSError:
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/slow.png"
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_a_trickling_server_cannot_outlast_the_deadline(trickle: str) -> None:
    settings = FetchSettings(allow_networks=["127.0.0.0/8"], timeout_s=2, deadline_s=1.5)
    started = time.perf_counter()
    with pytest.raises(FetchFailed, match="deadline"):
        fetch_image(trickle, settings, 10_000_000)
    assert time.perf_counter() - started < 2.0


def test_tag_by_url_answers_within_the_deadline(
    tmp_path: Path,
    tiny_model_dir: Path,
    encoder,
    trickle: str,  # type: ignore[no-untyped-def]
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        model=str(tiny_model_dir),
        fetch=FetchSettings(allow_networks=["127.0.0.0/8"], timeout_s=2, deadline_s=1.5),
    )
    app = make_app(settings, encoder)
    token = runtime_of(app).access.create_key(ADMIN, "s", [Scope.SEARCH])[1]
    started = time.perf_counter()
    r = app.test_client().post(
        "/api/v1/tag", json={"url": trickle, "candidate_labels": ["a", "b"]}, headers=auth(token)
    )
    assert r.status_code == 502 and "deadline" in r.json["error"]["message"]
    assert time.perf_counter() - started < 2.5
    runtime_of(app).close()


# 6. Rate limits key on the verified key -------------------------------------------------


def test_rate_limit_follows_the_key_however_it_is_written(
    tmp_path: Path,
    tiny_model_dir: Path,
    encoder,  # type: ignore[no-untyped-def]
) -> None:
    settings = Settings(data_dir=tmp_path / "data", model=str(tiny_model_dir))
    settings.web.rate_limit = "3/minute"
    app = make_app(settings, encoder)
    token = runtime_of(app).access.create_key(ADMIN, "s", [Scope.SEARCH])[1]
    other = runtime_of(app).access.create_key(ADMIN, "t", [Scope.SEARCH])[1]
    client = app.test_client()
    for _ in range(3):
        assert client.get("/api/v1/taxonomy", headers=auth(token)).status_code in (200, 404)
    variants = [
        {"Authorization": f"Bearer {token}"},
        {"Authorization": f"bearer {token}"},
        {"Authorization": f"BEARER {token}"},
        {"Authorization": f"Bearer    {token}  "},
        {"X-API-Key": token},
        {"X-API-Key": f"  {token}"},
    ]
    for headers in variants:
        assert client.get("/api/v1/taxonomy", headers=headers).status_code == 429, headers
    assert client.get("/api/v1/taxonomy", headers=auth(other)).status_code != 429
    runtime_of(app).close()


# 7. and 8. Malformed input gets a 4xx naming the field -----------------------------------


def test_malformed_requests_get_4xx_not_5xx(
    app: Flask, client: FlaskClient, tokens: dict[str, str], catalog: list[str]
) -> None:
    search, ingest, admin = (auth(tokens[k]) for k in ("search", "ingest", "admin"))
    deep = "[" * 5000 + "]" * 5000
    cases: list[tuple[str, str, dict, object]] = [  # type: ignore[type-arg]
        ("GET", f"/api/v1/moderation/queue?offset={'0' * 64}", admin, "offset"),
        ("POST", "/api/v1/flagged", admin, {"json": {"text": "x" * 1000, "category": "c"}}),
        (
            "POST",
            "/api/v1/tag",
            search,
            {"json": {"image_id": catalog[0], "candidate_labels": ["\ud800", "b"]}},
        ),
        (
            "POST",
            "/api/v1/tag",
            search,
            {"json": {"image_id": catalog[0], "candidate_labels": ["", "b"]}},
        ),
        (
            "POST",
            "/api/v1/tag",
            search,
            {"json": {"image_id": catalog[0], "candidate_labels": ["a", "a"]}},
        ),
        ("GET", "/api/v1/search?q=%20", search, "q"),
        ("GET", "/api/v1/search?q=x&where=a%3D99999999999999999999999", search, "where"),
        ("GET", "/api/v1/search?q=x&where=a..b%3D1", search, "where"),
        ("GET", f"/api/v1/images/{catalog[0]}/thumbnail?size=%C2%B2", search, "size"),
        ("POST", "/api/v1/recommend", search, {"data": deep, "content_type": "application/json"}),
        ("POST", "/api/v1/images/urls", ingest, {"json": {"urls": ["http://example.com:99999/x"]}}),
        ("POST", "/api/v1/images/urls", ingest, {"json": {"urls": ["http://[::1/x"]}}),
        (
            "PUT",
            "/api/v1/taxonomy",
            admin,
            {"data": "a:\n" + "  - " * 50 + "x", "content_type": "application/yaml"},
        ),
        ("PUT", "/api/v1/taxonomy", admin, {"data": deep, "content_type": "application/yaml"}),
        (
            "POST",
            "/api/v1/images",
            ingest,
            {
                "data": {
                    "files": [(io.BytesIO(png_bytes(5)), "a.png")],
                    "per_file": '{"a.png": [1]}',
                },
                "content_type": "multipart/form-data",
            },
        ),
        (
            "POST",
            "/api/v1/images",
            ingest,
            {
                "data": {"files": [(io.BytesIO(png_bytes(5)), "a.png")], "metadata": deep},
                "content_type": "multipart/form-data",
            },
        ),
        (
            "POST",
            "/api/v1/moderation/decisions",
            admin,
            {"json": {"image_ids": ["x"], "action": "nuke"}},
        ),
    ]
    for method, path, headers, extra in cases:
        kwargs = extra if isinstance(extra, dict) else {}
        r = client.open(path, method=method, headers=headers, **kwargs)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.get_data()[:200])
        assert r.json["error"]["message"], path
        if isinstance(extra, str):  # the field is named
            assert extra in r.json["error"]["message"], r.json


def test_dashboard_validates_with_the_api_schemas(app: Flask, client: FlaskClient) -> None:
    login(client, app)
    r = client.get("/admin/search?page=abc")
    assert r.status_code == 200 and "page must be a whole number" in r.get_data(as_text=True)
    token = csrf(client, "/admin/moderation")
    for threshold in ("-5", "abc", "nan", "inf", "2"):
        r = client.post(
            "/admin/flagged",
            data={"text": "a weapon", "category": "w", "threshold": threshold, "csrf_token": token},
            follow_redirects=True,
        )
        assert r.status_code == 200 and "Not added" in r.get_data(as_text=True), threshold
    assert runtime_of(app).moderation.entries(ADMIN) == []
    assert not [e for e in runtime_of(app).audit.list(100) if e.action == "moderation.scan"]


# 9. Sessions ----------------------------------------------------------------------------


def test_logout_and_password_change_end_sessions(app: Flask, client: FlaskClient) -> None:
    login(client, app)
    assert client.get("/admin/search").status_code == 200
    saved = client.get_cookie("session")
    assert saved is not None
    token = csrf(client, "/admin/search")
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    thief = app.test_client()
    thief.set_cookie("session", saved.value)
    r = thief.get("/admin/search")
    assert r.status_code == 302 and "/admin/login" in r.location
    # A password change ends every other session of the account.
    first, second = app.test_client(), app.test_client()
    for c in (first, second):
        token = csrf(c, "/admin/login")
        c.post("/admin/login", data={"username": "ops", "password": PASSWORD, "csrf_token": token})
        assert c.get("/admin/search").status_code == 200
    access = runtime_of(app).access
    nonce = access.change_password(
        access.session("ops", _nonce(first)) or ADMIN, "ops", PASSWORD, PASSWORD + "!"
    )
    assert nonce and access.session("ops", nonce) is not None
    for c in (first, second):
        assert c.get("/admin/search").status_code == 302


def _nonce(client: FlaskClient) -> str:
    with client.session_transaction() as sess:
        return str(sess["nonce"])


def test_admin_pages_are_not_cached_and_cookies_are_secure_over_tls(
    app: Flask,
    client: FlaskClient,
    tmp_path: Path,
    tiny_model_dir: Path,
    encoder,  # type: ignore[no-untyped-def]
) -> None:
    login(client, app)
    assert client.get("/admin/search").headers["Cache-Control"] == "no-store"
    assert client.get("/admin/status").headers["Cache-Control"] == "no-store"
    plain = client.get("/admin/login")
    assert "Secure" not in plain.headers.get("Set-Cookie", "")
    tls = app.test_client().get("/admin/login", base_url="https://localhost")
    assert "Secure" in tls.headers["Set-Cookie"]
    # Behind a trusted proxy, its X-Forwarded-Proto says whether the client used TLS.
    settings = Settings(data_dir=tmp_path / "proxied", model=str(tiny_model_dir))
    settings.web.trusted_proxies = 1
    proxied = make_app(settings, encoder)
    r = proxied.test_client().get("/admin/login", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in r.headers["Set-Cookie"]
    untrusted = app.test_client().get("/admin/login", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in untrusted.headers.get("Set-Cookie", "")
    runtime_of(proxied).close()


def test_login_costs_the_same_for_unknown_users(app: Flask) -> None:
    accounts = runtime_of(app).access.accounts
    accounts.create("ops", PASSWORD)
    accounts.authenticate("nobody", "x" * 12)  # the dummy hash is made once, up front

    def cost(username: str) -> float:
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            assert accounts.authenticate(username, "wrong-password-1") is None
            runs.append(time.perf_counter() - started)
        return statistics.median(runs)

    known, unknown = cost("ops"), cost("nobody")
    assert abs(known - unknown) < 0.35 * known, (known, unknown)


# 10. and 11. Ids and the SSRF guard ------------------------------------------------------


def test_an_id_with_a_trailing_newline_is_not_an_id(
    app: Flask, client: FlaskClient, tokens: dict[str, str], catalog: list[str]
) -> None:
    victim = catalog[0]
    r = client.delete(f"/api/v1/images/{victim}%0A", headers=auth(tokens["admin"]))
    assert r.status_code == 404
    with pytest.raises(NotFound):
        runtime_of(app).uploads.delete(ADMIN, [victim + "\n"])
    settle(app)
    rt = runtime_of(app)
    assert rt.store.exists(victim) and rt.search.record(ADMIN, victim)
    assert rt.thumbnails.exists(victim, 256)


@pytest.mark.parametrize(
    "host",
    [
        "[::127.0.0.1]",
        "[::ffff:127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::]",
        "[::a9fe:a9fe]",
    ],
)
def test_ipv6_addresses_carrying_private_ipv4_are_refused(host: str) -> None:
    with pytest.raises(FetchRefused, match="private"):
        fetch_image(f"http://{host}:{free_port()}/x.png", FetchSettings(), 1000)


def test_limits_hold_below_the_web_layer(runtime) -> None:  # type: ignore[no-untyped-def]
    """The same limits hold below the web layer: services refuse what the schemas do."""
    with pytest.raises(InvalidFilter):
        runtime.search.text(ADMIN, "x", flt=parse_filters(["a=1"] * 40))
    runtime.ingestor.ingest(ADMIN, [IngestItem(png_bytes(1), "a.png")])
    vectors = runtime.encoder.encode_texts(["y" * 5000])  # truncated to the text tower
    assert vectors.shape[0] == 1
    taxonomy = parse_taxonomy(TAXONOMY)
    assert json.loads(json.dumps(taxonomy.model_dump()))
