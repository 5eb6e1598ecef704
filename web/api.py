"""``/api/v1``: thin handlers that validate, call a service with the caller, and serialise.

What a caller may see (quarantined images, moderation internals) and what is audited is
decided in the services, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import Blueprint, Response, request
from flask.typing import ResponseReturnValue
from pydantic import ValidationError

from services.auth.principal import Scope
from services.errors import InvalidFilter, NotFound
from services.filters import parse_filters
from services.index.base import PayloadFilter
from services.ingest.intake import IngestItem
from services.search.service import MAX_K, SearchHit
from services.tagging.scoring import TagResult
from services.tagging.taxonomy import Taxonomy
from web import schemas as s
from web.endpoint import FormField, Operation, caller, endpoint, parse_json, tag_dimensions
from web.errors import ApiError, field_error, validation_error
from web.extension import runtime

bp = Blueprint("api", __name__, url_prefix="/api/v1")

_MEDIA = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


def _filters(where: Sequence[str]) -> PayloadFilter:
    """``where`` expressions plus taxonomy shorthands (``colour=red`` -> ``tags.colour``)."""
    exprs = list(where)
    shorthand = set(request.args) - {"q", "k", "where", "one_per", "offset", "fields"}
    for dim in sorted(tag_dimensions() & shorthand if shorthand else ()):
        exprs.append(f"tags.{dim}=" + "|".join(request.args.getlist(dim)))  # any of them
    try:
        return parse_filters(exprs)
    except InvalidFilter as e:
        fields = [{"field": "where", "message": str(e)}]
        raise ApiError(422, e.code, f"where: {e}", fields=fields) from e


def _hits(
    hits: Sequence[SearchHit],
    k: int = 0,
    offset: int = 0,
    fields: str | None = None,
    flt: PayloadFilter | None = None,
) -> s.Hits:
    """Ranked results; ``fields`` (comma-separated) picks payload fields, and a full page
    says where the next one starts."""
    wanted = {f.strip() for f in fields.split(",") if f.strip()} if fields else None
    more = bool(k) and len(hits) == k and offset + k < MAX_K
    return s.Hits(
        results=[
            s.Hit(
                rank=offset + n,
                image_id=h.image_id,
                score=h.score,
                payload=h.payload
                if wanted is None
                else {f: h.payload[f] for f in wanted & set(h.payload)},
            )
            for n, h in enumerate(hits, 1)
        ],
        next_offset=offset + k if more else None,
        warnings=runtime().search.unknown_fields(caller(), flt) if flt is not None else [],
    )


def _json_field(name: str) -> Any:
    raw = request.form.get(name)
    if raw is None or raw == "":
        return {}
    value = parse_json(raw, name)
    if not isinstance(value, dict):
        raise field_error(name, "must be a JSON object")
    return value


@bp.post("/images")
@endpoint(
    Operation(
        "Upload images with metadata; each valid image is stored and queued",
        Scope.INGEST,
        s.UploadReceipt,
        202,
        form={
            "files": FormField("image files (repeat the field)", "files", required=True),
            "metadata": FormField("metadata applied to every file", "json"),
            "per_file": FormField("filename -> metadata for that file", "json"),
        },
        errors=(401, 403, 413, 415, 422, 429),
        max_body=None,  # files: the app-wide limit
    )
)
def upload() -> s.UploadReceipt:
    files = request.files.getlist("files")
    if not files:
        raise field_error("files", "at least one file is required")
    limit = runtime().settings.web.max_files_per_upload
    if len(files) > limit:
        raise field_error("files", f"at most {limit} per request")
    shared, per_file = _json_field("metadata"), _json_field("per_file")
    for name, meta in per_file.items():
        if not isinstance(meta, dict):
            raise field_error("per_file", f"the metadata of {name!r} must be a JSON object")
    items = [
        IngestItem(f.read(), f.filename, {**shared, **(per_file.get(f.filename or "") or {})})
        for f in files
    ]
    receipt = runtime().uploads.upload(caller(), items)
    return s.UploadReceipt(
        job_id=receipt.job_id,
        accepted=[s.Accepted(**a) for a in receipt.accepted],
        refused=[s.Refused(**r) for r in receipt.refused],
    )


@bp.post("/images/urls")
@endpoint(
    Operation(
        "Ingest images by URL (downloaded by workers)",
        Scope.INGEST,
        s.JobRef,
        202,
        body=s.UrlsBody,
        errors=(401, 403, 413, 415, 422, 429),
        max_body=4 * 1024 * 1024,
    )
)
def ingest_urls(body: s.UrlsBody) -> s.JobRef:
    return s.JobRef(job_id=runtime().uploads.ingest_urls(caller(), body.urls, body.metadata))


@bp.get("/jobs/<job_id>")
@endpoint(
    Operation(
        "A job's state, counts and failed items", Scope.INGEST, s.JobStatus, errors=(401, 403, 404)
    )
)
def job_status(job_id: str) -> s.JobStatus:
    jobs = runtime().jobs
    return s.JobStatus(
        **jobs.get(caller(), job_id).as_dict(),
        failed_items=[s.FailedItem(**f) for f in jobs.failed_items(caller(), job_id)],
    )


@bp.post("/jobs/<job_id>/retry")
@endpoint(
    Operation("Re-queue a job's failed items", Scope.INGEST, s.JobRef, 202, errors=(401, 403, 404))
)
def job_retry(job_id: str) -> s.JobRef:
    runtime().jobs.get(caller(), job_id)  # 404 for unknown jobs
    runtime().uploads.retry_failed(caller(), job_id)
    return s.JobRef(job_id=job_id)


@bp.get("/images/<image_id>")
@endpoint(
    Operation(
        "An image's metadata, tags and moderation state",
        Scope.SEARCH,
        s.ImageInfo,
        errors=(401, 403, 404),
    )
)
def image_info(image_id: str) -> s.ImageInfo:
    record = runtime().search.record(caller(), image_id)
    return s.ImageInfo(image_id=str(record.payload["image_id"]), payload=record.payload)


@bp.get("/images/<image_id>/file")
@endpoint(Operation("The stored original", Scope.SEARCH, binary="image/*", errors=(401, 403, 404)))
def image_file(image_id: str) -> ResponseReturnValue:
    data, fmt = runtime().search.original(caller(), image_id)
    media = _MEDIA.get(fmt, "application/octet-stream")
    return Response(data, mimetype=media, headers={"Cache-Control": "private, max-age=86400"})


@bp.get("/images/<image_id>/thumbnail")
@endpoint(
    Operation(
        "A JPEG thumbnail (?size=64|128|256|512)",
        Scope.SEARCH,
        binary="image/jpeg",
        query=s.ThumbnailQuery,
        errors=(401, 403, 404, 422),
    )
)
def image_thumbnail(image_id: str, query: s.ThumbnailQuery) -> ResponseReturnValue:
    data = runtime().search.thumbnail(caller(), image_id, query.size)
    return Response(
        data, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
    )


@bp.delete("/images/<image_id>")
@endpoint(
    Operation(
        "Delete an image from the index and the store",
        Scope.INGEST,
        s.JobRef,
        202,
        errors=(401, 403, 404),
    )
)
def image_delete(image_id: str) -> s.JobRef:
    return s.JobRef(job_id=runtime().uploads.delete(caller(), [image_id]))


@bp.get("/search")
@endpoint(
    Operation(
        "Text to images",
        Scope.SEARCH,
        s.Hits,
        query=s.SearchQuery,
        errors=(401, 403, 422, 429),
        tag_filters=True,
    )
)
def search_text(query: s.SearchQuery) -> s.Hits:
    flt = _filters(query.where)
    hits = runtime().search.text(caller(), query.q, query.k, flt, query.one_per, query.offset)
    return _hits(hits, query.k, query.offset, query.fields, flt)


@bp.post("/search/image")
@endpoint(
    Operation(
        "Images similar to an uploaded query image (not stored)",
        Scope.SEARCH,
        s.Hits,
        query=s.SimilarQuery,
        form={"file": FormField("the query image", "file", required=True)},
        errors=(401, 403, 413, 415, 422, 429),
        tag_filters=True,
        max_body=None,  # files: the app-wide limit
    )
)
def search_image(query: s.SimilarQuery) -> s.Hits:
    upload = request.files.get("file")
    if upload is None:
        raise field_error("file", "an image file is required")
    flt = _filters(query.where)
    hits = runtime().search.by_image(
        caller(), upload.read(), query.k, flt, query.one_per, query.offset
    )
    return _hits(hits, query.k, query.offset, query.fields, flt)


@bp.get("/images/<image_id>/similar")
@endpoint(
    Operation(
        "Images most like a stored one (itself excluded)",
        Scope.SEARCH,
        s.Hits,
        query=s.SimilarQuery,
        errors=(401, 403, 404, 422, 429),
        tag_filters=True,
    )
)
def similar(image_id: str, query: s.SimilarQuery) -> s.Hits:
    flt = _filters(query.where)
    hits = runtime().search.similar(caller(), image_id, query.k, flt, query.one_per, query.offset)
    return _hits(hits, query.k, query.offset, query.fields, flt)


@bp.post("/recommend")
@endpoint(
    Operation(
        "Images like the positives and unlike the negatives",
        Scope.SEARCH,
        s.Hits,
        body=s.RecommendBody,
        errors=(401, 403, 404, 422, 429),
    )
)
def recommend(body: s.RecommendBody) -> s.Hits:
    flt = _filters(body.where)
    hits = runtime().search.recommend(
        caller(), body.positive, body.negative, body.k, flt, body.one_per
    )
    return _hits(hits, flt=flt)


def _tag_response(result: TagResult) -> s.TagResponse:
    return s.TagResponse.model_validate(result.as_dict())


@bp.post("/tag")
@endpoint(
    Operation(
        "Tag an image (upload, stored id or URL) with the taxonomy or ad-hoc candidate labels",
        Scope.SEARCH,
        s.TagResponse,
        body=s.TagBody,
        form={
            "file": FormField("the image to tag (not stored)", "file", required=True),
            "candidate_labels": FormField("optional: comma-separated labels or a JSON list"),
            "hypothesis_template": FormField("optional: prompt per label, {} is the label"),
            "multi_label": FormField("optional: true for independent per-label probabilities"),
        },
        errors=(401, 403, 404, 409, 413, 415, 422, 429, 502),
        max_body=None,  # files: the app-wide limit
    )
)
def tag(body: s.TagBody | None) -> s.TagResponse:
    tagging = runtime().tagging
    if body is None:
        upload = request.files.get("file")
        if upload is None:
            raise field_error("file", "an image file is required (or send JSON with image_id/url)")
        options = _tag_form_options().model_dump()
        return _tag_response(tagging.tag_bytes(caller(), upload.read(), **options))
    options = s.TagOptions.model_validate(
        body.model_dump(include={"candidate_labels", "hypothesis_template", "multi_label"})
    ).model_dump()
    if body.image_id is not None:
        return _tag_response(tagging.tag_stored(caller(), body.image_id, **options))
    return _tag_response(tagging.tag_url(caller(), str(body.url), **options))


def _tag_form_options() -> s.TagOptions:
    raw: dict[str, Any] = {}
    labels = request.form.get("candidate_labels", "").strip()
    if labels:
        raw["candidate_labels"] = (
            parse_json(labels, "candidate_labels") if labels.startswith("[") else labels.split(",")
        )
    if request.form.get("hypothesis_template"):
        raw["hypothesis_template"] = request.form["hypothesis_template"]
    if request.form.get("multi_label"):
        raw["multi_label"] = request.form["multi_label"]
    try:
        return s.TagOptions.model_validate(raw)
    except ValidationError as e:
        raise validation_error(e) from e


@bp.get("/info")
@endpoint(
    Operation(
        "The model, its runtime and the collections' sizes",
        Scope.SEARCH,
        s.ServiceInfo,
        errors=(401, 403),
    )
)
def info() -> s.ServiceInfo:
    rt = runtime()
    identity = rt.encoder.identity
    return s.ServiceInfo(
        model_id=identity.model_id,
        vector_size=identity.size,
        family=rt.encoder.family.value,
        runtime=rt.encoder.runtime_active.value,
        runtime_note=rt.encoder.runtime_note or None,
        collections={name: rt.index.count(name) for name in rt.collections.all()},
    )


@bp.get("/taxonomy")
@endpoint(
    Operation(
        "The current taxonomy (?format=yaml for YAML)",
        Scope.SEARCH,
        s.TaxonomyInfo,
        query=s.FormatQuery,
        also_returns=(("application/yaml", Taxonomy),),
        errors=(401, 403, 404),
    )
)
def taxonomy_get(query: s.FormatQuery) -> s.TaxonomyInfo | Response:
    taxonomy = runtime().tagging.taxonomy(caller())
    if taxonomy is None:
        raise NotFound("no taxonomy is loaded")
    if query.format == "yaml":
        return Response(taxonomy.to_yaml(), mimetype="application/yaml")
    return s.TaxonomyInfo(version=taxonomy.version, taxonomy=taxonomy.model_dump(mode="json"))


@bp.put("/taxonomy")
@endpoint(
    Operation(
        "Replace the taxonomy (JSON or YAML body); re-tags the catalog unless ?retag=false",
        Scope.ADMIN,
        s.TaxonomyReplaced,
        query=s.RetagQuery,
        body=Taxonomy,
        yaml_body=True,
        errors=(401, 403, 413, 415, 422),
        max_body=256 * 1024,
    )
)
def taxonomy_put(query: s.RetagQuery, body: Taxonomy) -> s.TaxonomyReplaced:
    version, job_id = runtime().tagging.replace(caller(), body, retag=query.retag)
    return s.TaxonomyReplaced(version=version, retag_job_id=job_id)


@bp.post("/retag")
@endpoint(
    Operation(
        "Re-tag every image with the current taxonomy (a job)",
        Scope.ADMIN,
        s.JobRef,
        202,
        errors=(401, 403, 409),
    )
)
def retag() -> s.JobRef:
    return s.JobRef(job_id=runtime().tagging.retag(caller()))
