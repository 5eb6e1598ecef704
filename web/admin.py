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

from services.auth.principal import Principal
from services.errors import InvalidInput, SightlineError
from services.filters import parse_filters
from services.ingest.intake import IngestItem
from services.moderation.review import Decision
from services.search.service import MAX_K, SearchHit
from services.tagging.scoring import TagResult
from services.tagging.taxonomy import Taxonomy, parse_taxonomy
from web import schemas as s
from web.extension import runtime

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


@bp.after_request
def _no_store(response: Response) -> Response:
    """Dashboard pages and answers show catalog and moderation data: browsers and proxies
    must not keep them (images set their own caching)."""
    if not (response.mimetype or "").startswith("image/") and request.endpoint != "admin.static":
        response.headers["Cache-Control"] = "no-store"
    return response


def _safe_next(target: str | None) -> str:
    """Only same-site paths are followed after login."""
    if target and target.startswith("/") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.netloc and not parts.scheme:
            return target
    return url_for("admin.search")


@bp.app_context_processor
def _globals() -> dict[str, Any]:
    return {"current_user": user()}


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


@bp.get("/images/<image_id>/thumbnail")
@login_required
def thumbnail(image_id: str) -> ResponseReturnValue:
    size = request.args.get("size", "256")
    size_px = int(size) if size.isascii() and size.isdigit() and len(size) < 5 else 256
    data = runtime().search.thumbnail(caller(), image_id, size_px)
    return _cacheable(data, "image/jpeg", f"{image_id}-{size_px}")


@bp.get("/images/<image_id>/file")
@login_required
def original(image_id: str) -> ResponseReturnValue:
    data, fmt = runtime().search.original(caller(), image_id)
    return _cacheable(data, f"image/{(fmt or 'jpeg').lower()}", image_id)


def _tag_filters(dimensions: list[str]) -> tuple[list[str], dict[str, str]]:
    chosen = {d: request.values.get(f"tag_{d}", "") for d in dimensions}
    return [f"tags.{d}={v}" for d, v in chosen.items() if v], chosen


@bp.route("/search", methods=["GET", "POST"])
@login_required
def search() -> ResponseReturnValue:
    rt = runtime()
    taxonomy = rt.tagging.taxonomy(caller())
    dimensions = [d.name for d in taxonomy.dimensions] if taxonomy else []
    q = request.values.get("q", "").strip()
    where = request.values.get("where", "").strip()
    one_per = "product_id" if request.values.get("one_per") else None
    error = None
    try:
        page = PAGE.validate_python(request.values.get("page") or "1")
    except ValidationError:
        page, error = 1, f"page must be a whole number from 1 to {MAX_PAGE}"
    exprs, chosen = _tag_filters(dimensions)
    if where:
        exprs += [w.strip() for w in where.split(";") if w.strip()]
    hits: list[SearchHit] = []
    mode = "browse"
    try:
        flt = parse_filters(exprs)
        k = min(page * PER_PAGE + 1, 1000)
        upload = request.files.get("file")
        if request.method == "POST" and upload is not None and upload.filename:
            hits = rt.search.by_image(caller(), upload.read(), k, flt, one_per)
            mode = "image"
        elif q:
            hits = rt.search.text(caller(), q, k, flt, one_per)
            mode = "text"
        else:
            hits = rt.search.browse(caller(), flt, limit=k)
    except InvalidInput as e:
        error = str(e)
    start = (page - 1) * PER_PAGE
    shown = hits[start : start + PER_PAGE]
    options = {
        d.name: [label.name for label in d.labels]
        for d in (taxonomy.dimensions if taxonomy else [])
    }
    return render_template(
        "admin/search.html",
        q=q,
        where=where,
        one_per=bool(one_per),
        hits=shown,
        start=start,
        page=page,
        has_next=len(hits) > start + PER_PAGE,
        mode=mode,
        options=options,
        chosen=chosen,
        link_args={
            "q": q,
            "where": where,
            **({"one_per": 1} if one_per else {}),
            **{f"tag_{d}": v for d, v in chosen.items() if v},
        },
        error=error,
    )


@bp.get("/images/<image_id>")
@login_required
def image(image_id: str) -> ResponseReturnValue:
    search = runtime().search
    record = search.record(caller(), image_id)
    similar = search.similar(caller(), image_id, k=8)
    payload = record.payload
    metadata = {
        k: v
        for k, v in payload.items()
        if k not in ("tags", "tag_scores", "moderation", "phash", "taxonomy_version", "image_id")
    }
    return render_template(
        "admin/image.html",
        image_id=image_id,
        payload=payload,
        metadata=metadata,
        tag_scores=payload.get("tag_scores") or {},
        tags=payload.get("tags") or {},
        moderation=payload.get("moderation") or {},
        status=payload.get("moderation_status", "clear"),
        similar=similar,
    )


@bp.post("/images/<image_id>/delete")
@login_required
def delete(image_id: str) -> ResponseReturnValue:
    job_id = runtime().uploads.delete(caller(), [image_id])
    flash(f"Deleting {image_id[:12]}… (job {job_id[:8]})")
    return redirect(url_for("admin.search"))


# -- upload ----------------------------------------------------------------------------


@bp.get("/upload")
@login_required
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
    data["items"] = jobs.items(caller(), job_id)
    return jsonify(data)


# -- taxonomy --------------------------------------------------------------------------


@bp.route("/taxonomy", methods=["GET", "POST"])
@login_required
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
def moderation() -> ResponseReturnValue:
    moderation = runtime().moderation
    records, _ = moderation.queue(caller(), limit=100)
    entries = {e.id: e for e in moderation.entries(caller())}
    queue = []
    for r in records:
        matches = (r.payload.get("moderation") or {}).get("matches", [])
        queue.append((r.payload, [(m, entries.get(m["entry_id"])) for m in matches]))
    return render_template(
        "admin/moderation.html",
        queue=queue,
        entries=list(entries.values()),
        audit=moderation.audit_log(caller(), limit=50),
        pending=moderation.pending(caller()),
    )


@bp.post("/moderation/decide")
@login_required
def decide() -> ResponseReturnValue:
    ids = request.form.getlist("image_ids")
    action = request.form.get("action", "")
    if not ids or action not in ("approve", "reject"):
        flash("Select at least one image, then approve or reject.")
        return redirect(url_for("admin.moderation"))
    results = runtime().moderation.decide(
        caller(),
        ids,
        Decision(action),
        request.form.get("reason") or None,
        add_to_flagged=bool(request.form.get("add_to_flagged")),
    )
    done = sum(r.ok for r in results)
    flash(f"{action.capitalize()}d {done} of {len(results)} image(s).")
    return redirect(url_for("admin.moderation"))


@bp.post("/flagged")
@login_required
def flag_add() -> ResponseReturnValue:
    moderation = runtime().moderation
    upload = request.files.get("file")
    fields = {k: v.strip() for k, v in request.form.items() if k in FLAG_FIELDS and v.strip()}
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
        return redirect(url_for("admin.moderation"))
    except SightlineError as e:
        flash(f"Not added: {e}")
        return redirect(url_for("admin.moderation"))
    flash(
        f"Added a {entry.kind.value} entry ({entry.category}); "
        f"scanning the catalog (job {(job_id or '')[:8]})."
    )
    return redirect(url_for("admin.moderation"))


@bp.post("/flagged/<entry_id>/remove")
@login_required
def flag_remove(entry_id: str) -> ResponseReturnValue:
    entry = runtime().moderation.remove(caller(), entry_id)
    flash(f"Removed the {entry.category} entry.")
    return redirect(url_for("admin.moderation"))


# -- status ----------------------------------------------------------------------------


@bp.get("/status")
@login_required
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
    )
