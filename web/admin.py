"""``/admin``: the dashboard for catalog admins and the moderation team.

Server-rendered pages (Jinja) over the same services the API uses, behind a login with a
signed session cookie and CSRF tokens (Flask-WTF) on every form and script request. The
few scripts (drag-and-drop, upload progress, job polling) are plain files under
``web/static``: no CDN, no build step.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from pydantic import Field, TypeAdapter, ValidationError

from services.auth.principal import Principal, Role, Scope
from services.errors import Forbidden, InvalidInput, NotFound, SightlineError
from services.filters import parse_filters
from services.ids import is_image_id
from services.ingest.intake import IngestItem
from services.moderation.review import Decision
from services.search.service import MAX_K, SearchHit
from services.tagging.scoring import TagResult
from services.tagging.taxonomy import Taxonomy, parse_taxonomy
from web import schemas as s
from web.charts import chart
from web.extension import HISTORY, runtime

bp = Blueprint(
    "admin",
    __name__,
    url_prefix="/admin",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
PER_PAGE = 24
MAX_PAGE = MAX_K // PER_PAGE
PAGE = TypeAdapter(Annotated[int, Field(ge=1, le=MAX_PAGE)])
QUEUE_PAGE = 12
AUDIT_PAGE = 50
JOB_STATUS_ITEMS = 50  # a job this small gets each upload's moderation state in its JSON
FLAG_FIELDS = ("category", "threshold", "note")


def _describe(err: ValidationError) -> str:
    """A validation error as one line naming each field."""
    return "; ".join(
        f"{'.'.join(str(p) for p in d['loc']) or 'form'}: {d['msg']}" for d in err.errors()
    )


SAMPLE_IMAGES = 6
EXAMPLE_TAXONOMY = """dimensions:
  - name: colour
    labels: [red, blue, green, black, white]
  - name: style
    multi_label: true
    labels:
      - name: summer
        prompts: ["a light summer outfit"]
      - formal
"""


def user() -> str | None:
    """The logged-in account, if its session is still open."""
    principal = _session_principal()
    return principal.name.removeprefix("user:") if principal is not None else None


def _session_principal() -> Principal | None:
    """The session's user, checked once per request against the open sessions (a cookie
    kept after logout or a password change is refused)."""
    if "dashboard_user" not in g:
        name, nonce = session.get("user"), session.get("nonce")
        found = runtime().access.session(name, nonce) if name and nonce else None
        if found is None and name:
            session.clear()
        g.dashboard_user = found
    principal: Principal | None = g.dashboard_user
    return principal


def caller() -> Principal:
    """The logged-in user as the services see them."""
    principal = _session_principal()
    assert principal is not None  # login_required ran
    return principal


def login_required(view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
    """Redirect to the login page (or 401 for scripts) without an open session."""

    @functools.wraps(view)
    def wrapped(**kwargs: Any) -> ResponseReturnValue:
        if _session_principal() is None:
            if request.accept_mimetypes.best == "application/json" or request.is_json:
                return jsonify({"error": {"code": "unauthorized", "message": "log in"}}), 401
            return redirect(url_for("admin.login", next=request.full_path))
        return view(**kwargs)

    return wrapped


def needs(
    scope: Scope,
) -> Callable[[Callable[..., ResponseReturnValue]], Callable[..., ResponseReturnValue]]:
    """A page or action for roles holding ``scope`` (after ``login_required``); others
    get the dashboard's 403 page. Services check again."""

    def decorate(view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
        @functools.wraps(view)
        def wrapped(**kwargs: Any) -> ResponseReturnValue:
            if not caller().allows(scope):
                roles = [r.value for r in Role if Principal("", r.scopes).allows(scope)]
                raise Forbidden(
                    f"this page is for {' and '.join(f'{r}s' for r in roles)}; "
                    "an admin can change your role"
                )
            return view(**kwargs)

        return wrapped

    return decorate


@bp.after_request
def _no_store(response: Response) -> Response:
    """Dashboard pages and answers show catalog and moderation data: browsers and proxies
    must not keep them (images set their own caching)."""
    if not (response.mimetype or "").startswith("image/") and request.endpoint != "admin.static":
        response.headers["Cache-Control"] = "no-store"
    return response


def _safe_next(target: str | None) -> str:
    """Only same-site paths are followed after login. Browsers read a backslash as a
    slash (``/\\evil.example`` is ``//evil.example``) and drop control characters, so a
    target holding either is refused too."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and not any(ord(c) < 32 or ord(c) == 127 for c in target)
    ):
        parts = urlsplit(target)
        if not parts.netloc and not parts.scheme:
            return target
    return url_for("admin.search")


@bp.app_template_filter("when")
def _when(value: object) -> str:
    """One way to show a stored time everywhere: ``2026-12-06 06:58:11`` (UTC), from the
    ISO strings the stores keep."""
    text = str(value or "")
    return text[:19].replace("T", " ") if len(text) >= 19 and text[10] == "T" else text


@bp.app_context_processor
def _globals() -> dict[str, Any]:
    try:
        principal = _session_principal()
    except SightlineError:  # an error page while the account store is down
        principal = None

    def can(scope: str) -> bool:
        return principal is not None and principal.allows(Scope(scope))

    name = principal.name.removeprefix("user:") if principal is not None else None
    return {"current_user": name, "can": can}


# -- session ---------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    error = None
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        nonce = runtime().access.login(username, password)
        if nonce is not None:
            session.clear()
            session.update(user=username, nonce=nonce)
            session.permanent = True
            return redirect(_safe_next(request.args.get("next")))
        error = "Wrong username or password."
        time.sleep(0.2)  # a little friction against guessing, on top of the rate limit
    return render_template("admin/login.html", error=error), 401 if error else 200


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    name, nonce = session.get("user"), session.get("nonce")
    if name and nonce:
        runtime().access.logout(name, nonce)
    session.clear()
    return redirect(url_for("admin.login"))


@bp.get("/")
@login_required
def home() -> ResponseReturnValue:
    return redirect(url_for("admin.search"))


# -- images ----------------------------------------------------------------------------


# Image ids are content hashes: the bytes behind a URL never change, so browsers may keep
# them (privately: what a user may see is decided per request) and revalidate by ETag.
IMMUTABLE = "private, max-age=604800, immutable"


def _cacheable(data: bytes, mimetype: str, tag: str) -> ResponseReturnValue:
    response = Response(data, mimetype=mimetype, headers={"Cache-Control": IMMUTABLE})
    response.set_etag(tag)
    return response.make_conditional(request)  # 304 when the browser already has it


def _size() -> int:
    size = request.args.get("size", "256")
    return int(size) if size.isascii() and size.isdigit() and len(size) < 5 else 256


@bp.get("/images/<image_id>/thumbnail")
@login_required
def thumbnail(image_id: str) -> ResponseReturnValue:
    size_px = _size()
    data = runtime().search.thumbnail(caller(), image_id, size_px)
    return _cacheable(data, "image/jpeg", f"{image_id}-{size_px}")


@bp.get("/queries/<query_id>/thumbnail")
@login_required
def query_thumbnail(query_id: str) -> ResponseReturnValue:
    size_px = _size()
    data = runtime().search.query_thumbnail(caller(), query_id, size_px)
    return _cacheable(data, "image/jpeg", f"q-{query_id}-{size_px}")


@bp.get("/images/<image_id>/file")
@login_required
def original(image_id: str) -> ResponseReturnValue:
    data, fmt = runtime().search.original(caller(), image_id)
    return _cacheable(data, f"image/{(fmt or 'jpeg').lower()}", image_id)


def _tag_filters(dimensions: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Each dimension's chosen labels (a repeated parameter means any of them)."""
    chosen = {d: [v for v in request.values.getlist(f"tag_{d}") if v] for d in dimensions}
    return [f"tags.{d}=" + "|".join(v) for d, v in chosen.items() if v], chosen


@bp.route("/search", methods=["GET", "POST"])
@login_required
def search() -> ResponseReturnValue:
    rt = runtime()
    taxonomy = rt.tagging.taxonomy(caller())
    dimensions = [d.name for d in taxonomy.dimensions] if taxonomy else []
    q = request.values.get("q", "").strip()
    where = request.values.get("where", "").strip()
    query_image = request.values.get("image", "").strip().lower() or None
    one_per = "product_id" if request.values.get("one_per") else None
    exprs, chosen = _tag_filters(dimensions)
    link_args: dict[str, Any] = {
        "q": q,
        "where": where,
        **({"one_per": 1} if one_per else {}),
        **{f"tag_{d}": v for d, v in chosen.items() if v},
    }
    upload = request.files.get("file")
    if request.method == "POST" and upload is not None and upload.filename:
        # Kept by id so that the result pages (and a reload) are plain links: POST,
        # then redirect to a GET that names the query image.
        try:
            kept = rt.search.keep_query_image(caller(), upload.read())
        except InvalidInput as e:
            flash(f"That image cannot be searched with: {e}")
            return redirect(url_for("admin.search", **link_args))
        return redirect(url_for("admin.search", image=kept, **{**link_args, "q": ""}), 303)
    error = None
    try:
        page = PAGE.validate_python(request.values.get("page") or "1")
    except ValidationError:
        page, error = 1, f"page must be a whole number from 1 to {MAX_PAGE}"
    if where:
        exprs += [w.strip() for w in where.split(";") if w.strip()]
    hits: list[SearchHit] = []
    total: int | None = None
    warnings: list[str] = []
    mode = "image" if query_image else "text" if q else "browse"
    start = (page - 1) * PER_PAGE
    try:
        flt = parse_filters(exprs)
        warnings = rt.search.unknown_fields(caller(), flt)
        k = min(start + PER_PAGE + 1, MAX_K)
        if query_image:
            hits = rt.search.by_kept_image(caller(), query_image, k, flt, one_per)
        elif q:
            hits = rt.search.text(caller(), q, k, flt, one_per)
        else:
            hits = rt.search.browse(caller(), flt, limit=k)
        total = rt.search.count(caller(), flt, query_image)
    except InvalidInput as e:
        error = str(e)
    except NotFound as e:  # a query image no longer kept
        error, mode, query_image = str(e), "browse", None
    if query_image:
        link_args = {**link_args, "image": query_image, "q": ""}
    shown = hits[start : start + PER_PAGE]
    if not shown and page > 1 and total and error is None:
        # One per product counts groups, not the images ``total`` counts: no number then.
        last = "" if one_per else f" ({min(MAX_PAGE, -(-total // PER_PAGE))})"
        error = f"page {page} is past the last page of these results{last}"
    options = {
        d.name: [label.name for label in d.labels]
        for d in (taxonomy.dimensions if taxonomy else [])
    }
    best = hits[0].score if hits else 1.0  # bars relative to the best match of the search
    return render_template(
        "admin/search.html",
        q=q,
        where=where,
        one_per=bool(one_per),
        hits=shown,
        start=start,
        page=page,
        total=total,
        best=best,
        has_next=len(hits) > start + PER_PAGE,
        mode=mode,
        query_image=query_image,
        options=options,
        chosen=chosen,
        link_args=link_args,
        warnings=warnings,
        error=error,
    )


@bp.get("/images/<image_id>")
@login_required
def image(image_id: str) -> ResponseReturnValue:
    search = runtime().search
    try:
        record = search.record(caller(), image_id)
    except NotFound:
        gone = _history(image_id)
        if not gone:
            raise
        # An image a moderator rejected or someone deleted: say what became of it (the
        # audit log links here) rather than a bare "not found".
        return render_template("admin/gone.html", image_id=image_id, events=gone), 410
    similar = search.similar(caller(), image_id, k=8)
    payload = record.payload
    metadata = {
        k: v
        for k, v in payload.items()
        if k not in ("tags", "tag_scores", "moderation", "phash", "taxonomy_version", "image_id")
    }
    return render_template(
        "admin/image.html",
        image_id=str(payload.get("image_id", image_id)),
        payload=payload,
        metadata=metadata,
        tag_scores=payload.get("tag_scores") or {},
        tags=payload.get("tags") or {},
        moderation=payload.get("moderation") or {},
        status=payload.get("moderation_status", "clear"),
        similar=similar,
    )


def _history(image_id: str) -> list[Any]:
    """The audit events about an image id, newest first, for a caller who may read the
    audit log; empty for anyone else or an id the log never saw."""
    if not is_image_id(image_id) or not caller().allows(Scope.MODERATE):
        return []
    return runtime().moderation.audit_log(caller(), 20, target=image_id)


def _confirm(
    title: str,
    message: str,
    action: str,
    button: str,
    cancel: str,
    fields: list[tuple[str, str]] | None = None,
    images: list[str] | None = None,
    reason: str | None = None,
) -> ResponseReturnValue:
    """A page asking to confirm a destructive action: a plain form that posts again with
    ``confirmed=1``, so it works without JavaScript. With ``reason`` (possibly empty) it
    also asks why, focused, so that typing a reason then Enter confirms."""
    return render_template(
        "admin/confirm.html",
        title=title,
        message=message,
        action=action,
        button=button,
        cancel=cancel,
        fields=fields or [],
        images=images or [],
        reason=reason,
    )


def _confirmed() -> bool:
    return request.method == "POST" and request.form.get("confirmed") == "1"


@bp.route("/images/<image_id>/delete", methods=["GET", "POST"])
@login_required
@needs(Scope.INGEST)
def delete(image_id: str) -> ResponseReturnValue:
    record = runtime().search.record(caller(), image_id)  # 404 before asking
    image_id = str(record.payload.get("image_id", image_id))
    if not _confirmed():
        name = record.payload.get("title") or record.payload.get("filename") or image_id[:12]
        return _confirm(
            "Delete this image?",
            f"“{name}” will be removed from the catalog, with its original and thumbnails. "
            "This cannot be undone.",
            url_for("admin.delete", image_id=image_id),
            "Delete the image",
            url_for("admin.image", image_id=image_id),
            images=[image_id],
        )
    job_id = runtime().uploads.delete(caller(), [image_id])
    flash(f"Deleting {image_id[:12]}… (job {job_id[:8]})")
    return redirect(url_for("admin.search"))


# -- upload ----------------------------------------------------------------------------


@bp.get("/upload")
@login_required
@needs(Scope.INGEST)
def upload_page() -> ResponseReturnValue:
    return render_template("admin/upload.html")


@bp.post("/upload")
@login_required
def upload() -> ResponseReturnValue:
    """One request per file (the page shows each file's progress); JSON answer."""
    files = request.files.getlist("files")
    urls = [u.strip() for u in request.form.get("urls", "").splitlines() if u.strip()]
    if urls:
        job_id = runtime().uploads.ingest_urls(caller(), urls, {})
        return jsonify({"job_id": job_id, "accepted": [], "refused": []}), 202
    if not files:
        return jsonify({"error": {"code": "validation_error", "message": "no file"}}), 422
    items = [IngestItem(f.read(), f.filename, {}) for f in files]
    try:
        receipt = runtime().uploads.upload(caller(), items)
    except InvalidInput as e:
        return jsonify({"error": {"code": e.code, "message": str(e)}}), 422
    body = {"job_id": receipt.job_id, "accepted": receipt.accepted, "refused": receipt.refused}
    return jsonify(body), 202


@bp.get("/jobs/<job_id>")
@login_required
def job(job_id: str) -> ResponseReturnValue:
    jobs = runtime().jobs
    data = jobs.get(caller(), job_id).as_dict()
    items = jobs.items(caller(), job_id)
    if len(items) <= JOB_STATUS_ITEMS:
        # The upload page says when an upload it sent was quarantined, not just "done".
        search = runtime().search
        for item in items:
            if item.get("state") == "done" and item.get("image_id"):
                try:
                    payload = search.record(caller(), str(item["image_id"])).payload
                except NotFound:
                    continue
                item["moderation_status"] = payload.get("moderation_status", "clear")
    data["items"] = items
    return jsonify(data)


# -- taxonomy --------------------------------------------------------------------------


@bp.route("/taxonomy", methods=["GET", "POST"])
@login_required
@needs(Scope.ADMIN)
def taxonomy() -> ResponseReturnValue:
    tagging = runtime().tagging
    current = tagging.taxonomy(caller())
    text = request.form.get("yaml") or (current.to_yaml() if current else EXAMPLE_TAXONOMY)
    error = None
    preview: list[tuple[str, TagResult]] = []
    job_id = request.args.get("job")
    if request.method == "POST":
        try:
            proposed: Taxonomy = parse_taxonomy(text)
        except SightlineError as e:
            error = str(e)
        else:
            if request.form.get("action") == "save":
                version, job_id = tagging.replace(caller(), proposed, retag=True)
                flash(f"Taxonomy {version} saved; re-tagging the catalog.")
                return redirect(url_for("admin.taxonomy", job=job_id))
            preview = tagging.preview(caller(), proposed, SAMPLE_IMAGES)
    return render_template(
        "admin/taxonomy.html",
        text=text,
        error=error,
        preview=preview,
        version=current.version if current else None,
        job_id=job_id,
    )


# -- moderation ------------------------------------------------------------------------


@bp.get("/moderation")
@login_required
@needs(Scope.MODERATE)
def moderation() -> ResponseReturnValue:
    """The review queue, a page at a time (``after``: the previous page's cursor)."""
    moderation = runtime().moderation
    after = request.args.get("after") or None
    try:
        records, next_cursor = moderation.queue(caller(), limit=QUEUE_PAGE, offset=after)
    except InvalidInput:
        records, next_cursor = moderation.queue(caller(), limit=QUEUE_PAGE)
        after = None
        flash("That page of the queue is gone; showing the first page.")
    entries = {e.id: e for e in moderation.entries(caller())}
    queue = []
    for r in records:
        matches = (r.payload.get("moderation") or {}).get("matches", [])
        queue.append((r.payload, [(m, entries.get(m["entry_id"])) for m in matches]))
    return render_template(
        "admin/moderation.html",
        queue=queue,
        pending=moderation.pending(caller()),
        after=after,
        next_cursor=next_cursor,
    )


@bp.post("/moderation/decide")
@login_required
@needs(Scope.MODERATE)
def decide() -> ResponseReturnValue:
    ids = request.form.getlist("image_ids")
    action = request.form.get("action", "")
    back = _safe_next(request.form.get("back") or url_for("admin.moderation"))
    if not ids or action not in ("approve", "reject"):
        flash("Select at least one image, then approve or reject.")
        return redirect(back)
    reason = request.form.get("reason") or ""
    add = request.form.get("add_to_flagged") or ""
    if action == "reject" and not _confirmed():
        fields = [("image_ids", i) for i in ids]
        fields += [("action", "reject"), ("add_to_flagged", add), ("back", back)]
        also = " Their images join the flagged set." if add else ""
        return _confirm(
            f"Reject {len(ids)} image(s)?",
            "Rejected images are removed from the catalog with their originals; "
            f"the audit log keeps the decision and its reason.{also}",
            url_for("admin.decide"),
            f"Reject {len(ids)} image(s)",
            back,
            fields,
            ids,
            reason=reason,
        )
    results = runtime().moderation.decide(
        caller(), ids, Decision(action), reason or None, add_to_flagged=bool(add)
    )
    done = sum(r.ok for r in results)
    flash(f"{'Approved' if action == 'approve' else 'Rejected'} {done} of {len(results)} image(s).")
    return redirect(back)


@bp.get("/moderation/flagged")
@login_required
@needs(Scope.MODERATE)
def flagged() -> ResponseReturnValue:
    return render_template("admin/flagged.html", entries=runtime().moderation.entries(caller()))


@bp.post("/flagged")
@login_required
@needs(Scope.MODERATE)
def flag_add() -> ResponseReturnValue:
    moderation = runtime().moderation
    upload = request.files.get("file")
    fields = {k: v.strip() for k, v in request.form.items() if k in FLAG_FIELDS and v.strip()}
    back = url_for("admin.flagged")
    try:
        # The API's schemas: a form cannot do what the API refuses.
        if upload is not None and upload.filename:
            options: s.FlagOptions = s.FlagOptions.model_validate(fields)
            entry, job_id = moderation.add_image(
                caller(), upload.read(), options.category, "upload", options.threshold, options.note
            )
        else:
            body = s.FlagBody.model_validate({**fields, "text": request.form.get("text", "")})
            assert body.text is not None  # validated: exactly one source
            entry, job_id = moderation.add_text(
                caller(), body.text, body.category, body.threshold, body.note
            )
    except ValidationError as e:
        flash(f"Not added: {_describe(e)}")
        return redirect(back)
    except SightlineError as e:
        flash(f"Not added: {e}")
        return redirect(back)
    flash(
        f"Added a {entry.kind.value} entry ({entry.category}); "
        f"scanning the catalog (job {(job_id or '')[:8]})."
    )
    return redirect(back)


@bp.route("/flagged/<entry_id>/remove", methods=["GET", "POST"])
@login_required
@needs(Scope.MODERATE)
def flag_remove(entry_id: str) -> ResponseReturnValue:
    moderation = runtime().moderation
    entry = next((e for e in moderation.entries(caller()) if e.id == entry_id), None)
    if entry is None:
        raise NotFound(f"no flagged entry {entry_id!r}")
    if not _confirmed():
        what = f"the text concept “{entry.source}”" if entry.kind.value == "text" else "this image"
        return _confirm(
            f"Remove a {entry.category} entry?",
            f"New uploads will no longer be checked against {what}. Images it already "
            "quarantined stay in the review queue.",
            url_for("admin.flag_remove", entry_id=entry_id),
            "Remove the entry",
            url_for("admin.flagged"),
        )
    moderation.remove(caller(), entry_id)
    flash(f"Removed the {entry.category} entry.")
    return redirect(url_for("admin.flagged"))


def _audit_link(target: str) -> str | None:
    """Where an audit target can be seen in the dashboard, if anywhere."""
    if is_image_id(target):
        return url_for("admin.image", image_id=target)
    if target.startswith("user:") and caller().is_admin:
        return url_for("admin.accounts")
    return None


@bp.get("/moderation/audit")
@login_required
@needs(Scope.MODERATE)
def audit() -> ResponseReturnValue:
    """The audit log, newest first, filtered by actor, action (a prefix) and target, and
    paged by the last event id shown."""
    filters = {
        k: (request.args.get(k) or "").strip() or None for k in ("actor", "action", "target")
    }
    before = request.args.get("before") or None
    error = None
    try:
        events = runtime().moderation.audit_log(
            caller(), AUDIT_PAGE + 1, filters["target"], filters["actor"], filters["action"], before
        )
    except InvalidInput as e:
        events, error = [], str(e)
    more = len(events) > AUDIT_PAGE
    events = events[:AUDIT_PAGE]
    return render_template(
        "admin/audit.html",
        events=[(e, _audit_link(e.target)) for e in events],
        filters={k: v or "" for k, v in filters.items()},
        link_args={k: v for k, v in filters.items() if v},
        next_before=events[-1].id if more and events else None,
        paged=before is not None,
        error=error,
    )


# -- accounts --------------------------------------------------------------------------


@bp.route("/accounts", methods=["GET", "POST"])
@login_required
@needs(Scope.ADMIN)
def accounts() -> ResponseReturnValue:
    access = runtime().access
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        try:
            role = Role(request.form.get("role", ""))
            if request.form.get("action") == "create":
                access.create_account(caller(), username, request.form.get("password", ""), role)
                flash(f"Created {role} account {username!r}.")
            else:
                access.set_role(caller(), username, role)
                flash(f"{username!r} is now a {role}.")
        except ValueError:
            flash("Choose a role: viewer, moderator or admin.")
        except SightlineError as e:
            flash(f"Not changed: {e}")
        return redirect(url_for("admin.accounts"))
    return render_template(
        "admin/accounts.html", accounts=access.accounts_list(caller()), roles=list(Role)
    )


@bp.route("/accounts/<username>/delete", methods=["GET", "POST"])
@login_required
@needs(Scope.ADMIN)
def account_delete(username: str) -> ResponseReturnValue:
    access = runtime().access
    if username not in access.usernames(caller()):
        raise NotFound(f"no account {username!r}")
    if not _confirmed():
        return _confirm(
            f"Delete the account {username!r}?",
            "They are signed out at once and can no longer log in. The audit log keeps what "
            "they did.",
            url_for("admin.account_delete", username=username),
            "Delete the account",
            url_for("admin.accounts"),
        )
    try:
        access.delete_account(caller(), username)
        flash(f"Deleted the account {username!r}.")
    except SightlineError as e:
        flash(f"Not deleted: {e}")
    return redirect(url_for("admin.accounts"))


@bp.route("/account", methods=["GET", "POST"])
@login_required
def account() -> ResponseReturnValue:
    """Every user changes their own password here; other sessions of theirs end."""
    error = None
    if request.method == "POST":
        new = request.form.get("new", "")
        if new != request.form.get("repeat", ""):
            error = "The two new passwords differ."
        else:
            name = user() or ""
            try:
                nonce = runtime().access.change_password(
                    caller(), name, request.form.get("current", ""), new
                )
            except SightlineError as e:
                error = str(e)
            else:
                session["nonce"] = nonce
                flash("Password changed; your other sessions were signed out.")
                return redirect(url_for("admin.account"))
    role = next((a.role for a in runtime().access.accounts.all() if a.username == user()), None)
    return render_template("admin/account.html", error=error, role=role), 422 if error else 200


# -- status ----------------------------------------------------------------------------


@bp.get("/status")
@login_required
@needs(Scope.ADMIN)
def status() -> ResponseReturnValue:
    rt = runtime()
    encoder = rt.encoder
    counts = {name: rt.index.count(name) for name in rt.collections.all()}
    try:
        queues: dict[str, Any] = dict(rt.dispatcher.queue_depths())
        workers = rt.dispatcher.workers(timeout_s=1.0)
    except Exception as e:  # a down broker must not break the status page
        queues, workers = {}, [f"unknown ({e})"]
    jobs = rt.jobs.recent(caller(), 20)
    failures = [(j, i) for j in jobs for i in rt.jobs.failed_items(caller(), j.id)][:20]
    history = current_app.extensions[HISTORY]
    return render_template(
        "admin/status.html",
        identity=encoder.identity,
        family=encoder.family.value,
        scale=encoder.logit_scale,
        counts=counts,
        queues=queues,
        workers=workers,
        jobs=jobs,
        failures=failures,
        pending=rt.moderation.pending(caller()),
        charts=[chart(series) for series in history.series()],
    )
