"""The dashboard's roles, error pages, confirmations, paging and status charts, without a
browser (a client without JavaScript: every confirmation must work as plain forms)."""

from __future__ import annotations

import io
import re
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient

from services.auth.principal import Role, Scope
from services.errors import Conflict
from services.history import Sample, StatusHistory
from services.ingest.intake import IngestItem
from tests.api_fixtures import runtime_of, settle
from tests.conftest import ADMIN, png_bytes
from tests.test_admin import PASSWORD, csrf

# What each role may open, written out by hand (not read from the code): the
# matrix below walks every parameterless GET page of the route table against it.
NEEDS = {
    "/admin/search": Scope.SEARCH,
    "/admin/account": Scope.SEARCH,
    "/admin/upload": Scope.INGEST,
    "/admin/taxonomy": Scope.ADMIN,
    "/admin/status": Scope.ADMIN,
    "/admin/accounts": Scope.ADMIN,
    "/admin/moderation": Scope.MODERATE,
    "/admin/moderation/flagged": Scope.MODERATE,
    "/admin/moderation/audit": Scope.MODERATE,
}
ROLE_SCOPES = {
    Role.VIEWER: {Scope.SEARCH},
    Role.MODERATOR: {Scope.SEARCH, Scope.MODERATE},
    Role.ADMIN: {Scope.SEARCH, Scope.INGEST, Scope.MODERATE, Scope.ADMIN},
}
NOT_PAGES = {"/admin/", "/admin/login"}  # a redirect, and the page before a session


def sign_in(app: Flask, username: str, role: Role | None = None) -> FlaskClient:
    runtime_of(app).access.create_account(ADMIN, username, PASSWORD, role)
    client = app.test_client()
    token = csrf(client, "/admin/login")
    r = client.post(
        "/admin/login", data={"username": username, "password": PASSWORD, "csrf_token": token}
    )
    assert r.status_code == 302
    return client


def _ingest(app: Flask, n: int, start: int = 0) -> list[str]:
    items = [IngestItem(png_bytes(start + i), f"p{start + i}.png") for i in range(n)]
    return [r.image_id for r in runtime_of(app).ingestor.ingest(ADMIN, items).results]


def _quarantine(app: Flask, seed: int) -> str:
    """An upload of a flagged image's own bytes: quarantined on ingest."""
    rt = runtime_of(app)
    data = png_bytes(seed)
    rt.moderation.add_image(ADMIN, data, "c", threshold=0.999, scan=False)
    [result] = rt.ingestor.ingest(ADMIN, [IngestItem(data, f"bad{seed}.png")]).results
    assert rt.search.record(ADMIN, result.image_id).payload["moderation_status"] == "quarantined"
    return result.image_id


def test_roles_limit_pages_by_the_route_table(app: Flask) -> None:
    rules = {
        r.rule
        for r in app.url_map.iter_rules()
        if r.rule.startswith("/admin")
        and "GET" in (r.methods or ())
        and "<" not in r.rule
        and r.endpoint != "admin.static"
    }
    assert rules - NOT_PAGES == set(NEEDS), "every dashboard page needs an entry in NEEDS"
    sign_in(app, "root")  # the first admin
    for role, scopes in ROLE_SCOPES.items():
        client = sign_in(app, f"a-{role.value}", role)
        for path, scope in NEEDS.items():
            r = client.get(path)
            want = 200 if scope in scopes else 403
            assert r.status_code == want, (role, path, r.status_code)
            page = r.get_data(as_text=True)
            assert 'aria-label="Dashboard"' in page  # navigation on every answer
            if want == 403:
                assert "Not allowed" in page and "Back to search" in page
                assert "this page is for" in page and 'id="retry"' not in page
        nav = client.get("/admin/search").get_data(as_text=True)
        assert ('href="/admin/moderation"' in nav) is (Scope.MODERATE in scopes)
        assert ('href="/admin/upload"' in nav) is (Scope.INGEST in scopes)
        assert ('href="/admin/accounts"' in nav) is (Scope.ADMIN in scopes)


def test_a_viewer_sees_no_quarantined_image_and_cannot_decide(app: Flask) -> None:
    [kept] = _ingest(app, 1)
    bad = _quarantine(app, 50)
    viewer = sign_in(app, "viewer1", Role.VIEWER)
    assert viewer.get(f"/admin/images/{bad}").status_code == 404
    assert viewer.get(f"/admin/images/{bad}/thumbnail").status_code == 404
    assert bad not in viewer.get("/admin/search").get_data(as_text=True)
    assert kept in viewer.get("/admin/search").get_data(as_text=True)
    token = csrf(viewer, "/admin/search")
    r = viewer.post(
        "/admin/moderation/decide",
        data={"image_ids": bad, "action": "approve", "csrf_token": token},
    )
    assert r.status_code == 403
    moderator = sign_in(app, "mod1", Role.MODERATOR)
    assert moderator.get(f"/admin/images/{bad}").status_code == 200
    assert bad in moderator.get("/admin/moderation").get_data(as_text=True)


def test_accounts_roles_and_password_change(app: Flask) -> None:
    admin = sign_in(app, "boss")
    token = csrf(admin, "/admin/accounts")
    r = admin.post(
        "/admin/accounts",
        data={
            "action": "create",
            "username": "vic",
            "password": "a long enough one",
            "role": "viewer",
            "csrf_token": token,
        },
    )
    assert r.status_code == 302
    access = runtime_of(app).access
    assert {a.username: a.role for a in access.accounts_list(ADMIN)}["vic"] is Role.VIEWER
    vic = app.test_client()
    login_token = csrf(vic, "/admin/login")
    form = {"username": "vic", "password": "a long enough one", "csrf_token": login_token}
    assert vic.post("/admin/login", data=form).status_code == 302
    assert vic.get("/admin/moderation").status_code == 403
    # Promoted while signed in: the open session follows at once.
    admin.post(
        "/admin/accounts",
        data={"action": "role", "username": "vic", "role": "moderator", "csrf_token": token},
    )
    assert vic.get("/admin/moderation").status_code == 200
    # Her own password: a wrong current one is refused, a right one ends other sessions.
    other = app.test_client()
    assert other.post("/admin/login", data={**form, "csrf_token": csrf(other, "/admin/login")})
    vic_token = csrf(vic, "/admin/account")
    bad = {"current": "wrong", "new": "another long one", "repeat": "another long one"}
    r = vic.post("/admin/account", data={**bad, "csrf_token": vic_token})
    assert r.status_code == 422 and "current password is wrong" in r.get_data(as_text=True)
    good = {**bad, "current": "a long enough one"}
    r = vic.post("/admin/account", data={**good, "csrf_token": vic_token})
    assert r.status_code == 302
    assert vic.get("/admin/moderation").status_code == 200  # this session goes on
    assert other.get("/admin/moderation").status_code == 302  # the other one was ended
    # The last admin cannot be demoted or deleted.
    with pytest.raises(Conflict):
        access.set_role(ADMIN, "boss", Role.VIEWER)
    r = admin.post("/admin/accounts/boss/delete", data={"confirmed": "1", "csrf_token": token})
    assert r.status_code == 302 and "boss" in access.usernames(ADMIN)
    # Deleting asks first (a plain form), then ends her session.
    r = admin.get("/admin/accounts/vic/delete")
    assert r.status_code == 200 and 'name="confirmed" value="1"' in r.get_data(as_text=True)
    assert "vic" in access.usernames(ADMIN)
    admin.post("/admin/accounts/vic/delete", data={"confirmed": "1", "csrf_token": token})
    assert "vic" not in access.usernames(ADMIN)
    assert vic.get("/admin/search").status_code == 302


def test_error_pages_are_dashboard_pages(app: Flask) -> None:
    client = sign_in(app, "ops")
    for path, status in (
        ("/admin/images/" + "0" * 64, 404),
        ("/admin/images/nonsense", 404),
        ("/admin/no-such-page", 404),
        ("/admin/queries/" + "0" * 64 + "/thumbnail", 404),
    ):
        r = client.get(path)
        page = r.get_data(as_text=True)
        assert r.status_code == status and r.mimetype == "text/html", path
        assert 'aria-label="Dashboard"' in page and 'id="home"' in page, path
        assert '{"error"' not in page  # no raw JSON
    r = client.get("/admin/search?page=abc")
    assert r.status_code == 200 and "page must be a whole number" in r.get_data(as_text=True)
    # A form whose token no longer matches the session: a page saying so, nothing done.
    [image_id] = _ingest(app, 1)
    r = client.post(f"/admin/images/{image_id}/delete", data={"csrf_token": "stale"})
    page = r.get_data(as_text=True)
    assert (
        r.status_code == 400 and "This form has expired" in page and "Nothing was changed" in page
    )
    assert runtime_of(app).search.record(ADMIN, image_id)
    # The dashboard's scripts still get JSON.
    r = client.get("/admin/jobs/nope", headers={"Accept": "application/json"})
    assert r.status_code == 404 and r.json["error"]["code"]


def test_destructive_actions_ask_first_without_javascript(app: Flask) -> None:
    rt = runtime_of(app)
    client = sign_in(app, "ops")
    token = csrf(client, "/admin/search")
    [image_id, other] = _ingest(app, 2)
    r = client.get(f"/admin/images/{image_id}/delete")
    assert r.status_code == 200 and "cannot be undone" in r.get_data(as_text=True)
    client.post(f"/admin/images/{image_id}/delete", data={"csrf_token": token})  # no confirm
    settle(app)
    assert rt.search.record(ADMIN, image_id)
    entry, _ = rt.moderation.add_image(ADMIN, rt.store.get(other), "c", threshold=0.999, scan=False)
    r = client.post(f"/admin/flagged/{entry.id}/remove", data={"csrf_token": token})
    assert r.status_code == 200 and "Remove the entry" in r.get_data(as_text=True)
    assert [e.id for e in rt.moderation.entries(ADMIN)] == [entry.id]
    client.post(f"/admin/flagged/{entry.id}/remove", data={"csrf_token": token, "confirmed": "1"})
    assert rt.moderation.entries(ADMIN) == []
    bad = _quarantine(app, 51)
    form = {"image_ids": bad, "action": "reject", "reason": "fake", "csrf_token": token}
    r = client.post("/admin/moderation/decide", data=form)
    page = r.get_data(as_text=True)
    # The confirmation asks why (prefilled with what the queue page said), editable there.
    assert r.status_code == 200 and "Reject 1 image(s)" in page
    assert 'id="confirm-reason" name="reason" value="fake"' in page
    assert rt.moderation.pending(ADMIN) == 1
    form["reason"] = "a counterfeit, on second look"
    r = client.post("/admin/moderation/decide", data={**form, "confirmed": "1"})
    assert r.status_code == 302 and rt.moderation.pending(ADMIN) == 0
    [event] = rt.audit.list(5, target=bad, action="image.reject")
    assert event.reason == "a counterfeit, on second look"
    # The audit log links the rejected image; its page says what became of it.
    gone = client.get(f"/admin/images/{bad}")
    text = gone.get_data(as_text=True)
    assert gone.status_code == 410 and "no longer in the catalog" in text
    assert "image.reject" in text and "a counterfeit, on second look" in text
    assert client.get(f"/admin/images/{'e' * 64}").status_code == 404  # never seen: 404
    client.post(f"/admin/images/{image_id}/delete", data={"csrf_token": token, "confirmed": "1"})
    settle(app)
    assert rt.index.count(rt.collections.images) == 1  # only the other one is left


def test_search_by_image_keeps_its_query_across_pages(app: Flask) -> None:
    ids = _ingest(app, 30)
    client = sign_in(app, "ops")
    token = csrf(client, "/admin/search")
    r = client.post(
        "/admin/search",
        data={"csrf_token": token, "file": (io.BytesIO(png_bytes(7)), "q.png")},
        content_type="multipart/form-data",
    )
    assert r.status_code == 303 and "image=" in r.location
    page1 = client.get(r.location).get_data(as_text=True)
    assert "Images like the uploaded one" in page1 and 'id="query-image"' in page1
    assert "29</strong> images ranked by similarity" in page1  # the query image is left out
    next_link = re.search(r'href="([^"]+)" rel="next"', page1)
    assert next_link
    page2 = client.get(next_link.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert "Images like the uploaded one" in page2 and 'id="query-image"' in page2
    shown = [re.findall(r'data-image-id="([0-9a-f]{64})"', p) for p in (page1, page2)]
    assert len(shown[0]) == 24 and len(shown[1]) == 5 and not set(shown[0]) & set(shown[1])
    assert set(shown[0]) | set(shown[1]) == set(ids) - {ids[7]}
    query_id = re.search(r"image=([0-9a-f]{64})", r.location)
    assert query_id
    thumb = client.get(f"/admin/queries/{query_id.group(1)}/thumbnail?size=128")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    # The ranking is the API's, from the kept bytes: independent of the dashboard.
    hits = runtime_of(app).search.by_image(ADMIN, png_bytes(7), 29)
    assert [h.image_id for h in hits] == shown[0] + shown[1]


def test_filters_warn_about_unknown_fields_and_accept_any_of(app: Flask) -> None:
    rt = runtime_of(app)
    items = [
        IngestItem(png_bytes(i), f"f{i}.png", {"colour": c, "price": p})
        for i, (c, p) in enumerate([("red", 28.85), ("blue", 10), ("green", 5)])
    ]
    rt.ingestor.ingest(ADMIN, items)
    client = sign_in(app, "ops")
    page = client.get("/admin/search?where=colr%3Dred").get_data(as_text=True)
    assert "no image has a field &#39;colr&#39;; did you mean &#39;colour&#39;?" in page
    page = client.get("/admin/search?where=price%3D28.85").get_data(as_text=True)
    assert "f0.png" in page and "f1.png" not in page and "1</strong> image · showing" in page
    page = client.get("/admin/search?where=colour%3Dred%7Cgreen").get_data(as_text=True)
    assert "f0.png" in page and "f2.png" in page and "f1.png" not in page
    page = client.get("/admin/search?q=x&page=5").get_data(as_text=True)
    assert "page 5 is past the last page of these results (1)" in page


def test_audit_log_pages_filters_and_links(app: Flask) -> None:
    rt = runtime_of(app)
    [image_id] = _ingest(app, 1)
    for n in range(60):
        rt.audit.record("user:a" if n % 2 else "user:b", "flag.edit", f"entry{n}")
    rt.audit.record("user:b", "image.delete", image_id)
    client = sign_in(app, "ops")
    first = client.get("/admin/moderation/audit").get_data(as_text=True)
    assert first.count("<tr>") == 51  # header + a page of 50
    assert f'href="/admin/images/{image_id}" class="target"' in first
    older = re.search(r'href="([^"]+)" rel="next"', first)
    assert older
    second = client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    newest = set(re.findall(r"entry\d+", first))
    rest = set(re.findall(r"entry\d+", second))
    assert not newest & rest and len(newest | rest) == 60
    only_a = client.get("/admin/moderation/audit?actor=user:a").get_data(as_text=True)
    assert only_a.count(">user:a<") == 30 and ">user:b<" not in only_a
    deletes = client.get("/admin/moderation/audit?action=image.").get_data(as_text=True)
    assert "image.delete" in deletes and "flag.edit" not in deletes
    bad = client.get("/admin/moderation/audit?before=x;drop").get_data(as_text=True)
    assert "is not an audit event id" in bad


def test_status_charts_draw_the_last_hour() -> None:
    """Rates come from differences between samples; the SVG lies inside its box."""
    from web.charts import HEIGHT, WIDTH, chart

    now = [1000.0]
    reads = iter(
        [
            Sample(now[0] - 120, 10, 4, 0),
            Sample(now[0] - 60, 70, 2, 3),
            Sample(now[0], 70, None, 3),
        ]
    )
    history = StatusHistory(lambda: next(reads), interval_s=60, clock=lambda: now[0])
    for _ in range(3):
        history.sample()
    rate, queue, failures = history.series()
    assert rate.points == [(60.0, 60.0), (0.0, 0.0)]  # 60 images in a minute, then none
    assert queue.points == [(120.0, 4.0), (60.0, 2.0)]  # the broker did not answer last
    assert failures.points == [(60.0, 3.0), (0.0, 0.0)]
    drawn = chart(rate)
    xs = [float(p.split(",")[0]) for p in drawn.points.split()]
    ys = [float(p.split(",")[1]) for p in drawn.points.split()]
    assert (
        drawn.y_max == 100
        and all(0 <= x <= WIDTH for x in xs)
        and all(0 <= y <= HEIGHT for y in ys)
    )
    assert xs[1] == WIDTH and ys[1] == drawn.bottom  # now, zero: the bottom right corner


def test_status_page_shows_tables_and_charts(app: Flask) -> None:
    from web.extension import HISTORY

    _ingest(app, 3)
    history = app.extensions[HISTORY]
    history.sample()
    time.sleep(0.05)
    _ingest(app, 2, start=10)
    history.sample()
    client = sign_in(app, "ops")
    page = client.get("/admin/status").get_data(as_text=True)
    assert page.count("<svg") == 3 and "<polyline" in page
    assert 'id="jobs"' in page and "{'" not in page  # no Python reprs


def test_api_docs_are_served_locally(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/api/docs")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "swagger-ui-bundle.js" in html and "//cdn" not in html
    assert "<script>" not in html  # no inline script: the CSP forbids it
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for src in re.findall(r'(?:src|href)="(/[^"]+)"', html):
        r = client.get(src)
        assert r.status_code == 200 and r.data, src
        r.close()
    script = client.get("/admin/static/api-docs.js")
    init = script.get_data(as_text=True)
    script.close()
    assert "/api/v1/openapi.json" in html or "data-spec" in html
    assert "validatorUrl: null" in init


def test_a_quarantined_image_page_decides_and_times_read_alike(app: Flask) -> None:
    """A moderator who opens a quarantined image from search decides there; stored times
    read one way on every page."""
    rt = runtime_of(app)
    client = sign_in(app, "ops")
    token = csrf(client, "/admin/search")
    bad = _quarantine(app, 61)
    page = client.get(f"/admin/images/{bad}").get_data(as_text=True)
    assert 'id="approve"' in page and 'id="reject"' in page
    ingested = str(rt.search.record(ADMIN, bad).payload["ingested_at"])
    assert ingested[:19].replace("T", " ") in page and ingested not in page
    form = {"image_ids": bad, "action": "approve", "csrf_token": token, "back": "/admin/moderation"}
    r = client.post("/admin/moderation/decide", data=form)
    assert r.status_code == 302 and rt.moderation.pending(ADMIN) == 0
    page = client.get(f"/admin/images/{bad}").get_data(as_text=True)
    assert 'id="approve"' not in page and "approved" in page
    entries = client.get("/admin/moderation/flagged").get_data(as_text=True)
    added = rt.moderation.entries(ADMIN)[0].added_at
    assert added[:19].replace("T", " ") in entries and added not in entries
