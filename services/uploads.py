"""The publishing side of ingestion: validate, store, register a job, publish events.

Bad input is refused here, synchronously, before anything is stored, so the caller gets
the reason at once (a 4xx at the HTTP edge) and no half-written state remains.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from services.errors import InvalidImage, InvalidMetadata, NotFound
from services.events import Dispatcher, FetchEvent, IngestEvent
from services.ids import is_image_id, point_id
from services.ingest import IngestItem, Ingestor, validate_metadata
from services.jobs import SCAN_ITEM, Job, JobStore, State
from services.store import ImageStore

MAX_URLS_PER_JOB = 10_000


@dataclass(frozen=True)
class Receipt:
    """What an upload was answered: the job id, accepted items and refused ones."""

    job_id: str | None
    accepted: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)


class UploadService:
    """Entry point for uploads, URL lists, bulk folders, deletes and job queries."""

    def __init__(
        self, ingestor: Ingestor, store: ImageStore, jobs: JobStore, dispatcher: Dispatcher
    ) -> None:
        self.ingestor = ingestor
        self.store = store
        self.jobs = jobs
        self.dispatcher = dispatcher

    def upload(self, items: Sequence[IngestItem]) -> Receipt:
        """Accept valid images (stored, queued); refuse the others with their reasons.

        Raises:
            InvalidImage: when no item is acceptable (nothing is stored or queued).
        """
        accepted: list[tuple[IngestItem, str]] = []
        refused: list[dict[str, Any]] = []
        for item in items:
            try:
                prepared = self.ingestor.prepare(item, for_model=False)
            except (InvalidImage, InvalidMetadata) as e:
                refused.append({"filename": item.filename, "error": e.code, "message": str(e)})
                continue
            accepted.append((item, prepared.decoded.image_id))
        if not accepted:
            detail = "; ".join(f"{r['filename']}: {r['message']}" for r in refused)
            raise InvalidImage(f"no acceptable image in the upload ({detail or 'empty'})")
        job_id = self.jobs.create("upload", (image_id for _, image_id in accepted))
        events = []
        for item, image_id in accepted:
            self.store.put(item.data)
            events.append(
                IngestEvent(job_id, image_id, image_id, item.filename, dict(item.metadata))
            )
        self.dispatcher.ingest(_dedupe(events))
        return Receipt(
            job_id=job_id,
            accepted=[{"filename": it.filename, "image_id": i} for it, i in accepted],
            refused=refused,
        )

    def ingest_stored(
        self,
        image_ids: Iterable[str],
        kind: str = "ingest",
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Queue images already in the store (reconciliation, retries, re-ingest)."""
        ids = list(dict.fromkeys(image_ids))
        for image_id in ids:
            if not self.store.exists(image_id):
                raise NotFound(f"image {image_id} is not in the image store")
        job_id = self.jobs.create(kind, ids)
        meta = dict(metadata or {})
        self.dispatcher.ingest([IngestEvent(job_id, i, i, None, meta) for i in ids])
        return job_id

    def ingest_urls(self, urls: Sequence[str], metadata: Mapping[str, Any] | None = None) -> str:
        """Queue URL downloads; each URL becomes an item of the job.

        Raises:
            InvalidMetadata: no URLs, too many, or one that is not http(s).
        """
        urls = list(dict.fromkeys(u.strip() for u in urls if u.strip()))
        if not urls:
            raise InvalidMetadata("no URLs given")
        if len(urls) > MAX_URLS_PER_JOB:
            raise InvalidMetadata(f"too many URLs ({len(urls)} > {MAX_URLS_PER_JOB})")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidMetadata(f"not an http(s) URL: {url!r}")
        meta = validate_metadata(metadata or {})
        job_id = self.jobs.create("urls", urls)
        self.dispatcher.fetch([FetchEvent(job_id, url, meta) for url in urls])
        return job_id

    def bulk_folder(
        self, path: str, metadata: Mapping[str, Mapping[str, Any]] | None = None
    ) -> str:
        """Queue a bulk job over a folder; its items appear as the worker walks it."""
        job_id = self.jobs.create("bulk", (), {"path": path})
        self.dispatcher.bulk_folder(job_id, path, {k: dict(v) for k, v in (metadata or {}).items()})
        return job_id

    def delete(self, image_ids: Sequence[str]) -> str:
        """Queue deletion of images from the index and the store.

        Raises:
            NotFound: an id is malformed or unknown.
        """
        for image_id in image_ids:
            if not is_image_id(image_id):
                raise NotFound(f"not an image id: {image_id!r}")
        known = {
            r.id
            for r in self.ingestor.index.retrieve(
                self.ingestor.collection, [point_id(i) for i in image_ids]
            )
        }
        for image_id in image_ids:
            if point_id(image_id) not in known and not self.store.exists(image_id):
                raise NotFound(f"no image {image_id}")
        job_id = self.jobs.create("delete", image_ids)
        self.dispatcher.delete(job_id, list(image_ids))
        return job_id

    def reembed(self, model: str, prefix: str, switch: bool = True) -> str:
        """Queue a re-embed of the whole catalog with ``model`` into ``prefix`` collections."""
        if not prefix or prefix == self.ingestor.collection.removesuffix("images"):
            raise InvalidMetadata("re-embed needs a new, non-empty collection prefix")
        job_id = self.jobs.create("reembed", (), {"model": model, "prefix": prefix})
        self.dispatcher.reembed(job_id, model, prefix, switch)
        return job_id

    def retag(self, taxonomy_version: str | None = None) -> str:
        """Queue a re-tag of the whole catalog with the current taxonomy."""
        job_id = self.jobs.create("retag", [SCAN_ITEM], {"taxonomy_version": taxonomy_version})
        self.dispatcher.retag(job_id)
        return job_id

    def scan_flagged(self, entry_ids: Sequence[str] | None = None) -> str:
        """Queue a re-check of the catalog against flagged entries (all when None)."""
        job_id = self.jobs.create(
            "moderation_scan", [SCAN_ITEM], {"entries": list(entry_ids) if entry_ids else "all"}
        )
        self.dispatcher.scan_flagged(job_id, entry_ids)
        return job_id

    def job(self, job_id: str) -> Job:
        """A job's state and counts."""
        return self.jobs.get(job_id)

    def failed_items(self, job_id: str) -> list[dict[str, Any]]:
        """Failed items of a job with their reasons."""
        return [
            {"item": i.key, "image_id": i.image_id, "reason": i.reason, "attempts": i.attempts}
            for i in self.jobs.items(job_id, State.FAILED)
        ]

    def retry_failed(self, job_id: str) -> int:
        """Re-queue a job's failed items whose image is stored; returns how many."""
        events = []
        round_id = uuid.uuid4().hex[:8]  # a new round: fresh retry and delivery budgets
        for item in self.jobs.items(job_id, State.FAILED):
            if item.image_id and self.store.exists(item.image_id):
                self.jobs.set_item(job_id, item.key, State.QUEUED, image_id=item.image_id)
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
                    )
                )
        if events:
            self.dispatcher.ingest(events)
        return len(events)

    def reconcile(self, batch: int = 256) -> tuple[str | None, int]:
        """Find stored images with no point in the index and queue them again."""
        missing: list[str] = []
        ids = list(self.store.ids())
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            present = {
                r.id
                for r in self.ingestor.index.retrieve(
                    self.ingestor.collection, [point_id(i) for i in chunk]
                )
            }
            missing.extend(i for i in chunk if point_id(i) not in present)
        if not missing:
            return None, 0
        return self.ingest_stored(missing, kind="reconcile"), len(missing)


def _dedupe(events: Sequence[IngestEvent]) -> list[IngestEvent]:
    seen: dict[str, IngestEvent] = {}
    for ev in events:
        seen.setdefault(ev.item, ev)
    return list(seen.values())
