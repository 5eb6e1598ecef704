"""``/api/v1`` moderation: the flagged set, checks, the review queue and the audit log."""

from __future__ import annotations

from flask import Blueprint, request
from pydantic import ValidationError

from services.auth.principal import Scope
from services.moderation.flagged import FlaggedEntry
from services.moderation.review import Decision
from web import schemas as s
from web.endpoint import FormField, Operation, caller, endpoint
from web.errors import field_error, validation_error
from web.extension import runtime

bp = Blueprint("moderation", __name__, url_prefix="/api/v1")


def _entry(entry: FlaggedEntry) -> s.FlaggedEntryOut:
    return s.FlaggedEntryOut.model_validate(entry.as_dict())


@bp.post("/flagged")
@endpoint(
    Operation(
        "Add a flagged entry from an image (upload, stored id, URL) or a text concept",
        Scope.MODERATE,
        s.FlagCreated,
        201,
        body=s.FlagBody,
        form={
            "file": FormField("the image to flag", "file", required=True),
            "category": FormField("category of the entry", required=True),
            "threshold": FormField("optional: cosine that quarantines, -1 to 1"),
            "note": FormField("optional: why"),
            "scan": FormField("optional: false to skip the retroactive scan"),
        },
        errors=(401, 403, 404, 413, 415, 422, 502),
        max_body=None,  # files: the app-wide limit
    )
)
def flag_add(body: s.FlagBody | None) -> s.FlagCreated:
    moderation = runtime().moderation
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
        entry, job_id = moderation.add_image(
            caller(),
            upload.read(),
            options.category,
            "upload",
            options.threshold,
            options.note,
            options.scan,
        )
    elif body.text is not None:
        entry, job_id = moderation.add_text(
            caller(), body.text, body.category, body.threshold, body.note, body.scan
        )
    else:
        data = moderation.image_bytes(caller(), body.image_id, body.url)
        source = f"image:{body.image_id}" if body.image_id is not None else f"url:{body.url}"
        entry, job_id = moderation.add_image(
            caller(), data, body.category, source, body.threshold, body.note, body.scan
        )
    return s.FlagCreated(entry=_entry(entry), scan_job_id=job_id)


@bp.get("/flagged")
@endpoint(Operation("The flagged set", Scope.MODERATE, s.FlaggedList, errors=(401, 403)))
def flag_list() -> s.FlaggedList:
    return s.FlaggedList(entries=[_entry(e) for e in runtime().moderation.entries(caller())])


@bp.patch("/flagged/<entry_id>")
@endpoint(
    Operation(
        "Change an entry's category, threshold or note",
        Scope.MODERATE,
        s.FlaggedEntryOut,
        body=s.FlagPatch,
        errors=(401, 403, 404, 422),
    )
)
def flag_edit(entry_id: str, body: s.FlagPatch) -> s.FlaggedEntryOut:
    changes = body.model_dump(exclude_unset=True)
    return _entry(runtime().moderation.edit(caller(), entry_id, **changes))


@bp.delete("/flagged/<entry_id>")
@endpoint(
    Operation("Remove a flagged entry", Scope.MODERATE, s.FlaggedEntryOut, errors=(401, 403, 404))
)
def flag_remove(entry_id: str) -> s.FlaggedEntryOut:
    return _entry(runtime().moderation.remove(caller(), entry_id))


@bp.post("/flagged/scan")
@endpoint(
    Operation(
        "Re-check the whole catalog against the whole flagged set (a job)",
        Scope.MODERATE,
        s.JobRef,
        202,
        errors=(401, 403),
    )
)
def flag_scan() -> s.JobRef:
    return s.JobRef(job_id=runtime().moderation.scan(caller(), None))


@bp.post("/moderate")
@endpoint(
    Operation(
        "Check an image against the flagged set without storing it",
        Scope.INGEST,
        s.VerdictOut,
        body=s.ModerateBody,
        form={"file": FormField("the image to check", "file", required=True)},
        errors=(401, 403, 404, 413, 415, 422, 502),
        max_body=None,  # files: the app-wide limit
    )
)
def moderate(body: s.ModerateBody | None) -> s.VerdictOut:
    moderation = runtime().moderation
    if body is None:
        upload = request.files.get("file")
        if upload is None:
            raise field_error("file", "an image file is required (or send JSON)")
        verdict = moderation.check_bytes(caller(), upload.read())
    else:
        verdict = moderation.check(caller(), body.image_id, body.url)
    return s.VerdictOut.model_validate(verdict)


@bp.get("/moderation/queue")
@endpoint(
    Operation(
        "Quarantined images with their matches",
        Scope.MODERATE,
        s.ReviewQueue,
        query=s.QueueQuery,
        errors=(401, 403, 422),
    )
)
def review_queue(query: s.QueueQuery) -> s.ReviewQueue:
    moderation = runtime().moderation
    records, nxt = moderation.queue(caller(), query.limit, query.offset)
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
    return s.ReviewQueue(pending=moderation.pending(caller()), items=items, next_offset=nxt)


@bp.post("/moderation/decisions")
@endpoint(
    Operation(
        "Approve or reject quarantined images (bulk); every decision is audited",
        Scope.MODERATE,
        s.Decisions,
        body=s.DecisionBody,
        errors=(401, 403, 422),
    )
)
def review_decide(body: s.DecisionBody) -> s.Decisions:
    results = runtime().moderation.decide(
        caller(),
        body.image_ids,
        Decision(body.action),
        body.reason,
        body.add_to_flagged,
        body.category,
    )
    return s.Decisions(results=[s.DecisionOut.model_validate(r.as_dict()) for r in results])


@bp.get("/moderation/audit")
@endpoint(
    Operation(
        "The audit log, newest first",
        Scope.MODERATE,
        s.AuditLogOut,
        query=s.AuditQuery,
        errors=(401, 403),
    )
)
def audit_log(query: s.AuditQuery) -> s.AuditLogOut:
    events = runtime().moderation.audit_log(caller(), query.limit, query.target)
    return s.AuditLogOut(events=[s.AuditEventOut.model_validate(e.as_dict()) for e in events])
