"""Starting jobs and reading their state: a job store and a dispatcher behind one door."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from services.auth.principal import Principal, Scope
from services.jobs.dispatch import Dispatcher
from services.jobs.kinds import Kind
from services.jobs.store import Job, JobStore, State

Payloads = Callable[[str], Sequence[Mapping[str, Any]]]


class JobService:
    """Registers a job, then publishes its messages; answers what a job is doing."""

    def __init__(self, store: JobStore, dispatcher: Dispatcher) -> None:
        self.store = store
        self.dispatcher = dispatcher

    def start(
        self,
        label: str,
        kind: Kind,
        payloads: Payloads,
        keys: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Create a job (its items queued) and publish ``payloads(job_id)``; returns the id."""
        job_id = self.store.create(label, keys, meta)
        self.dispatcher.publish(kind, payloads(job_id))
        return job_id

    def get(self, caller: Principal, job_id: str) -> Job:
        """A job's state and counts.

        Raises:
            NotFound: no such job (or it expired).
        """
        caller.require(Scope.INGEST)
        return self.store.get(job_id)

    def failed_items(self, caller: Principal, job_id: str) -> list[dict[str, Any]]:
        """Failed items of a job with their reasons."""
        caller.require(Scope.INGEST)
        return [
            {"item": i.key, "image_id": i.image_id, "reason": i.reason, "attempts": i.attempts}
            for i in self.store.items(job_id, State.FAILED)
        ]

    def items(self, caller: Principal, job_id: str) -> list[dict[str, Any]]:
        """Every item of a job with its state."""
        caller.require(Scope.INGEST)
        return [
            {"item": i.key, "state": i.state.value, "reason": i.reason, "image_id": i.image_id}
            for i in self.store.items(job_id)
        ]

    def recent(self, caller: Principal, limit: int = 20) -> list[Job]:
        """The newest jobs, newest first."""
        caller.require(Scope.ADMIN)
        return self.store.recent(limit)
