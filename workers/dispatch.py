"""Two ways to publish work: to Celery over Redis, or to a thread in this process.

Both feed the same ``Pipeline`` methods, so the embedded single-process mode behaves like
the distributed one: a job id at once, then queued -> processing -> done | failed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery

from services.events import FetchEvent, IngestEvent
from services.jobs import JobStore, State
from services.pipeline import Pipeline

log = logging.getLogger(__name__)


class CeleryDispatcher:
    """Publishes events as Celery tasks (by name: publishers need not import the tasks)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def ingest(self, events: Sequence[IngestEvent], delay_s: float = 0.0) -> None:
        for ev in events:
            self.app.send_task(
                "sightline.ingest", kwargs={"event": ev.to_dict()}, countdown=delay_s or None
            )

    def fetch(self, events: Sequence[FetchEvent], delay_s: float = 0.0) -> None:
        for ev in events:
            self.app.send_task(
                "sightline.fetch_url", kwargs={"event": ev.to_dict()}, countdown=delay_s or None
            )

    def bulk_folder(self, job_id: str, path: str, metadata: dict[str, dict[str, Any]]) -> None:
        self.app.send_task(
            "sightline.bulk_folder", kwargs={"job_id": job_id, "path": path, "metadata": metadata}
        )

    def delete(self, job_id: str, image_ids: Sequence[str]) -> None:
        self.app.send_task(
            "sightline.delete", kwargs={"job_id": job_id, "image_ids": list(image_ids)}
        )

    def reembed(self, job_id: str, model: str, prefix: str, switch: bool) -> None:
        self.app.send_task(
            "sightline.reembed",
            kwargs={"job_id": job_id, "model": model, "prefix": prefix, "switch": switch},
        )

    def retag(self, job_id: str) -> None:
        self.app.send_task("sightline.retag", kwargs={"job_id": job_id})

    def scan_flagged(self, job_id: str, entry_ids: Sequence[str] | None) -> None:
        self.app.send_task(
            "sightline.scan_flagged",
            kwargs={"job_id": job_id, "entry_ids": list(entry_ids) if entry_ids else None},
        )


_STOP = object()


class InProcessDispatcher:
    """A background thread running the pipeline: the embedded mode's worker.

    Ingest events are batched like the Celery worker does: up to ``batch_size`` events,
    waiting at most ``max_wait_s`` after the first for the batch to fill.
    """

    def __init__(self, jobs: JobStore, batch_size: int, max_wait_s: float) -> None:
        self.jobs = jobs
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pipeline: Pipeline | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._timers: set[threading.Timer] = set()
        self._pending = 0  # units queued or scheduled and not yet finished
        self._idle = threading.Condition()

    def bind(self, pipeline: Pipeline) -> None:
        """Attach the pipeline (built after the dispatcher, which it needs for retries)."""
        self._pipeline = pipeline

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sightline-queue", daemon=True
                )
                self._thread.start()

    def _put(self, kind: str, payload: Any, delay_s: float = 0.0) -> None:
        self._start()
        with self._idle:
            self._pending += 1
        if delay_s > 0:
            timer = threading.Timer(delay_s, self._queue.put, args=((kind, payload),))
            timer.daemon = True
            self._timers.add(timer)
            timer.start()
        else:
            self._queue.put((kind, payload))

    def ingest(self, events: Sequence[IngestEvent], delay_s: float = 0.0) -> None:
        for ev in events:
            self._put("ingest", ev, delay_s)

    def fetch(self, events: Sequence[FetchEvent], delay_s: float = 0.0) -> None:
        for ev in events:
            self._put("fetch", ev, delay_s)

    def bulk_folder(self, job_id: str, path: str, metadata: dict[str, dict[str, Any]]) -> None:
        self._put("bulk", (job_id, path, metadata))

    def delete(self, job_id: str, image_ids: Sequence[str]) -> None:
        self._put("delete", (job_id, list(image_ids)))

    def reembed(self, job_id: str, model: str, prefix: str, switch: bool) -> None:
        self._put("reembed", (job_id, model, prefix, switch))

    def retag(self, job_id: str) -> None:
        self._put("retag", (job_id,))

    def scan_flagged(self, job_id: str, entry_ids: Sequence[str] | None) -> None:
        self._put("scan", (job_id, list(entry_ids) if entry_ids else None))

    def _run(self) -> None:
        deferred: list[tuple[str, Any]] = []
        while True:
            kind, payload = deferred.pop(0) if deferred else self._queue.get()
            if kind == "stop":
                return
            if kind != "ingest":
                self._guard(kind, payload)
                self._finished(1)
                continue
            batch = [payload]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.batch_size:
                remaining = deadline - time.monotonic()
                try:
                    nxt = (
                        self._queue.get(timeout=max(remaining, 0.0))
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if nxt[0] == "ingest":
                    batch.append(nxt[1])
                else:
                    deferred.append(nxt)
            self._guard("ingest", batch)
            self._finished(len(batch))

    def _finished(self, n: int) -> None:
        with self._idle:
            self._pending -= n
            self._idle.notify_all()

    def _pipe(self) -> Pipeline:
        if self._pipeline is None:
            raise RuntimeError("InProcessDispatcher used before bind()")
        return self._pipeline

    def _dispatch(self, kind: str, payload: Any) -> None:
        pipe = self._pipe()
        if kind == "ingest":
            pipe.ingest_events(payload)
        elif kind == "fetch":
            pipe.fetch(payload)
        elif kind == "bulk":
            pipe.bulk_folder(*payload)
        elif kind == "delete":
            pipe.delete(*payload)
        elif kind == "reembed":
            pipe.reembed(*payload)
        elif kind == "retag":
            pipe.retag(*payload)
        elif kind == "scan":
            pipe.scan_flagged(*payload)

    def _guard(self, kind: str, payload: Any) -> None:
        """Run one unit of work; an unexpected error fails its items instead of the thread."""
        try:
            self._dispatch(kind, payload)
        except Exception as e:  # the queue thread must survive anything one job does
            log.exception("in-process %s task failed", kind)
            fail_items(self.jobs, kind, payload, f"internal error: {e}")

    def join(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything queued so far is processed (for tests and the CLI)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s)

    def close(self) -> None:
        """Stop the thread after the work already queued."""
        for t in self._timers:
            t.cancel()
        if self._thread is not None:
            self._queue.put(("stop", None))
            self._thread.join(timeout=60)


def fail_items(jobs: JobStore, kind: str, payload: Any, reason: str) -> None:
    """Mark the items a failed unit of work carried as failed, so no job hangs forever."""
    if kind == "ingest":
        for ev in payload:
            jobs.set_item(ev.job_id, ev.item, State.FAILED, reason, image_id=ev.image_id)
    elif kind == "fetch":
        jobs.set_item(payload.job_id, payload.url, State.FAILED, reason)
    elif kind in ("bulk", "reembed", "retag", "scan"):
        jobs.fail_job(payload[0], reason)
    elif kind == "delete":
        for image_id in payload[1]:
            jobs.set_item(payload[0], image_id, State.FAILED, reason)
