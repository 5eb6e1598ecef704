"""Starting jobs and reading their state: a job store and a dispatcher behind one door.

A job is registered with its items (and each item's event) before any message is
published, and marked published once every message is with the broker; ``repair``
re-publishes the queued items of jobs that never were (the broker failed mid-way).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from services.auth.principal import Principal, Scope
from services.jobs.dispatch import Dispatcher
from services.jobs.kinds import JOB_KINDS, Kind
from services.jobs.store import DeadLetter, Job, JobStore, State

Payloads = Callable[[str], Sequence[Mapping[str, Any]]]
log = logging.getLogger(__name__)
# A job not marked published this long after its creation lost its publisher mid-way.
UNPUBLISHED_GRACE_S = 60.0
RECENT_SWEPT = 200  # jobs a lost-message sweep looks at (the job store keeps as many)


def _age_s(stamp: str | None, now: dt.datetime) -> float | None:
    if not stamp:
        return None
    return (now - dt.datetime.fromisoformat(stamp)).total_seconds()


class JobService:
    """Registers a job, then publishes its messages; answers what a job is doing."""

    def __init__(self, store: JobStore, dispatcher: Dispatcher, visibility_timeout_s: int) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.visibility_timeout_s = visibility_timeout_s
        # Items seen without a message, and when first (recover_lost confirms them).
        self._suspects: dict[tuple[str, str], float] = {}

    def start(
        self,
        label: str,
        kind: Kind,
        payloads: Payloads,
        keys: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
        item_key: str | None = None,
    ) -> str:
        """Create a job (its items queued, each keeping its payload when ``item_key``
        names the field that identifies it), publish ``payloads(job_id)``, then mark the
        job published; returns the id.

        Raises:
            BrokerUnavailable: publishing failed; ``repair`` finishes the job later.
        """
        job_id = uuid.uuid4().hex
        messages = payloads(job_id)
        events = {m[item_key]: m for m in messages} if item_key is not None else None
        meta = {**(meta or {}), "publishes": kind.value}
        self.store.create(label, keys, meta, events, job_id=job_id)
        self.dispatcher.publish(kind, messages)
        self.store.mark_published(job_id)
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

    def in_flight(self, caller: Principal, job_id: str) -> dict[str, Any]:
        """Items being processed now: how many, the oldest's age, and when a killed
        worker's items come back (the broker's visibility timeout after delivery)."""
        caller.require(Scope.INGEST)
        now = dt.datetime.now(dt.UTC)
        ages = [
            age
            for i in self.store.items(job_id, State.PROCESSING)
            if (age := _age_s(i.since, now)) is not None
        ]
        if not ages:
            return {"processing": 0}
        oldest = max(ages)
        return {
            "processing": len(ages),
            "oldest_s": round(oldest, 1),
            "visibility_timeout_s": self.visibility_timeout_s,
            "redelivered_in_s": round(max(0.0, self.visibility_timeout_s - oldest), 1),
        }

    def recent(self, caller: Principal, limit: int = 20) -> list[Job]:
        """The newest jobs, newest first."""
        caller.require(Scope.ADMIN)
        return self.store.recent(limit)

    def repair(self, caller: Principal, grace_s: float = UNPUBLISHED_GRACE_S) -> dict[str, int]:
        """Re-publish the queued items of jobs whose publisher failed before finishing
        (their events are kept with the items); returns jobs and items repaired."""
        caller.require(Scope.ADMIN)
        now = dt.datetime.now(dt.UTC)
        jobs = items = 0
        for job in self.store.recent(limit=10_000):
            age = _age_s(job.created_at, now)
            if job.published or age is None or age < grace_s:
                continue
            events = [i.event for i in self.store.items(job.id, State.QUEUED) if i.event]
            if events:
                self.dispatcher.publish(Kind(job.meta.get("publishes", Kind.INGEST)), events)
                items += len(events)
            self.store.mark_published(job.id)
            jobs += 1
        return {"jobs": jobs, "items": items}

    def recover_lost(self, caller: Principal, grace_s: float) -> dict[str, int]:
        """Re-publish items whose message is gone: still queued or processing, while their
        queue is empty and no worker holds their message.

        The Redis transport takes a message off its queue and then records it as
        unacknowledged, in two steps: a worker killed between them loses the message (a
        known kombu limitation), and its item would wait for ever. An item is given up
        for lost only when seen so in two sweeps at least ``grace_s`` apart (a live
        worker is between the two steps for microseconds); its kept event is published
        again, which is safe because point ids come from content. Returns items
        re-published and items suspected.
        """
        caller.require(Scope.ADMIN)
        now = time.monotonic()
        depths = self.dispatcher.queue_depths()
        held: dict[str, set[tuple[str, str]] | None] = {}
        seen: set[tuple[str, str]] = set()
        lost: dict[Kind, list[Mapping[str, Any]]] = {}
        for job in self.store.recent(limit=RECENT_SWEPT):
            kind = Kind(job.meta.get("publishes", Kind.INGEST))
            queue = JOB_KINDS[kind].queue
            if job.state not in (State.QUEUED, State.PROCESSING) or not job.published:
                continue
            if depths.get(queue, 0) > 0:
                continue  # messages still wait: an item may be among them
            if queue not in held:
                held[queue] = self.dispatcher.in_flight(queue)
            holding = held[queue]
            if holding is None:
                return {"republished": 0, "suspected": 0}  # in-process: nothing to lose
            for item in self.store.unsettled(job.id):
                key = (job.id, item.key)
                if item.event is None or key in holding:
                    continue
                seen.add(key)
                first = self._suspects.get(key)
                if first is None:
                    self._suspects[key] = now  # first seen: confirmed by a later sweep
                elif now - first >= grace_s:
                    lost.setdefault(kind, []).append(item.event)
                    del self._suspects[key]
        for key in set(self._suspects) - seen:
            del self._suspects[key]  # settled, or back in a queue
        for kind, events in lost.items():
            self.dispatcher.publish(kind, events)
            log.warning("re-published %d %s item(s) whose message was lost", len(events), kind)
        return {"republished": sum(map(len, lost.values())), "suspected": len(self._suspects)}

    def dead_letters(self, caller: Principal, limit: int = 100) -> list[DeadLetter]:
        """Messages no worker could parse, newest first."""
        caller.require(Scope.ADMIN)
        return self.store.dead_letters(limit)

    def replay_dead_letter(self, caller: Principal, letter_id: str) -> DeadLetter:
        """Publish a dead letter's message again (after the cause was fixed)."""
        caller.require(Scope.ADMIN)
        letter = self.store.take_dead_letter(letter_id)
        self.dispatcher.publish(Kind(letter.kind), [letter.payload])
        return letter

    def drop_dead_letter(self, caller: Principal, letter_id: str) -> DeadLetter:
        """Remove a dead letter for good."""
        caller.require(Scope.ADMIN)
        return self.store.take_dead_letter(letter_id)
