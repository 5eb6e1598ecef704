"""Every kind of background work, declared once: its queue, how it runs, how it fails.

Celery tasks are generated from this table and the in-process worker reads it too, so a
new kind of job is one row here, not six edits across publishers, tasks and dispatchers.
A payload is a JSON-like dict (what travels through the broker); ``run`` gets a list of
them (one, except for batched kinds) and may say which of them are settled (the others
are delivered again); ``fail`` marks what one payload carried as failed when ``run``
raised something unexpected, so no job waits forever.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from services.errors import Unavailable
from services.jobs.store import JobStore, State

if TYPE_CHECKING:
    from services.runtime import Runtime

INGEST_QUEUE = "ingest"
JOBS_QUEUE = "jobs"
QUEUES = (INGEST_QUEUE, JOBS_QUEUE)

Payload = Mapping[str, Any]


class Kind(StrEnum):
    """What a message asks a worker to do."""

    INGEST = "ingest"
    FETCH = "fetch"
    BULK = "bulk"
    DELETE = "delete"
    REEMBED = "reembed"
    RETAG = "retag"
    SCAN = "scan"


@dataclass(frozen=True)
class JobSpec:
    """One row of the table."""

    kind: Kind
    queue: str
    run: Callable[[Runtime, Sequence[Payload]], set[int] | None]
    fail: Callable[[JobStore, Payload, str], None]
    batched: bool = False

    @property
    def task_name(self) -> str:
        """The Celery task that carries this kind."""
        return f"sightline.{self.kind.value}"


def _fail_item(key_field: str) -> Callable[[JobStore, Payload, str], None]:
    def fail(jobs: JobStore, payload: Payload, reason: str) -> None:
        if isinstance(payload, Mapping) and {"job_id", key_field} <= set(payload):
            jobs.set_item(
                payload["job_id"],
                payload[key_field],
                State.FAILED,
                reason,
                image_id=payload.get("image_id"),
            )

    return fail


def _fail_images(jobs: JobStore, payload: Payload, reason: str) -> None:
    for image_id in payload["image_ids"]:
        jobs.set_item(payload["job_id"], image_id, State.FAILED, reason)


def _fail_job(jobs: JobStore, payload: Payload, reason: str) -> None:
    jobs.fail_job(payload["job_id"], reason)


def _ingest(rt: Runtime, payloads: Sequence[Payload]) -> set[int]:
    return rt.pipeline.ingest_payloads(payloads)


def _fetch(rt: Runtime, payloads: Sequence[Payload]) -> None:
    for p in payloads:
        rt.pipeline.fetch_payload(p)


def _bulk(rt: Runtime, payloads: Sequence[Payload]) -> None:
    for p in payloads:
        rt.pipeline.bulk_folder(p["job_id"], p["path"], p.get("metadata") or {})


def _delete(rt: Runtime, payloads: Sequence[Payload]) -> None:
    for p in payloads:
        rt.pipeline.delete(p["job_id"], p["image_ids"])


def _reembed(rt: Runtime, payloads: Sequence[Payload]) -> None:
    for p in payloads:
        rt.pipeline.reembed(p["job_id"], p["model"], p["prefix"], p["switch"], p.get("by", ""))


def _retag(rt: Runtime, payloads: Sequence[Payload]) -> None:
    for p in payloads:
        rt.tagging.run_retag(p["job_id"])


def _scan(rt: Runtime, payloads: Sequence[Payload]) -> None:
    for p in payloads:
        rt.moderation.run_scan(p["job_id"], p.get("entry_ids"))


JOB_KINDS: Mapping[Kind, JobSpec] = {
    spec.kind: spec
    for spec in (
        JobSpec(Kind.INGEST, INGEST_QUEUE, _ingest, _fail_item("item"), batched=True),
        JobSpec(Kind.FETCH, JOBS_QUEUE, _fetch, _fail_item("url")),
        JobSpec(Kind.BULK, JOBS_QUEUE, _bulk, _fail_job),
        JobSpec(Kind.DELETE, JOBS_QUEUE, _delete, _fail_images),
        JobSpec(Kind.REEMBED, JOBS_QUEUE, _reembed, _fail_job),
        JobSpec(Kind.RETAG, JOBS_QUEUE, _retag, _fail_job),
        JobSpec(Kind.SCAN, JOBS_QUEUE, _scan, _fail_job),
    )
}


def execute(rt: Runtime, kind: Kind, payloads: Sequence[Payload]) -> set[int]:
    """Run one unit of work through the table; returns the positions of the payloads that
    must not be acknowledged (their outcome is not recorded: deliver them again).

    A transient error (``Unavailable``) propagates as it is, for the worker to deliver the
    work again; on any other error every payload's items are failed with the reason (so no
    job hangs), then the error propagates for the worker's log.
    """
    spec = JOB_KINDS[kind]
    try:
        settled = spec.run(rt, payloads)
    except Unavailable:
        raise  # transient: the work is delivered again, its items keep their state
    except Exception as e:
        reason = f"internal error: {type(e).__name__}: {e}"
        for payload in payloads:
            spec.fail(rt.jobs.store, payload, reason)
        raise
    return set() if settled is None else set(range(len(payloads))) - settled
