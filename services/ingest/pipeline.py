"""What workers do with events: the task bodies, free of Celery so one code path serves both
the Celery workers and the embedded in-process queue.

Ingest accounts for every item on its own. A message may be acknowledged only once its
item's outcome is durably recorded: indexed, failed with a reason, or re-published for
a retry of a transient failure. ``ingest_payloads`` returns which messages those are;
the rest are handed back to the broker and delivered again, which is harmless because
point ids derive from content. A message that cannot be parsed goes to the dead-letter
list on its own. Items are processed in chunks marked in the job store; a redelivered
item still marked by a worker that is gone was in a chunk that killed its worker, so it
is retried in a chunk half as large, and only an item that was alone when its worker
died ``max_deliveries`` times is given up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.audit import AuditLog
from services.encoder import Encoder
from services.errors import (
    BrokerUnavailable,
    InvalidImage,
    InvalidInput,
    InvalidMetadata,
    NotFound,
    SightlineError,
    Unavailable,
)
from services.ids import is_image_id, point_id
from services.ingest.events import FetchEvent, IngestEvent
from services.ingest.fetch import FetchFailed, FetchRefused, fetch_image
from services.ingest.indexer import Indexer, Outcome
from services.ingest.intake import VALIDATION_SIDE, IngestItem, Prepared, prepare
from services.ingest.reembed import reembed
from services.jobs.dispatch import Dispatcher
from services.jobs.kinds import Kind
from services.jobs.store import JobStore, State
from services.settings import FetchSettings, ImageLimits, ModerationSettings, QueueSettings
from services.storage.files import ImageStore
from services.storage.thumbnails import ThumbnailStore

log = logging.getLogger(__name__)
TERMINAL = (State.DONE, State.FAILED)


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
    moderation: ModerationSettings = field(default_factory=ModerationSettings)
    # Who marks chunks: a marker from another incarnation means that worker died.
    incarnation: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _unfinished: list[tuple[str, list[str]]] = field(default_factory=list)

    # -- ingest ---------------------------------------------------------------------------

    def _delivery_key(self, event: IngestEvent) -> str:
        # Deliveries are counted per retry generation, for reporting.
        return f"{event.item}#{event.round}.{event.attempt}"

    def _load(self, event: IngestEvent) -> Prepared | str:
        """Read and validate one stored image; a string is the reason it failed.

        Raises:
            StorageUnavailable: the store cannot be read (transient).
        """
        try:
            data = self.store.get(event.image_id)
            item = IngestItem(data, event.filename, event.metadata)
            return prepare(item, self.limits, self.indexer.decode_side)
        except NotFound:
            return f"image {event.image_id} is not in the image store"
        except (InvalidImage, InvalidMetadata) as e:
            return str(e)

    def ingest_payloads(self, payloads: Sequence[Any]) -> set[int]:
        """Ingest a batch of image.uploaded messages as they came off the queue; returns
        the positions of those whose outcome is recorded (safe to acknowledge)."""
        self._clear_unfinished()
        recorded: set[int] = set()
        events: list[tuple[int, IngestEvent]] = []
        for n, payload in enumerate(payloads):
            try:
                events.append((n, IngestEvent.from_dict(payload)))
            except InvalidInput as e:
                if self._dead_letter(payload, str(e)):
                    recorded.add(n)
        return recorded | self.ingest_events(events)

    def ingest_events(self, events: Sequence[tuple[int, IngestEvent]]) -> set[int]:
        """Decode, embed and upsert events (each with its message's position); returns the
        positions whose outcome is recorded.

        Permanent failures (bad image, bad id) fail their item at once with the reason; a
        transient failure (index, storage or broker unavailable) re-publishes the item with
        exponential backoff, a bounded number of times.
        """
        recorded: set[int] = set()
        chunks: dict[int, list[tuple[int, IngestEvent]]] = {}
        for n, ev in events:
            try:
                size = self._triage(ev)
            except BrokerUnavailable as e:
                log.warning(
                    "cannot account for %s now (%s); it will be delivered again", ev.item, e
                )
                continue
            if size == 0:
                recorded.add(n)  # settled already, or settled just now
            else:
                chunks.setdefault(size, []).append((n, ev))
        work = [
            group[i : i + size]
            for size, group in sorted(chunks.items(), reverse=True)
            for i in range(0, len(group), size)
        ]
        shared = [c for c in work if len(c) > 1]
        if shared:
            # Decode the next chunk on a thread (Pillow releases the GIL) while the model
            # embeds this one, so decoding hides behind the model instead of adding to it.
            # The first chunk has the model's cores to itself (the model waits for it), so
            # it is decoded on as many threads as the model has: on 2 cores that halves the
            # time before the model starts.
            cores = self.indexer.encoder.threads or os.cpu_count() or 1
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
                pending = pool.submit(self._begin, shared[0], cores)
                for n in range(len(shared)):
                    loaded = pending.result()
                    if n + 1 < len(shared):
                        pending = pool.submit(self._begin, shared[n + 1])
                    if loaded is not None:
                        recorded |= self._commit_chunk(loaded)
        # An item alone in its chunk is processed with nothing else in flight, so that if
        # the worker dies, the blame is its alone.
        for chunk in (c for c in work if len(c) == 1):
            loaded = self._begin(chunk)
            if loaded is not None:
                recorded |= self._commit_chunk(loaded)
        return recorded

    def _triage(self, ev: IngestEvent) -> int:
        """How large a chunk this event may be processed in; 0 when its outcome is
        recorded already or was recorded here (a bad id, an item given up as poison)."""
        batch = max(1, self.indexer.encoder.batch_size)
        if not is_image_id(ev.image_id):
            self._record(ev, State.FAILED, f"not an image id: {ev.image_id!r}")
            return 0
        status = self.jobs.statuses(ev.job_id, [ev.item]).get(ev.item)
        if status is not None and status.state in TERMINAL:
            return 0  # a redelivery of an item whose outcome was recorded
        self.jobs.attempt(ev.job_id, self._delivery_key(ev))
        marker = self.jobs.markers(ev.job_id, [ev.item]).get(ev.item)
        if marker is None:
            return batch
        group, _, incarnation = marker.partition(":")
        if incarnation == self.incarnation:
            return batch  # this process is alive: a recording failed, nothing died
        if int(group) > 1:
            return max(1, int(group) // 2)  # find the item that kills the worker by halves
        deaths = self.jobs.count_death(ev.job_id, ev.item)
        if deaths >= self.queue.max_deliveries:
            reason = (
                f"gave up: processing it killed the worker {deaths} times, each time with "
                "no other item beside it"
            )
            self._record(ev, State.FAILED, reason)
            self.jobs.finish(ev.job_id, [ev.item])
            return 0
        return 1

    def _begin(
        self, chunk: Sequence[tuple[int, IngestEvent]], threads: int = 1
    ) -> list[tuple[int, IngestEvent, Prepared | str | SightlineError]] | None:
        """Mark a chunk as being processed, then read and decode it (split over
        ``threads``); None when the marks could not be written (the chunk is left for
        redelivery)."""
        try:
            for job_id, keys in _by_job([ev for _, ev in chunk]).items():
                self.jobs.begin(job_id, keys, f"{len(chunk)}:{self.incarnation}")
            for _, ev in chunk:
                self.jobs.set_item(
                    ev.job_id, ev.item, State.PROCESSING, image_id=ev.image_id, event=ev.to_dict()
                )
        except BrokerUnavailable as e:
            log.warning("cannot mark a chunk of %d (%s); it will be delivered again", len(chunk), e)
            return None
        if threads > 1 and len(chunk) > 1:
            step = -(-len(chunk) // threads)
            parts = [chunk[i : i + step] for i in range(0, len(chunk), step)]
            with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="decode") as pool:
                return [row for part in pool.map(self._decode, parts) for row in part]
        return self._decode(chunk)

    def _decode(
        self, chunk: Sequence[tuple[int, IngestEvent]]
    ) -> list[tuple[int, IngestEvent, Prepared | str | SightlineError]]:
        """Read, validate and decode a marked chunk, with its model inputs and thumbnails."""
        out: list[tuple[int, IngestEvent, Prepared | str | SightlineError]] = []
        for n, ev in chunk:
            try:
                out.append((n, ev, self._load(ev)))
            except Unavailable as e:
                out.append((n, ev, e))
        # Model inputs and thumbnails too, here on the decode thread, off the model's.
        decoded = [(k, r) for k, (_, _, r) in enumerate(out) if isinstance(r, Prepared)]
        try:
            made = self.indexer.ready([r for _, r in decoded])
        except Exception:  # an optimisation only: what failed here is done at commit, whose
            # handler fails the items with the reason instead of redelivering them forever
            log.exception("preparing a chunk ahead of the model failed; it is done at commit")
            made = [r for _, r in decoded]
        for (k, _), ready in zip(decoded, made, strict=True):
            n, ev, _ = out[k]
            out[k] = (n, ev, ready)
        return out

    def _commit_chunk(
        self, loaded: Sequence[tuple[int, IngestEvent, Prepared | str | SightlineError]]
    ) -> set[int]:
        """Index a decoded chunk and record each item's outcome; returns the positions
        recorded."""
        recorded: set[int] = set()
        ready: list[tuple[int, IngestEvent, Prepared]] = []
        transient: list[tuple[int, IngestEvent]] = []
        reasons: dict[str, str] = {}
        for n, ev, result in loaded:
            if isinstance(result, Prepared):
                ready.append((n, ev, result))
            elif isinstance(result, SightlineError):
                transient.append((n, ev))
                reasons[ev.item] = str(result)
            elif self._fail_bad_image(ev, result):
                recorded.add(n)
        if ready:
            try:
                results = self.indexer.commit([p for _, _, p in ready])
            except Unavailable as e:
                transient += [(n, ev) for n, ev, _ in ready]
                reasons.update({ev.item: str(e) for _, ev, _ in ready})
            except Exception as e:  # a bug: fail the items with it rather than loop forever
                log.exception("indexing a chunk failed")
                for n, ev, _ in ready:
                    if self._record(ev, State.FAILED, f"internal error: {type(e).__name__}: {e}"):
                        recorded.add(n)
            else:
                by_image = {r.image_id: r for r in results}
                for n, ev, _ in ready:
                    r = by_image.get(ev.image_id)
                    if r is not None and r.outcome is not Outcome.FAILED:
                        ok = self._record(ev, State.DONE)
                    else:
                        ok = self._record(ev, State.FAILED, r.reason if r else "not processed")
                    if ok:
                        recorded.add(n)
        recorded |= self._retry(transient, reasons)
        self._finish([ev for _, ev, _ in loaded])
        return recorded

    def _record(self, ev: IngestEvent, state: State, reason: str | None = None) -> bool:
        """Record an item's outcome; False when the job store is unavailable."""
        try:
            self.jobs.set_item(ev.job_id, ev.item, state, reason, image_id=ev.image_id)
        except BrokerUnavailable as e:
            log.warning("cannot record %s of %s (%s)", state.value, ev.item, e)
            return False
        return True

    def _finish(self, events: Sequence[IngestEvent]) -> None:
        """Clear the chunk markers; those that cannot be cleared now are cleared before the
        next batch (a marker left by a live worker must not read as a death)."""
        for job_id, keys in _by_job(events).items():
            try:
                self.jobs.finish(job_id, keys)
            except BrokerUnavailable:
                self._unfinished.append((job_id, keys))

    def _clear_unfinished(self) -> None:
        pending, self._unfinished = self._unfinished, []
        for job_id, keys in pending:
            try:
                self.jobs.finish(job_id, keys)
            except BrokerUnavailable:
                self._unfinished.append((job_id, keys))

    def _dead_letter(self, payload: Any, reason: str) -> bool:
        """Keep an unparseable message for an operator, and fail its item if it names
        one; False when that cannot be recorded now."""
        try:
            letter = self.jobs.add_dead_letter(Kind.INGEST.value, payload, reason)
            if isinstance(payload, dict) and all(
                isinstance(payload.get(k), str) for k in ("job_id", "item")
            ):
                # (a job that expired or never existed: the dead letter is the record)
                with contextlib.suppress(NotFound):
                    self.jobs.set_item(
                        payload["job_id"],
                        payload["item"],
                        State.FAILED,
                        f"{reason} (dead letter {letter})",
                    )
        except BrokerUnavailable as e:
            log.warning("cannot dead-letter a malformed event (%s)", e)
            return False
        log.warning("dead-lettered a malformed event as %s: %s", letter, reason)
        return True

    def _fail_bad_image(self, ev: IngestEvent, reason: str) -> bool:
        if not self._record(ev, State.FAILED, reason):
            return False
        # A refused image must not linger in the store unless a point already uses it.
        try:
            if not self.indexer.index.retrieve(self.indexer.collection, [point_id(ev.image_id)]):
                self.store.delete(ev.image_id)
        except Unavailable as e:  # reconcile finds it later and fails it again
            log.warning("could not remove the refused original %s: %s", ev.image_id, e)
        return True

    def _retry(
        self, events: Sequence[tuple[int, IngestEvent]], reasons: Mapping[str, str]
    ) -> set[int]:
        """Re-publish items that met a transient failure, with backoff; give up after
        ``max_retries``. Returns the positions whose retry (or failure) is recorded."""
        recorded: set[int] = set()
        for n, ev in events:
            reason = reasons[ev.item]
            if ev.attempt >= self.queue.max_retries:
                state, note = (
                    State.FAILED,
                    f"gave up after {ev.attempt} retries (transient): {reason}",
                )
            else:
                nxt = replace(ev, attempt=ev.attempt + 1)
                delay = backoff_s(nxt.attempt, self.queue)
                try:
                    self.dispatcher.publish(Kind.INGEST, [nxt.to_dict()], delay_s=delay)
                except BrokerUnavailable as e:
                    log.warning("cannot re-publish %s (%s)", ev.item, e)
                    continue
                log.warning("transient failure (%s); retrying %s in %.1fs", reason, ev.item, delay)
                state, note = State.QUEUED, f"retrying (transient): {reason}"
            if self._record(ev, state, note):
                recorded.add(n)
        return recorded

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
        # The same runtime as the current model's: re-embedding under onnx-int8 makes int8
        # vectors (a collection of their own identity).
        target = Encoder(
            model,
            device=current.device,
            batch_size=current.batch_size,
            trust_remote_code=current.trust_remote_code,
            runtime=current.runtime.value,
            onnx_cache=current.onnx_cache,
            threads=current.threads,
            spin=current.spin,
        )
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
            keypoint_threshold=self.moderation.keypoint_threshold,
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


def _by_job(events: Sequence[IngestEvent]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ev in events:
        out.setdefault(ev.job_id, []).append(ev.item)
    return out
