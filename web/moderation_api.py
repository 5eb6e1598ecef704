"""``/api/v1`` moderation: the flagged set, checks, the review queue and the audit log."""

from __future__ import annotations

from flask import Blueprint, request
from pydantic import ValidationError

from services.apikeys import Scope
from services.fetch import fetch_image
from services.moderation import FlaggedEntry
from services.review import Decision
from web import schemas as s
from web.api import ext, visible_payload
from web.endpoint import Operation, current_key, endpoint
from web.errors import field_error, validation_error

bp = Blueprint("moderation", __name__, url_prefix="/api/v1")


def _actor() -> str:
    key = current_key()
    return f"key:{key.name}"


def _entry(entry: FlaggedEntry) -> s.FlaggedEntryOut:
    return s.FlaggedEntryOut.model_validate(entry.as_dict())


def _image_bytes(image_id: str | None, url: str | None) -> tuple[bytes, str]:
    """The bytes of a stored image or a URL, and where they came from."""
    if image_id is not None:
        payload = visible_payload(image_id)
        return ext().services.store.get(str(payload["image_id"])), f"image:{payload['image_id']}"
    settings = ext().settings
    data, final = fetch_image(str(url), settings.fetch, settings.images.max_bytes)
    return data, f"url:{final}"


@bp.post("/flagged")
@endpoint(
    Operation(
        "Add a flagged entry from an image (upload, stored id, URL) or a text concept",
        Scope.ADMIN,
        s.FlagCreated,
        201,
        body=s.FlagBody,
        form={
            "file": "the image to flag",
            "category": "category of the entry",
            "threshold": "optional: cosine that quarantines",
            "note": "optional: why",
            "scan": "optional: false to skip the retroactive scan",
        },
        errors=(401, 403, 404, 413, 415, 422, 502),
    )
)
def flag_add(body: s.FlagBody | None) -> s.FlagCreated:
    flagged = ext().services.flagged
    if body is None:
        upload = request.files.get("file")
        if upload is None:
            raise field_error("file", "an image file is required (or send JSON)")
        try:
            options = s.FlagOptions.model_validate(
                {k: v for k, v in request.form.items() if k in s.FlagOptions.model_fields}
            )
        except ValidationError as e:
            raise validation_error(e) from e
        entry = flagged.add_image(
            upload.read(), options.category, _actor(), "upload", options.threshold, options.note
        )
    else:
        options = body
        if body.text is not None:
            entry = flagged.add_text(body.text, body.category, _actor(), body.threshold, body.note)
        else:
            data, source = _image_bytes(body.image_id, body.url)
            entry = flagged.add_image(
                data, body.category, _actor(), source, body.threshold, body.note
            )
    ext().services.audit.record(
        _actor(), "flag.add", entry.id, options.note or None, entry.as_dict()
    )
    job_id = ext().uploads.scan_flagged([entry.id]) if options.scan else None
    return s.FlagCreated(entry=_entry(entry), scan_job_id=job_id)


@bp.get("/flagged")
@endpoint(Operation("The flagged set", Scope.ADMIN, s.FlaggedList, errors=(401, 403)))
def flag_list() -> s.FlaggedList:
    return s.FlaggedList(entries=[_entry(e) for e in ext().services.flagged.entries()])


@bp.patch("/flagged/<entry_id>")
@endpoint(
    Operation(
        "Change an entry's category, threshold or note",
        Scope.ADMIN,
        s.FlaggedEntryOut,
        body=s.FlagPatch,
        errors=(401, 403, 404, 422),
    )
)
def flag_edit(entry_id: str, body: s.FlagPatch) -> s.FlaggedEntryOut:
    changes = body.model_dump(exclude_unset=True)
    entry = ext().services.flagged.update(entry_id, **changes)
    ext().services.audit.record(_actor(), "flag.edit", entry_id, None, changes)
    return _entry(entry)


@bp.delete("/flagged/<entry_id>")
@endpoint(
    Operation("Remove a flagged entry", Scope.ADMIN, s.FlaggedEntryOut, errors=(401, 403, 404))
)
def flag_remove(entry_id: str) -> s.FlaggedEntryOut:
    entry = ext().services.flagged.remove(entry_id)
    ext().services.audit.record(_actor(), "flag.remove", entry_id, None, entry.as_dict())
    return _entry(entry)


@bp.post("/flagged/scan")
@endpoint(
    Operation(
        "Re-check the whole catalog against the whole flagged set (a job)",
        Scope.ADMIN,
        s.JobRef,
        202,
        errors=(401, 403),
    )
)
def flag_scan() -> s.JobRef:
    return s.JobRef(job_id=ext().uploads.scan_flagged(None))


@bp.post("/moderate")
@endpoint(
    Operation(
        "Check an image against the flagged set without storing it",
        Scope.INGEST,
        s.VerdictOut,
        body=s.ModerateBody,
        form={"file": "the image to check"},
        errors=(401, 403, 404, 413, 415, 422, 502),
    )
)
def moderate(body: s.ModerateBody | None) -> s.VerdictOut:
    if body is None:
        upload = request.files.get("file")
        if upload is None:
            raise field_error("file", "an image file is required (or send JSON)")
        data = upload.read()
    else:
        data, _ = _image_bytes(body.image_id, body.url)
    verdict = ext().services.flagged.check_bytes(data)
    return s.VerdictOut.model_validate(verdict.as_dict())


@bp.get("/moderation/queue")
@endpoint(
    Operation(
        "Quarantined images with their matches",
        Scope.ADMIN,
        s.ReviewQueue,
        query=s.QueueQuery,
        errors=(401, 403, 422),
    )
)
def review_queue(query: s.QueueQuery) -> s.ReviewQueue:
    review = ext().services.review
    records, nxt = review.queue(query.limit, query.offset)
    items = [
        s.QueueItem(
            image_id=str(r.payload["image_id"]),
            payload=r.payload,
            matches=[
                s.MatchOut.model_validate(m)
                for m in (r.payload.get("moderation") or {}).get("matches", [])
            ],
        )
        for r in records
    ]
    return s.ReviewQueue(pending=review.pending(), items=items, next_offset=nxt)


@bp.post("/moderation/decisions")
@endpoint(
    Operation(
        "Approve or reject quarantined images (bulk); every decision is audited",
        Scope.ADMIN,
        s.Decisions,
        body=s.DecisionBody,
        errors=(401, 403, 422),
    )
)
def review_decide(body: s.DecisionBody) -> s.Decisions:
    results = ext().services.review.decide(
        body.image_ids,
        Decision(body.action),
        _actor(),
        body.reason,
        body.add_to_flagged,
        body.category,
    )
    return s.Decisions(results=[s.DecisionOut.model_validate(r.as_dict()) for r in results])


@bp.get("/moderation/audit")
@endpoint(
    Operation(
        "The audit log, newest first",
        Scope.ADMIN,
        s.AuditLogOut,
        query=s.AuditQuery,
        errors=(401, 403),
    )
)
def audit_log(query: s.AuditQuery) -> s.AuditLogOut:
    events = ext().services.audit.list(query.limit, query.target)
    return s.AuditLogOut(events=[s.AuditEventOut.model_validate(e.as_dict()) for e in events])
