"""Celery tasks, one per row of the job-kind table: parse nothing, decide nothing, just
hand the payloads to this process's runtime, which runs them through the same table the
in-process worker uses.

Per-process resources (model, index client, job store) live in the runtime, built on
first use after the worker forks.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery_batches import Batches, SimpleRequest

from services.jobs.kinds import JOB_KINDS, JobSpec
from services.runtime import Runtime, build_runtime
from services.settings import load_settings
from workers.dispatch import dispatcher_for

log = logging.getLogger(__name__)


class _RuntimeMixin:
    """Builds this worker process's Runtime once, on first use."""

    _runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        if _RuntimeMixin._runtime is None:
            settings = load_settings()
            runtime = build_runtime(settings, dispatcher_for(settings))
            runtime.open()
            _RuntimeMixin._runtime = runtime
        return _RuntimeMixin._runtime


class SightlineTask(_RuntimeMixin, Task):
    """Base for single-message tasks."""

    acks_late = True
    reject_on_worker_lost = True


class BatchTask(_RuntimeMixin, Batches):
    """Buffers messages into batches of the configured size / max wait."""

    acks_late = True
    reject_on_worker_lost = True

    @property
    def flush_every(self) -> int:
        return int(self.app.conf.sightline_batch_size)

    @property
    def flush_interval(self) -> float:
        return float(self.app.conf.sightline_batch_max_wait_s)


def _register(spec: JobSpec) -> Any:
    if spec.batched:

        def run_batch(self: BatchTask, requests: list[SimpleRequest]) -> None:
            self.runtime.execute(spec.kind, [r.kwargs["payload"] for r in requests])

        return shared_task(base=BatchTask, bind=True, name=spec.task_name)(run_batch)

    def run_one(self: SightlineTask, payload: dict[str, Any]) -> None:
        self.runtime.execute(spec.kind, [payload])

    return shared_task(base=SightlineTask, bind=True, name=spec.task_name)(run_one)


TASKS = {kind: _register(spec) for kind, spec in JOB_KINDS.items()}
