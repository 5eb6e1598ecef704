"""What workers do with events: the task bodies, free of Celery so one code path serves both
the Celery workers and the embedded in-process queue.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from services.audit import AuditLog
from services.encoder import Encoder
from services.errors import IndexUnavailable, InvalidImage, InvalidMetadata, NotFound
from services.ids import point_id
from services.ingest.events import FetchEvent, IngestEvent
from services.ingest.fetch import FetchFailed, FetchRefused, fetch_image
from services.ingest.indexer import Indexer, Outcome
from services.ingest.intake import VALIDATION_SIDE, IngestItem, Prepared, prepare
from services.ingest.reembed import reembed
from services.jobs.dispatch import Dispatcher
from services.jobs.kinds import Kind
from services.jobs.store import JobStore, State
from services.settings import FetchSettings, ImageLimits, QueueSettings
from services.storage.files import ImageStore
from services.storage.thumbnails import ThumbnailStore

log = logging.getLogger(__name__)


def backoff_s(attempt: int, queue: QueueSettings) -> float:
    """Exponential backoff for the n-th retry (1-based), capped."""
    return float(min(queue.retry_backoff_max_s, queue.retry_backoff_s * 2 ** (attempt - 1)))


@dataclass
class Pipeline:
    """Processes ingest, fetch, bulk, delete and re-embed work for one process."""

    store: ImageStore
    indexer: Indexer
    jobs: JobStore
    dispatcher: Dispatcher
    queue: QueueSettings
    fetch_settings: FetchSettings
    limits: ImageLimits
    thumbnails: ThumbnailStore | None = None
    flagged_originals: ImageStore | None = None
    audit: AuditLog | None = None

    # -- ingest ---------------------------------------------------------------------------

    def _delivery_key(self, event: IngestEvent) -> str:
        # Deliveries are counted per retry generation, so retries of transient errors do not
        # use up the budget meant for items that crash their worker.
        return f"{event.item}#{event.round}.{event.attempt}"

    def _load(self, event: IngestEvent) -> Prepared | str:
        """Read and validate one stored image; a string is the reason it failed."""
        try:
            data = self.store.get(event.image_id)
            item = IngestItem(data, event.filename, event.metadata)
            return prepare(item, self.limits, self.indexer.input_size)
        except NotFound:
            return f"image {event.image_id} is not in the image store"
        except (InvalidImage, InvalidMetadata) as e:
            return str(e)

    def ingest_payloads(self, payloads: Sequence[Mapping[str, Any]]) -> None:
        """Ingest a batch of image.uploaded messages as they came off the queue."""
        self.ingest_events([IngestEvent.from_dict(dict(p)) for p in payloads])

    def ingest_events(self, events: Sequence[IngestEvent]) -> None:
        """Decode, embed and upsert a batch of image.uploaded events.

        Permanent failures (bad image) fail their item at once with the reason; a transient
        index failure re-publishes the batch with exponential backoff, a bounded number of
        times; an item delivered more than ``max_deliveries`` times (its worker keeps dying)
        is given up.
        """
        live: list[IngestEvent] = []
        for ev in events:
            deliveries = self.jobs.attempt(ev.job_id, self._delivery_key(ev))
            if deliveries > self.queue.max_deliveries:
                self.jobs.set_item(
                    ev.job_id,
                    ev.item,
                    State.FAILED,
                    f"gave up after {deliveries - 1} deliveries: processing it kept "
                    "killing the worker",
                    image_id=ev.image_id,
                    event=ev.to_dict(),
                )
                continue
            self.jobs.set_item(
                ev.job_id, ev.item, State.PROCESSING, image_id=ev.image_id, event=ev.to_dict()
            )
            live.append(ev)
        if not live:
            return
        # Decode the next chunk on a thread (Pillow releases the GIL) while the model embeds
        # this one, so decoding hides behind the model instead of adding to it.
        size = max(1, self.indexer.encoder.batch_size)
        chunks = [live[i : i + size] for i in range(0, len(live), size)]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
            pending = pool.submit(self._load_chunk, chunks[0])
            for n in range(len(chunks)):
                loaded = pending.result()
                if n + 1 < len(chunks):
                    pending = pool.submit(self._load_chunk, chunks[n + 1])
                self._commit_chunk(loaded)

    def _load_chunk(
        self, events: Sequence[IngestEvent]
    ) -> list[tuple[IngestEvent, Prepared | str]]:
        return [(ev, self._load(ev)) for ev in events]

    def _commit_chunk(self, loaded: Sequence[tuple[IngestEvent, Prepared | str]]) -> None:
        ready: list[tuple[IngestEvent, Prepared]] = []
        for ev, result in loaded:
            if isinstance(result, str):
                self._fail_bad_image(ev, result)
            else:
                ready.append((ev, result))
        if not ready:
            return
        try:
            results = self.indexer.commit([p for _, p in ready])
        except IndexUnavailable as e:
            self._retry([ev for ev, _ in ready], str(e))
            return
        by_image = {r.image_id: r for r in results}
        for ev, _ in ready:
            r = by_image.get(ev.image_id)
            if r is not None and r.outcome is not Outcome.FAILED:
                self.jobs.set_item(ev.job_id, ev.item, State.DONE, image_id=ev.image_id)
            else:
                reason = r.reason if r is not None else "not processed"
                self.jobs.set_item(ev.job_id, ev.item, State.FAILED, reason)

    def _fail_bad_image(self, ev: IngestEvent, reason: str) -> None:
        self.jobs.set_item(ev.job_id, ev.item, State.FAILED, reason, image_id=ev.image_id)
        # A refused image must not linger in the store unless a point already uses it.
        if not self.indexer.index.retrieve(self.indexer.collection, [point_id(ev.image_id)]):
            self.store.delete(ev.image_id)

    def _retry(self, events: Sequence[IngestEvent], reason: str) -> None:
        again: list[IngestEvent] = []
        for ev in events:
            if ev.attempt >= self.queue.max_retries:
                self.jobs.set_item(
                    ev.job_id,
                    ev.item,
                    State.FAILED,
                    f"gave up after {ev.attempt} retries: {reason}",
                )
            else:
                self.jobs.set_item(ev.job_id, ev.item, State.QUEUED, f"retrying: {reason}")
                again.append(replace(ev, attempt=ev.attempt + 1))
        if again:
            delay = backoff_s(again[0].attempt, self.queue)
            log.warning(
                "transient failure (%s); retrying %d items in %.1fs", reason, len(again), delay
            )
            self.dispatcher.publish(Kind.INGEST, [e.to_dict() for e in again], delay_s=delay)

    # -- URLs -----------------------------------------------------------------------------

    def fetch_payload(self, payload: Mapping[str, Any]) -> None:
        """Run one image.url_submitted message."""
        self.fetch(FetchEvent.from_dict(dict(payload)))

    def fetch(self, event: FetchEvent) -> None:
        """Download one URL, validate and store it, then publish its ingest event."""
        self.jobs.set_item(event.job_id, event.url, State.PROCESSING)
        try:
            data, final_url = fetch_image(event.url, self.fetch_settings, self.limits.max_bytes)
            prepare(IngestItem(data, final_url, event.metadata), self.limits, VALIDATION_SIDE)
        except FetchFailed as e:
            if event.attempt >= self.queue.max_retries:
                self.jobs.set_item(event.job_id, event.url, State.FAILED, str(e))
            else:
                self.jobs.set_item(event.job_id, event.url, State.QUEUED, f"retrying: {e}")
                nxt = replace(event, attempt=event.attempt + 1)
                delay = backoff_s(nxt.attempt, self.queue)
                self.dispatcher.publish(Kind.FETCH, [nxt.to_dict()], delay_s=delay)
            return
        except (FetchRefused, InvalidImage, InvalidMetadata) as e:
            self.jobs.set_item(event.job_id, event.url, State.FAILED, str(e))
            return
        image_id = self.store.put(data)
        self.jobs.set_item(event.job_id, event.url, State.PROCESSING, image_id=image_id)
        event_out = IngestEvent(
            job_id=event.job_id,
            item=event.url,
            image_id=image_id,
            filename=final_url,
            metadata={**event.metadata, "source_url": event.url},
        )
        self.dispatcher.publish(Kind.INGEST, [event_out.to_dict()])

    # -- bulk and delete ------------------------------------------------------------------

    def bulk_folder(
        self, job_id: str, path: str, metadata: Mapping[str, Mapping[str, Any]], chunk: int = 64
    ) -> None:
        """Fan a folder out into ingest events, validating and storing each file on the way."""
        root = Path(path)
        if not root.is_dir():
            self.jobs.fail_job(job_id, f"{path} is not a folder the workers can read")
            return
        files = sorted(
            f
            for f in root.rglob("*")
            if f.is_file() and not any(p.startswith(".") for p in f.relative_to(root).parts)
        )
        keys = [f.relative_to(root).as_posix() for f in files]
        self.jobs.add_items(job_id, keys)
        if not files:
            self.jobs.fail_job(job_id, f"{path} holds no files")
            return
        pending: list[dict[str, Any]] = []
        for f, key in zip(files, keys, strict=True):
            meta = dict(metadata.get(key) or metadata.get(f.name) or {})
            try:
                if f.stat().st_size > self.limits.max_bytes:
                    raise InvalidImage(
                        f"file is {f.stat().st_size} bytes; the limit is {self.limits.max_bytes}"
                    )
                data = f.read_bytes()
                prepare(IngestItem(data, key, meta), self.limits, VALIDATION_SIDE)
            except (InvalidImage, InvalidMetadata, OSError) as e:
                self.jobs.set_item(job_id, key, State.FAILED, str(e))
                continue
            image_id = self.store.put(data)
            pending.append(IngestEvent(job_id, key, image_id, key, meta).to_dict())
            if len(pending) >= chunk:
                self.dispatcher.publish(Kind.INGEST, pending)
                pending = []
        if pending:
            self.dispatcher.publish(Kind.INGEST, pending)

    def reembed(self, job_id: str, model: str, prefix: str, switch: bool, by: str = "") -> None:
        """Re-embed every image with ``model`` into collections under ``prefix``."""
        current = self.indexer.encoder
        target = Encoder(model, device=current.device, batch_size=current.batch_size)
        index = self.indexer.index
        reembed(
            index=index,
            store=self.store,
            limits=self.limits,
            source_prefix=self.indexer.collection.removesuffix("images"),
            target_prefix=prefix,
            target=target,
            jobs=self.jobs,
            job_id=job_id,
            switch=switch,
            flagged_store=self.flagged_originals,
        )
        if switch and index.active_prefix() == prefix and self.audit is not None:
            details = {"model": model, "prefix": prefix, "job": job_id, "requested_by": by}
            self.audit.record("system:reembed", "model.switch", prefix, None, details)

    def delete(self, job_id: str, image_ids: Sequence[str]) -> None:
        """Remove images from the index and the store."""
        for image_id in image_ids:
            self.jobs.set_item(job_id, image_id, State.PROCESSING)
        self.indexer.index.delete(self.indexer.collection, [point_id(i) for i in image_ids])
        for image_id in image_ids:
            self.store.delete(image_id)
            if self.thumbnails is not None:
                self.thumbnails.delete(image_id)
            self.jobs.set_item(job_id, image_id, State.DONE)
