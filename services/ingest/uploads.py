"""The publishing side of ingestion: validate, store, register a job, publish events.

Bad input is refused here, synchronously, before anything is stored, so the caller gets
the reason at once (a 4xx at the HTTP edge). Originals are stored before the job is
registered and its events published, so a storage failure leaves no job waiting for
images that never arrived.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.audit import AuditLog
from services.auth.principal import Principal, Scope
from services.errors import InvalidImage, InvalidInput, InvalidMetadata, NotFound
from services.ids import is_image_id, point_id
from services.index.base import VectorIndex
from services.ingest.events import FetchEvent, IngestEvent
from services.ingest.fetch import check_url
from services.ingest.intake import VALIDATION_SIDE, IngestItem, prepare, validate_metadata
from services.jobs.kinds import Kind
from services.jobs.service import JobService
from services.jobs.store import State
from services.payload import can_see
from services.settings import ImageLimits
from services.storage.files import ImageStore

MAX_URLS_PER_JOB = 10_000


@dataclass(frozen=True)
class Receipt:
    """What an upload was answered: the job id, accepted items and refused ones."""

    job_id: str
    accepted: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)


class UploadService:
    """Uploads, URL lists, bulk folders, deletes, retries and re-embeds of the catalog."""

    def __init__(
        self,
        store: ImageStore,
        limits: ImageLimits,
        index: VectorIndex,
        collection: str,
        jobs: JobService,
        audit: AuditLog,
    ) -> None:
        self.store = store
        self.limits = limits
        self.index = index
        self.collection = collection
        self.jobs = jobs
        self.audit = audit

    def upload(self, caller: Principal, items: Sequence[IngestItem]) -> Receipt:
        """Accept valid images (stored, queued); refuse the others with their reasons.

        Raises:
            InvalidImage: when no item is acceptable (nothing is stored or queued).
        """
        caller.require(Scope.INGEST)
        accepted: dict[str, IngestItem] = {}
        refused: list[dict[str, Any]] = []
        for item in items:
            try:
                prepared = prepare(item, self.limits, VALIDATION_SIDE)
            except (InvalidImage, InvalidMetadata) as e:
                refused.append({"filename": item.filename, "error": e.code, "message": str(e)})
                continue
            accepted.setdefault(prepared.image_id, item)
        if not accepted:
            detail = "; ".join(f"{r['filename']}: {r['message']}" for r in refused)
            raise InvalidImage(f"no acceptable image in the upload ({detail or 'empty'})")
        for item in accepted.values():
            self.store.put(item.data)
        job_id = self.jobs.start(
            "upload",
            Kind.INGEST,
            lambda job: [
                IngestEvent(job, i, i, it.filename, dict(it.metadata)).to_dict()
                for i, it in accepted.items()
            ],
            keys=accepted,
            item_key="item",
        )
        self.audit.record_many(
            caller.name,
            "image.upload",
            [(i, None, {"filename": it.filename, "job": job_id}) for i, it in accepted.items()],
        )
        return Receipt(
            job_id=job_id,
            accepted=[{"filename": it.filename, "image_id": i} for i, it in accepted.items()],
            refused=refused,
        )

    def ingest_stored(
        self,
        caller: Principal,
        image_ids: Iterable[str],
        label: str = "ingest",
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Queue images already in the store (reconciliation, re-ingest)."""
        caller.require(Scope.INGEST)
        ids = list(dict.fromkeys(image_ids))
        for image_id in ids:
            if not self.store.exists(image_id):
                raise NotFound(f"image {image_id} is not in the image store")
        meta = dict(metadata or {})
        return self.jobs.start(
            label,
            Kind.INGEST,
            lambda job: [IngestEvent(job, i, i, None, meta).to_dict() for i in ids],
            keys=ids,
            item_key="item",
        )

    def ingest_urls(
        self, caller: Principal, urls: Sequence[str], metadata: Mapping[str, Any] | None = None
    ) -> str:
        """Queue URL downloads; each URL becomes an item of the job.

        Raises:
            InvalidMetadata: no URLs, too many, or one that is not http(s).
        """
        caller.require(Scope.INGEST)
        urls = list(dict.fromkeys(u.strip() for u in urls if u.strip()))
        if not urls:
            raise InvalidMetadata("no URLs given")
        if len(urls) > MAX_URLS_PER_JOB:
            raise InvalidMetadata(f"too many URLs ({len(urls)} > {MAX_URLS_PER_JOB})")
        for url in urls:
            check_url(url)  # FetchRefused (invalid input) for anything but http(s)
        meta = validate_metadata(metadata or {})
        job_id = self.jobs.start(
            "urls",
            Kind.FETCH,
            lambda job: [FetchEvent(job, url, meta).to_dict() for url in urls],
            keys=urls,
            item_key="url",
        )
        self.audit.record(caller.name, "image.upload_urls", job_id, None, {"urls": len(urls)})
        return job_id

    def bulk_folder(
        self,
        caller: Principal,
        path: str,
        metadata: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> str:
        """Queue a bulk job over a folder; its items appear as the worker walks it."""
        caller.require(Scope.ADMIN)  # it reads the workers' filesystem
        table = {k: dict(v) for k, v in (metadata or {}).items()}
        job_id = self.jobs.start(
            "bulk",
            Kind.BULK,
            lambda job: [{"job_id": job, "path": path, "metadata": table}],
            meta={"path": path},
        )
        self.audit.record(caller.name, "image.upload_folder", job_id, None, {"path": path})
        return job_id

    def delete(self, caller: Principal, image_ids: Sequence[str]) -> str:
        """Queue deletion of images from the index and the store.

        An image the caller cannot see (quarantined, for non-admins) is answered exactly
        like one that does not exist, so a delete cannot probe for hidden ids.

        Raises:
            NotFound: an id is malformed, unknown or hidden from the caller.
        """
        caller.require(Scope.INGEST)
        ids = list(dict.fromkeys(image_ids))
        for image_id in ids:
            if not is_image_id(image_id):
                raise NotFound(f"no image with id {image_id!r}")
        records = {
            r.id: r for r in self.index.retrieve(self.collection, [point_id(i) for i in ids])
        }
        for image_id in ids:
            record = records.get(point_id(image_id))
            visible = (
                can_see(caller, record.payload) if record is not None else caller.sees_moderation
            )
            if not visible or (record is None and not self.store.exists(image_id)):
                raise NotFound(f"no image with id {image_id!r}")
        job_id = self.jobs.start(
            "delete",
            Kind.DELETE,
            lambda job: [{"job_id": job, "image_ids": ids}],
            keys=ids,
        )
        self.audit.record_many(
            caller.name,
            "image.delete",
            [
                (i, None, {"job": job_id, "filename": _filename(records.get(point_id(i)))})
                for i in ids
            ],
        )
        return job_id

    def reembed(self, caller: Principal, model: str, prefix: str, switch: bool = True) -> str:
        """Queue a re-embed of the whole catalog with ``model`` into ``prefix`` collections."""
        caller.require(Scope.ADMIN)
        if not prefix or prefix == self.collection.removesuffix("images"):
            raise InvalidInput("re-embed needs a new, non-empty collection prefix")
        job_id = self.jobs.start(
            "reembed",
            Kind.REEMBED,
            lambda job: [
                {
                    "job_id": job,
                    "model": model,
                    "prefix": prefix,
                    "switch": switch,
                    "by": caller.name,
                }
            ],
            meta={"model": model, "prefix": prefix},
        )
        self.audit.record(
            caller.name, "model.reembed", job_id, None, {"model": model, "prefix": prefix}
        )
        return job_id

    def retry_failed(self, caller: Principal, job_id: str) -> int:
        """Re-queue a job's failed items whose image is stored; returns how many."""
        caller.require(Scope.INGEST)
        store = self.jobs.store
        events = []
        round_id = uuid.uuid4().hex[:8]  # a new round: fresh retry and delivery budgets
        for item in store.items(job_id, State.FAILED):
            if item.image_id and self.store.exists(item.image_id):
                store.set_item(job_id, item.key, State.QUEUED, image_id=item.image_id)
                original = item.event or {}
                events.append(
                    IngestEvent(
                        job_id,
                        item.key,
                        item.image_id,
                        original.get("filename"),
                        original.get("metadata") or {},
                        attempt=0,
                        round=round_id,
                    ).to_dict()
                )
        if events:
            self.jobs.dispatcher.publish(Kind.INGEST, events)
            self.audit.record(caller.name, "job.retry", job_id, None, {"items": len(events)})
        return len(events)

    def reconcile(self, caller: Principal, batch: int = 256) -> tuple[str | None, int]:
        """Find stored images with no point in the index and queue them again (jobs whose
        publishing broke off are finished first, so their images are not queued twice)."""
        caller.require(Scope.ADMIN)
        self.jobs.repair(caller)
        missing: list[str] = []
        ids = list(self.store.ids())
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            present = {
                r.id for r in self.index.retrieve(self.collection, [point_id(i) for i in chunk])
            }
            missing.extend(i for i in chunk if point_id(i) not in present)
        if not missing:
            return None, 0
        return self.ingest_stored(caller, missing, label="reconcile"), len(missing)


def _filename(record: Any) -> Any:
    return record.payload.get("filename") if record is not None else None
