"""Celery tasks, one per row of the job-kind table: they hand the payloads to this
process's runtime, which runs them through the same table the in-process worker uses.

Acknowledgement follows what the runtime could record. The batched ingest task
acknowledges each message whose item's outcome is recorded and hands the others back to
the broker; single-message tasks retry transient failures (index, storage or broker
unavailable) with exponential backoff. Per-process resources (model, index client, job
store) live in the runtime, built when the worker process starts, so a worker says it is
ready only once its model is loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from typing import Any

from celery import Task, shared_task, signals
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from services.auth.principal import system
from services.errors import Unavailable
from services.ingest.pipeline import backoff_s
from services.jobs.kinds import JOB_KINDS, JobSpec
from services.jobs.service import JobService
from services.runtime import Runtime, build_job_store, build_runtime, redis_client
from services.settings import load_settings
from workers.dispatch import dispatcher_for

log = logging.getLogger(__name__)


class _RuntimeMixin:
    """This worker process's Runtime, built once."""

    _runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        return worker_runtime()


def worker_runtime() -> Runtime:
    """Build (once per process) and open the runtime: loads the model, opens the index."""
    if _RuntimeMixin._runtime is None:
        settings = load_settings().for_worker()
        runtime = build_runtime(settings, dispatcher_for(settings))
        runtime.open()
        _RuntimeMixin._runtime = runtime
    return _RuntimeMixin._runtime


@signals.worker_init.connect
def _load_before_ready(sender: Any = None, **_: Any) -> None:
    """Solo and thread pools run tasks in this process: load the model before consuming."""
    pool = getattr(getattr(sender, "pool_cls", None), "__module__", "")
    if "prefork" not in pool:
        worker_runtime()


@signals.worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    """Prefork children load their own model (after the fork, not before)."""
    worker_runtime()


SWEEP_LOCK = "sightline:sweep-lock"


def sweep_interval_s(visibility_timeout_s: int) -> float:
    """How often workers look for items whose message was lost: half the visibility
    timeout, within 2-30 s (a lost item waits about two intervals)."""
    return float(min(30.0, max(2.0, visibility_timeout_s / 2)))


def _sweep_forever(jobs: JobService, client: Any, interval_s: float) -> None:
    """Every interval, one worker of the deployment (whichever takes the lock) re-publishes
    items whose message a killed worker lost (``JobService.recover_lost``)."""
    me = system("lost-message sweep")
    while True:
        time.sleep(interval_s)
        try:
            if client.set(SWEEP_LOCK, "1", nx=True, px=int(interval_s * 900)):
                jobs.recover_lost(me, grace_s=interval_s)
        except Exception as e:  # a broker blip: the next interval tries again
            log.warning("lost-message sweep skipped: %s", e)


@signals.worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    """Each worker's main process sweeps for lost messages; no model is needed for it."""
    settings = load_settings()
    dispatcher = dispatcher_for(settings)
    if dispatcher is None or not settings.queue.broker:
        return
    jobs = JobService(build_job_store(settings), dispatcher, settings.queue.visibility_timeout_s)
    interval = sweep_interval_s(settings.queue.visibility_timeout_s)
    client = redis_client(settings.queue.broker)
    threading.Thread(
        target=_sweep_forever, args=(jobs, client, interval), daemon=True, name="sweeper"
    ).start()


class SightlineTask(_RuntimeMixin, Task):
    """Base for single-message tasks: late acknowledgement, transient failures retried."""

    acks_late = True
    reject_on_worker_lost = True


class BatchTask(_RuntimeMixin, Batches):
    """Buffers messages into batches of the configured size / max wait, and acknowledges
    each message on its own merits."""

    acks_late = True
    reject_on_worker_lost = True

    @property
    def flush_every(self) -> int:
        return int(self.app.conf.sightline_batch_size)

    @property
    def flush_interval(self) -> float:
        return float(self.app.conf.sightline_batch_max_wait_s)

    def flush(self, requests: Collection[Any]) -> Any:
        """Run the batch; then acknowledge the requests whose ids it returned and hand
        the others back to the broker (celery-batches would acknowledge them all)."""
        simple = ([SimpleRequest.from_request(r) for r in requests],)

        def on_return(settled: Any) -> None:
            done = set(settled or ())
            for request in requests:
                try:
                    if request.id in done:
                        request.acknowledge()
                    else:
                        request.reject(requeue=True)
                except Exception:  # broker gone: unacknowledged, redelivered later
                    log.warning("could not settle message %s; it will be redelivered", request.id)

        return self._pool.apply_async(
            apply_batches_task, (self, simple, 0, None), callback=on_return
        )


def _register(spec: JobSpec) -> Any:
    if spec.batched:

        def run_batch(self: BatchTask, requests: list[SimpleRequest]) -> list[str]:
            payloads = [r.kwargs.get("payload") for r in requests]
            try:
                again = self.runtime.execute(spec.kind, payloads)
            except Unavailable as e:
                log.warning("%s batch not settled (%s); it will be delivered again", spec.kind, e)
                return []
            return [r.id for n, r in enumerate(requests) if n not in again]

        return shared_task(base=BatchTask, bind=True, name=spec.task_name)(run_batch)

    def run_one(self: SightlineTask, payload: dict[str, Any]) -> None:
        try:
            self.runtime.execute(spec.kind, [payload])
        except Unavailable as e:  # transient: again later, with backoff, a bounded number
            queue = self.runtime.settings.queue
            attempt = self.request.retries + 1
            if attempt > queue.max_retries:
                reason = f"gave up after {queue.max_retries} retries (transient): {e}"
                spec.fail(self.runtime.jobs.store, payload, reason)
                raise
            raise self.retry(exc=e, countdown=backoff_s(attempt, queue), max_retries=None) from e

    return shared_task(base=SightlineTask, bind=True, name=spec.task_name)(run_one)


TASKS = {kind: _register(spec) for kind, spec in JOB_KINDS.items()}
