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
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue

from services.errors import InvalidImage, InvalidMetadata, NotFound, SightlineError
from services.filters import parse_filters
from services.ids import is_image_id
from services.ingest import IngestItem
from services.labels import embed_taxonomy
from services.review import Decision
from services.search import SearchHit
from services.tagging import score_vectors
from services.taxonomy import Taxonomy, parse_taxonomy
from web.api import ext

bp = Blueprint(
    "admin",
    __name__,
    url_prefix="/admin",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
PER_PAGE = 24
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
    """The logged-in account, if any."""
    return session.get("user")


def login_required(view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
    """Redirect to the login page (or 401 for scripts) without a session."""

    @functools.wraps(view)
    def wrapped(**kwargs: Any) -> ResponseReturnValue:
        if user() is None:
            if request.accept_mimetypes.best == "application/json" or request.is_json:
                return jsonify({"error": {"code": "unauthorized", "message": "log in"}}), 401
            return redirect(url_for("admin.login", next=request.full_path))
        return view(**kwargs)

    return wrapped


def _safe_next(target: str | None) -> str:
    """Only same-site paths are followed after login."""
    if target and target.startswith("/") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.netloc and not parts.scheme:
            return target
    return url_for("admin.search")


def _actor() -> str:
    return f"user:{user()}"


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
        account = ext().accounts.authenticate(username, password)
        if account is not None:
            session.clear()
            session["user"] = account.username
            session.permanent = True
            return redirect(_safe_next(request.args.get("next")))
        error = "Wrong username or password."
        time.sleep(0.2)  # a little friction against guessing, on top of the rate limit
    return render_template("admin/login.html", error=error), 401 if error else 200


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    session.clear()
    return redirect(url_for("admin.login"))


@bp.get("/")
@login_required
def home() -> ResponseReturnValue:
    return redirect(url_for("admin.search"))


# -- images ----------------------------------------------------------------------------


@bp.get("/images/<image_id>/thumbnail")
@login_required
def thumbnail(image_id: str) -> ResponseReturnValue:
    size = request.args.get("size", "256")
    data = ext().services.thumbnails.get(image_id, int(size) if size.isdigit() else 256)
    return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@bp.get("/images/<image_id>/file")
@login_required
def original(image_id: str) -> ResponseReturnValue:
    record = ext().services.search.record(image_id)
    data = ext().services.store.get(str(record.payload["image_id"]))
    mime = f"image/{str(record.payload.get('format', 'jpeg')).lower()}"
    return Response(data, mimetype=mime, headers={"Cache-Control": "private, max-age=3600"})


def _tag_filters(dimensions: list[str]) -> tuple[list[str], dict[str, str]]:
    chosen = {d: request.values.get(f"tag_{d}", "") for d in dimensions}
    return [f"tags.{d}={v}" for d, v in chosen.items() if v], chosen


@bp.route("/search", methods=["GET", "POST"])
@login_required
def search() -> ResponseReturnValue:
    services = ext().services
    taxonomy = services.labels.store.get()
    dimensions = [d.name for d in taxonomy.dimensions] if taxonomy else []
    q = request.values.get("q", "").strip()
    where = request.values.get("where", "").strip()
    one_per = "product_id" if request.values.get("one_per") else None
    page = max(1, int(request.values.get("page", "1") or 1))
    exprs, chosen = _tag_filters(dimensions)
    if where:
        exprs += [w.strip() for w in where.split(";") if w.strip()]
    hits: list[SearchHit] = []
    error = None
    mode = "browse"
    try:
        flt = parse_filters(exprs)
        k = min(page * PER_PAGE + 1, 1000)
        upload = request.files.get("file")
        if request.method == "POST" and upload is not None and upload.filename:
            hits = services.search.by_image(upload.read(), k, flt, one_per)
            mode = "image"
        elif q:
            hits = services.search.text(q, k, flt, one_per)
            mode = "text"
        else:
            records, _ = services.index.scroll(
                services.collections.images, flt if not flt.is_empty() else None, limit=k
            )
            hits = [SearchHit(str(r.payload.get("image_id")), 0.0, r.payload) for r in records]
    except (SightlineError, ValueError) as e:
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
    services = ext().services
    if not is_image_id(image_id):
        raise NotFound(f"not an image id: {image_id!r}")
    record = services.search.record(image_id)
    similar = services.search.similar(image_id, k=8)
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
    ext().services.search.record(image_id)
    job_id = ext().uploads.delete([image_id])
    ext().services.audit.record(_actor(), "image.delete", image_id, None, {"job": job_id})
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
        job_id = ext().uploads.ingest_urls(urls, {})
        return jsonify({"job_id": job_id, "accepted": [], "refused": []}), 202
    if not files:
        return jsonify({"error": {"code": "validation_error", "message": "no file"}}), 422
    try:
        receipt = ext().uploads.upload([IngestItem(f.read(), f.filename, {}) for f in files])
    except (InvalidImage, InvalidMetadata) as e:
        return jsonify({"error": {"code": e.code, "message": str(e)}}), 422
    body = {"job_id": receipt.job_id, "accepted": receipt.accepted, "refused": receipt.refused}
    return jsonify(body), 202


@bp.get("/jobs/<job_id>")
@login_required
def job(job_id: str) -> ResponseReturnValue:
    uploads = ext().uploads
    data = uploads.job(job_id).as_dict()
    data["items"] = [
        {"item": i.key, "state": i.state.value, "reason": i.reason, "image_id": i.image_id}
        for i in ext().runtime.jobs.items(job_id)
    ]
    return jsonify(data)


# -- taxonomy --------------------------------------------------------------------------


def _samples() -> list[tuple[str, Any]]:
    services = ext().services
    records, _ = services.index.scroll(
        services.collections.images, limit=SAMPLE_IMAGES, with_vectors=True
    )
    return [(str(r.payload["image_id"]), r.vector) for r in records]


@bp.route("/taxonomy", methods=["GET", "POST"])
@login_required
def taxonomy() -> ResponseReturnValue:
    services = ext().services
    current = services.labels.store.get()
    text = request.form.get("yaml") or (current.to_yaml() if current else EXAMPLE_TAXONOMY)
    error = None
    preview: list[tuple[str, Any]] = []
    job_id = request.args.get("job")
    if request.method == "POST":
        try:
            proposed: Taxonomy = parse_taxonomy(text)
        except SightlineError as e:
            error = str(e)
        else:
            if request.form.get("action") == "save":
                version = services.replace_taxonomy(proposed)
                job_id = ext().uploads.retag(version)
                services.audit.record(_actor(), "taxonomy.replace", version, None, {"job": job_id})
                flash(f"Taxonomy {version} saved; re-tagging the catalog.")
                return redirect(url_for("admin.taxonomy", job=job_id))
            samples = _samples()
            if samples:
                import numpy as np

                vectors = np.stack([np.asarray(v, dtype=np.float32) for _, v in samples])
                results = score_vectors(
                    services.encoder, vectors, embed_taxonomy(services.encoder, proposed)
                )
                preview = [(image_id, r) for (image_id, _), r in zip(samples, results, strict=True)]
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
    services = ext().services
    records, _ = services.review.queue(limit=100)
    entries = {e.id: e for e in services.flagged.entries()}
    queue = []
    for r in records:
        matches = (r.payload.get("moderation") or {}).get("matches", [])
        queue.append((r.payload, [(m, entries.get(m["entry_id"])) for m in matches]))
    return render_template(
        "admin/moderation.html",
        queue=queue,
        entries=list(entries.values()),
        audit=services.audit.list(limit=50),
        pending=services.review.pending(),
    )


@bp.post("/moderation/decide")
@login_required
def decide() -> ResponseReturnValue:
    ids = request.form.getlist("image_ids")
    action = request.form.get("action", "")
    if not ids or action not in ("approve", "reject"):
        flash("Select at least one image, then approve or reject.")
        return redirect(url_for("admin.moderation"))
    results = ext().services.review.decide(
        ids,
        Decision(action),
        _actor(),
        request.form.get("reason") or None,
        add_to_flagged=bool(request.form.get("add_to_flagged")),
    )
    done = sum(r.ok for r in results)
    flash(f"{action.capitalize()}d {done} of {len(results)} image(s).")
    return redirect(url_for("admin.moderation"))


@bp.post("/flagged")
@login_required
def flag_add() -> ResponseReturnValue:
    services = ext().services
    category = request.form.get("category", "").strip()
    raw_threshold = request.form.get("threshold", "").strip()
    threshold = float(raw_threshold) if raw_threshold else None
    note = request.form.get("note", "")
    upload = request.files.get("file")
    try:
        if upload is not None and upload.filename:
            entry = services.flagged.add_image(
                upload.read(), category, _actor(), "upload", threshold, note
            )
        else:
            entry = services.flagged.add_text(
                request.form.get("text", ""), category, _actor(), threshold, note
            )
    except SightlineError as e:
        flash(f"Not added: {e}")
        return redirect(url_for("admin.moderation"))
    services.audit.record(_actor(), "flag.add", entry.id, note or None, entry.as_dict())
    job_id = ext().uploads.scan_flagged([entry.id])
    flash(
        f"Added a {entry.kind.value} entry ({entry.category}); scanning the catalog (job {job_id[:8]})."
    )
    return redirect(url_for("admin.moderation"))


@bp.post("/flagged/<entry_id>/remove")
@login_required
def flag_remove(entry_id: str) -> ResponseReturnValue:
    entry = ext().services.flagged.remove(entry_id)
    ext().services.audit.record(_actor(), "flag.remove", entry_id, None, entry.as_dict())
    flash(f"Removed the {entry.category} entry.")
    return redirect(url_for("admin.moderation"))


# -- status ----------------------------------------------------------------------------


@bp.get("/status")
@login_required
def status() -> ResponseReturnValue:
    services = ext().services
    runtime = ext().runtime
    encoder = services.encoder
    counts = {name: services.index.count(name) for name in services.collections.all()}
    queues: dict[str, Any] = {}
    workers: list[str] = []
    if ext().settings.queue.broker_url:
        from workers.celery_app import INGEST_QUEUE, JOBS_QUEUE

        client = runtime.jobs.r  # type: ignore[attr-defined]
        queues = {q: client.llen(q) for q in (INGEST_QUEUE, JOBS_QUEUE)}
        app = runtime.dispatcher.app  # type: ignore[union-attr]
        try:
            workers = sorted(name for reply in app.control.ping(timeout=1.0) for name in reply)
        except Exception as e:  # a down broker must not break the status page
            workers = [f"unknown ({e})"]
    else:
        queues = {"in-process": "embedded mode"}
        workers = ["in-process worker thread"]
    jobs = runtime.jobs.recent(20)
    failures = [
        (j, i) for j in jobs for i in runtime.jobs.items(j.id) if i.state.value == "failed"
    ][:20]
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
        pending=services.review.pending(),
    )
