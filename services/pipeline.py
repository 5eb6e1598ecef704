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

from services.encoder import Encoder
from services.errors import IndexUnavailable, InvalidImage, InvalidMetadata, NotFound
from services.events import Dispatcher, FetchEvent, IngestEvent
from services.fetch import FetchFailed, FetchRefused, fetch_image
from services.ids import point_id
from services.ingest import IngestItem, Ingestor, Outcome, _Prepared
from services.jobs import JobStore, State
from services.reembed import reembed
from services.retag import retag
from services.review import ReviewService
from services.settings import FetchSettings, ImageLimits, QueueSettings
from services.store import ImageStore

log = logging.getLogger(__name__)


def backoff_s(attempt: int, queue: QueueSettings) -> float:
    """Exponential backoff for the n-th retry (1-based), capped."""
    return float(min(queue.retry_backoff_max_s, queue.retry_backoff_s * 2 ** (attempt - 1)))


@dataclass
class Pipeline:
    """Processes ingest, fetch, bulk and delete work for one process."""

    ingestor: Ingestor
    store: ImageStore
    jobs: JobStore
    dispatcher: Dispatcher
    queue: QueueSettings
    fetch_settings: FetchSettings
    limits: ImageLimits
    review: ReviewService | None = None

    # -- ingest ---------------------------------------------------------------------------

    def _delivery_key(self, event: IngestEvent) -> str:
        # Deliveries are counted per retry generation, so retries of transient errors do not
        # use up the budget meant for items that crash their worker.
        return f"{event.item}#{event.round}.{event.attempt}"

    def _load(self, event: IngestEvent) -> _Prepared | str:
        """Read and validate one stored image; a string is the reason it failed."""
        try:
            data = self.store.get(event.image_id)
            return self.ingestor.prepare(IngestItem(data, event.filename, event.metadata))
        except NotFound:
            return f"image {event.image_id} is not in the image store"
        except (InvalidImage, InvalidMetadata) as e:
            return str(e)

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
        size = max(1, self.ingestor.encoder.batch_size)
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
    ) -> list[tuple[IngestEvent, _Prepared | str]]:
        return [(ev, self._load(ev)) for ev in events]

    def _commit_chunk(self, loaded: Sequence[tuple[IngestEvent, _Prepared | str]]) -> None:
        ready: list[tuple[IngestEvent, _Prepared]] = []
        for ev, result in loaded:
            if isinstance(result, str):
                self._fail_bad_image(ev, result)
            else:
                ready.append((ev, result))
        if not ready:
            return
        try:
            results = self.ingestor.commit([p for _, p in ready])
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
        if not self.ingestor.index.retrieve(self.ingestor.collection, [point_id(ev.image_id)]):
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
            self.dispatcher.ingest(again, delay_s=delay)

    # -- URLs -----------------------------------------------------------------------------

    def fetch(self, event: FetchEvent) -> None:
        """Download one URL, validate and store it, then publish its ingest event."""
        self.jobs.set_item(event.job_id, event.url, State.PROCESSING)
        try:
            data, final_url = fetch_image(event.url, self.fetch_settings, self.limits.max_bytes)
            prepared = self.ingestor.prepare(
                IngestItem(data, final_url, event.metadata), for_model=False
            )
        except FetchFailed as e:
            if event.attempt >= self.queue.max_retries:
                self.jobs.set_item(event.job_id, event.url, State.FAILED, str(e))
            else:
                self.jobs.set_item(event.job_id, event.url, State.QUEUED, f"retrying: {e}")
                nxt = replace(event, attempt=event.attempt + 1)
                self.dispatcher.fetch([nxt], delay_s=backoff_s(nxt.attempt, self.queue))
            return
        except (FetchRefused, InvalidImage, InvalidMetadata) as e:
            self.jobs.set_item(event.job_id, event.url, State.FAILED, str(e))
            return
        image_id = self.store.put(data)
        self.jobs.set_item(event.job_id, event.url, State.PROCESSING, image_id=image_id)
        self.dispatcher.ingest(
            [
                IngestEvent(
                    job_id=event.job_id,
                    item=event.url,
                    image_id=image_id,
                    filename=final_url,
                    metadata={**event.metadata, "source_url": event.url},
                )
            ]
        )
        del prepared

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
        pending: list[IngestEvent] = []
        for f, key in zip(files, keys, strict=True):
            meta = dict(metadata.get(key) or metadata.get(f.name) or {})
            try:
                if f.stat().st_size > self.limits.max_bytes:
                    raise InvalidImage(
                        f"file is {f.stat().st_size} bytes; the limit is {self.limits.max_bytes}"
                    )
                data = f.read_bytes()
                self.ingestor.prepare(IngestItem(data, key, meta), for_model=False)
            except (InvalidImage, InvalidMetadata, OSError) as e:
                self.jobs.set_item(job_id, key, State.FAILED, str(e))
                continue
            image_id = self.store.put(data)
            pending.append(IngestEvent(job_id, key, image_id, key, meta))
            if len(pending) >= chunk:
                self.dispatcher.ingest(pending)
                pending = []
        if pending:
            self.dispatcher.ingest(pending)

    def reembed(self, job_id: str, model: str, prefix: str, switch: bool) -> None:
        """Re-embed every image with ``model`` into collections under ``prefix``."""
        current = self.ingestor.encoder
        target = Encoder(model, device=current.device, batch_size=current.batch_size)
        reembed(
            index=self.ingestor.index,
            store=self.store,
            limits=self.limits,
            source_prefix=self.ingestor.collection.removesuffix("images"),
            target_prefix=prefix,
            target=target,
            jobs=self.jobs,
            job_id=job_id,
            switch=switch,
            flagged_store=self.review.flagged.originals if self.review is not None else None,
        )

    def retag(self, job_id: str) -> None:
        """Rewrite every image's tags with the current taxonomy."""
        tagger = self.ingestor.tagger
        if tagger is None:
            self.jobs.fail_job(job_id, "tagging is not configured in this process")
            return
        retag(
            index=self.ingestor.index,
            collection=self.ingestor.collection,
            store=self.store,
            tagger=tagger,
            jobs=self.jobs,
            job_id=job_id,
        )

    def scan_flagged(self, job_id: str, entry_ids: Sequence[str] | None) -> None:
        """Re-check existing images against flagged entries (all when ``entry_ids`` is None)."""
        if self.review is None:
            self.jobs.fail_job(job_id, "moderation is not configured in this process")
            return
        self.review.scan(self.jobs, job_id, entry_ids)

    def delete(self, job_id: str, image_ids: Sequence[str]) -> None:
        """Remove images from the index and the store."""
        for image_id in image_ids:
            self.jobs.set_item(job_id, image_id, State.PROCESSING)
        self.ingestor.index.delete(self.ingestor.collection, [point_id(i) for i in image_ids])
        for image_id in image_ids:
            self.store.delete(image_id)
            if self.ingestor.thumbnails is not None:
                self.ingestor.thumbnails.delete(image_id)
            self.jobs.set_item(job_id, image_id, State.DONE)
