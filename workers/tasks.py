"""Celery tasks: thin wrappers that parse an event and call the pipeline.

Per-process resources (model, index client, job store) live on the base task class and
are built on first use, after the worker forks.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery_batches import Batches, SimpleRequest

from services.events import FetchEvent, IngestEvent
from services.settings import load_settings
from workers.dispatch import fail_items
from workers.runtime import Runtime, build_runtime

log = logging.getLogger(__name__)


class _RuntimeMixin:
    """Builds this worker process's Runtime once, on first use."""

    _runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        if _RuntimeMixin._runtime is None:
            runtime = build_runtime(load_settings())
            runtime.services.open()
            _RuntimeMixin._runtime = runtime
        return _RuntimeMixin._runtime


class SightlineTask(_RuntimeMixin, Task):
    """Base for single-message tasks."""

    acks_late = True
    reject_on_worker_lost = True


class IngestBatches(_RuntimeMixin, Batches):
    """Buffers image.uploaded messages into batches of the configured size / max wait."""

    acks_late = True
    reject_on_worker_lost = True

    @property
    def flush_every(self) -> int:
        return int(self.app.conf.sightline_batch_size)

    @property
    def flush_interval(self) -> float:
        return float(self.app.conf.sightline_batch_max_wait_s)


@shared_task(base=IngestBatches, bind=True, name="sightline.ingest")
def ingest(self: IngestBatches, requests: list[SimpleRequest]) -> None:
    """Embed and upsert a batch of uploaded images; acknowledged after the upsert."""
    events = [IngestEvent.from_dict(r.kwargs["event"]) for r in requests]
    try:
        self.runtime.pipeline.ingest_events(events)
    except Exception as e:
        # Unexpected: fail the items with the reason so no job waits forever, then re-raise
        # for the worker log.
        fail_items(self.runtime.jobs, "ingest", events, f"internal error: {e}")
        raise


@shared_task(base=SightlineTask, bind=True, name="sightline.fetch_url")
def fetch_url(self: SightlineTask, event: dict[str, Any]) -> None:
    """Download one URL and publish its ingest event."""
    self.runtime.pipeline.fetch(FetchEvent.from_dict(event))


@shared_task(base=SightlineTask, bind=True, name="sightline.bulk_folder")
def bulk_folder(
    self: SightlineTask, job_id: str, path: str, metadata: dict[str, dict[str, Any]]
) -> None:
    """Walk a folder and fan it out into ingest events."""
    self.runtime.pipeline.bulk_folder(job_id, path, metadata)


@shared_task(base=SightlineTask, bind=True, name="sightline.delete")
def delete(self: SightlineTask, job_id: str, image_ids: list[str]) -> None:
    """Remove images from index and store."""
    self.runtime.pipeline.delete(job_id, image_ids)


@shared_task(base=SightlineTask, bind=True, name="sightline.reembed")
def reembed(self: SightlineTask, job_id: str, model: str, prefix: str, switch: bool) -> None:
    """Re-embed the catalog with another model, then switch to it."""
    try:
        self.runtime.pipeline.reembed(job_id, model, prefix, switch)
    except Exception as e:
        self.runtime.jobs.fail_job(job_id, f"re-embed failed: {e}")
        raise


@shared_task(base=SightlineTask, bind=True, name="sightline.retag")
def retag(self: SightlineTask, job_id: str) -> None:
    """Rewrite every image's tags with the current taxonomy."""
    try:
        self.runtime.pipeline.retag(job_id)
    except Exception as e:
        self.runtime.jobs.fail_job(job_id, f"re-tag failed: {e}")
        raise


@shared_task(base=SightlineTask, bind=True, name="sightline.scan_flagged")
def scan_flagged(self: SightlineTask, job_id: str, entry_ids: list[str] | None) -> None:
    """Re-check existing images against flagged entries; quarantine new matches."""
    try:
        self.runtime.pipeline.scan_flagged(job_id, entry_ids)
    except Exception as e:
        self.runtime.jobs.fail_job(job_id, f"moderation scan failed: {e}")
        raise
