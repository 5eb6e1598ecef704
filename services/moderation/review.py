"""The review queue: quarantined images, reviewers' decisions, and retroactive scans.

Every decision and every automatic quarantine is written to the audit log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any

import numpy as np

from services.audit import AuditLog
from services.auth.principal import Principal, Scope
from services.errors import InvalidFlag, InvalidImage, InvalidInput, NotFound
from services.ids import is_image_id, is_point_id, point_id
from services.images import decode_image
from services.index.base import PayloadFilter, Record, VectorIndex
from services.jobs.store import SCAN_ITEM, JobStore, State
from services.moderation.content import PIXEL_SIDE
from services.moderation.flagged import FlaggedSet, Pixels, Verdict, audit_quarantines, content_hash
from services.payload import APPROVED, QUARANTINED
from services.storage.files import ImageStore
from services.storage.thumbnails import ThumbnailStore


class Decision(StrEnum):
    """What a reviewer can do with a quarantined image."""

    APPROVE = "approve"
    REJECT = "reject"


@dataclass(frozen=True)
class DecisionResult:
    """The outcome of one decision."""

    image_id: str
    action: str
    ok: bool
    message: str
    flagged_entry: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the API."""
        return {
            "image_id": self.image_id,
            "action": self.action,
            "ok": self.ok,
            "message": self.message,
            "flagged_entry": self.flagged_entry,
        }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ReviewService:
    """Queue, decisions and scans over the images collection."""

    def __init__(
        self,
        index: VectorIndex,
        collection: str,
        store: ImageStore,
        thumbnails: ThumbnailStore | None,
        flagged: FlaggedSet,
        audit: AuditLog,
    ) -> None:
        self.index = index
        self.collection = collection
        self.store = store
        self.thumbnails = thumbnails
        self.flagged = flagged
        self.audit = audit

    def queue(self, limit: int = 50, offset: str | None = None) -> tuple[list[Record], str | None]:
        """Quarantined images, a page at a time (``offset``: the previous page's cursor)."""
        if offset is not None and not is_point_id(offset):
            raise InvalidInput("offset is not a cursor the review queue returned")
        flt = PayloadFilter(equals={"moderation_status": QUARANTINED})
        return self.index.scroll(self.collection, flt, limit=limit, offset=offset)

    def pending(self) -> int:
        """How many images wait for review."""
        return self.index.count(
            self.collection, PayloadFilter(equals={"moderation_status": QUARANTINED})
        )

    def _record(self, image_id: str) -> Record:
        if not is_image_id(image_id):
            raise NotFound(f"not an image id: {image_id!r}")
        records = self.index.retrieve(self.collection, [point_id(image_id)])
        if not records:
            raise NotFound(f"no image with id {image_id!r}")
        return records[0]

    def decide(
        self,
        image_ids: Sequence[str],
        decision: Decision,
        caller: Principal,
        reason: str | None = None,
        add_to_flagged: bool = False,
        category: str | None = None,
    ) -> list[DecisionResult]:
        """Approve (released; the entries it matched will not flag it again) or reject
        (removed from the catalog; optionally its image joins the flagged set)."""
        caller.require(Scope.MODERATE)
        results = []
        for image_id in dict.fromkeys(i.strip().lower() for i in image_ids):
            try:
                record = self._record(image_id)
            except NotFound as e:
                results.append(DecisionResult(image_id, decision.value, False, str(e)))
                continue
            if decision is Decision.APPROVE:
                results.append(self._approve(image_id, record, caller, reason))
            else:
                results.append(
                    self._reject(image_id, record, caller, reason, add_to_flagged, category)
                )
        return results

    def _approve(
        self, image_id: str, record: Record, caller: Principal, reason: str | None
    ) -> DecisionResult:
        moderation = dict(record.payload.get("moderation") or {})
        matched = [m["entry_id"] for m in moderation.get("matches", [])]
        moderation["approved_entries"] = sorted(
            set(moderation.get("approved_entries", [])) | set(matched)
        )
        moderation.update(
            {"reviewed_by": caller.name, "reviewed_at": _now(), "review_reason": reason}
        )
        self.index.set_payload(
            self.collection, [record.id], {"moderation_status": APPROVED, "moderation": moderation}
        )
        self.audit.record(
            caller.name, "image.approve", image_id, reason, {"cleared_entries": matched}
        )
        return DecisionResult(image_id, "approve", True, "released")

    def _reject(
        self,
        image_id: str,
        record: Record,
        caller: Principal,
        reason: str | None,
        add_to_flagged: bool,
        category: str | None,
    ) -> DecisionResult:
        entry_id = None
        if add_to_flagged:
            matches = (record.payload.get("moderation") or {}).get("matches") or []
            chosen = category or (matches[0]["category"] if matches else None)
            if not chosen:
                raise InvalidFlag("a category is needed to add a rejected image to the flagged set")
            try:
                entry = self.flagged.add_image(
                    self.store.get(image_id),
                    chosen,
                    caller.name,
                    source=f"rejected:{image_id}",
                    note=reason or "",
                )
            except (NotFound, InvalidImage) as e:
                return DecisionResult(image_id, "reject", False, f"cannot flag the original: {e}")
            entry_id = entry.id
            self.audit.record(caller.name, "flag.add", entry.id, reason, entry.as_dict())
        self.index.delete(self.collection, [record.id])
        self.store.delete(image_id)
        if self.thumbnails is not None:
            self.thumbnails.delete(image_id)
        self.audit.record(
            caller.name,
            "image.reject",
            image_id,
            reason,
            {
                "filename": record.payload.get("filename"),
                "matches": (record.payload.get("moderation") or {}).get("matches", []),
                "flagged_entry": entry_id,
            },
        )
        return DecisionResult(image_id, "reject", True, "removed from the catalog", entry_id)

    def scan(
        self, jobs: JobStore, job_id: str, entry_ids: Sequence[str] | None = None, page: int = 256
    ) -> int:
        """Re-check existing images against flagged entries (all, or the new ones); returns
        how many were newly quarantined. Approvals by a reviewer are respected."""
        snap = self.flagged.snapshot(entry_ids)
        newly = 0
        offset: str | None = None
        while True:
            records, offset = self.index.scroll(
                self.collection, limit=page, offset=offset, with_vectors=True
            )
            if not records:
                break
            jobs.add_items(job_id, [r.id for r in records])
            hashes = [self._hash_of(r) for r in records]
            approved = [
                (r.payload.get("moderation") or {}).get("approved_entries", []) for r in records
            ]
            vectors = np.stack([np.asarray(r.vector, dtype=np.float32) for r in records])
            verdicts = self.flagged.check(
                vectors,
                pixels_of=partial(self._pixels_of, records),
                snapshot=snap,
                approved=approved,
                hashes=hashes,
                digests=[str(r.payload.get("image_id") or "") or None for r in records],
            )
            for r, v in zip(records, verdicts, strict=True):
                image_id = str(r.payload.get("image_id"))
                if v.quarantined:
                    newly += self._quarantine(r, v)
                jobs.set_item(job_id, r.id, State.DONE, image_id=image_id)
            if offset is None:
                break
        jobs.set_item(job_id, SCAN_ITEM, State.DONE)
        return newly

    def _hash_of(self, record: Record) -> int | None:
        stored = record.payload.get("phash")
        if stored:
            return int(str(stored), 16)
        try:  # images ingested before hashes were kept, or with no content to hash
            data = self.store.get(str(record.payload.get("image_id")))
            value = content_hash(decode_image(data, self.flagged.limits, min_side=PIXEL_SIDE).image)
        except (NotFound, InvalidImage):
            return None
        if value is not None:
            self.index.set_payload(self.collection, [record.id], {"phash": f"{value:016x}"})
        return value

    def _pixels_of(self, records: Sequence[Record], i: int) -> Pixels | None:
        """Image i's layout and keypoints, from its original (read only for images that a
        signal needs pixels of)."""
        record = records[i]
        try:
            data = self.store.get(str(record.payload.get("image_id")))
            return Pixels.of(decode_image(data, self.flagged.limits, min_side=PIXEL_SIDE).image)
        except (NotFound, InvalidImage):
            return None

    def _quarantine(self, record: Record, verdict: Verdict) -> int:
        moderation = dict(record.payload.get("moderation") or {})
        known = {m["entry_id"] for m in moderation.get("matches", [])}
        new = [m for m in verdict.matches if m.entry_id not in known]
        if not new:
            return 0
        moderation["matches"] = [*moderation.get("matches", []), *(m.as_dict() for m in new)]
        moderation["checked_at"] = _now()
        self.index.set_payload(
            self.collection,
            [record.id],
            {"moderation_status": QUARANTINED, "moderation": moderation},
        )
        image_id = str(record.payload.get("image_id"))
        audit_quarantines(
            self.audit,
            "system:scan",
            [image_id],
            [Verdict(True, new or verdict.matches, verdict.phash)],
        )
        return 1
