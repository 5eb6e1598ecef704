"""Job tracking: every upload and bulk job has an id whose state any process can read.

Items move queued -> processing -> done | failed. Counts come from per-state sets, so a
redelivered item (at-least-once delivery) is counted once. Two stores share one contract:
Redis for multi-process deployments, memory for the embedded single-process mode.
"""

from __future__ import annotations

import abc
import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from services.errors import NotFound

# An item that catalog-wide jobs (re-tag, moderation scan) are created with and finish
# last, so a job cannot look done while its scan is still finding items.
SCAN_ITEM = "catalog scan"


RECENT_KEY = "sightline:jobs:recent"
RECENT_KEPT = 200


class State(StrEnum):
    """Lifecycle of a job or of one of its items."""

    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class ItemStatus:
    """One item of a job (an image id, a file, a URL)."""

    key: str
    state: State
    reason: str | None = None
    image_id: str | None = None
    attempts: int = 0
    event: dict[str, Any] | None = None


@dataclass(frozen=True)
class Job:
    """A job's state and counts, derived from its items."""

    id: str
    kind: str
    state: State
    total: int
    counts: dict[str, int]
    created_at: str
    reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the CLI and API."""
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "total": self.total,
            "counts": self.counts,
            "created_at": self.created_at,
            "reason": self.reason,
            "meta": self.meta,
        }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def derive_state(total: int, counts: Mapping[str, int], failure: str | None) -> State:
    """A job is failed if it failed as a whole or every item failed; done when all settled."""
    if failure is not None:
        return State.FAILED
    settled = counts.get("done", 0) + counts.get("failed", 0)
    if total and settled >= total:
        return State.FAILED if counts.get("done", 0) == 0 else State.DONE
    if counts.get("processing", 0) or settled:
        return State.PROCESSING
    return State.QUEUED


class JobStore(abc.ABC):
    """Where job and item states live."""

    @abc.abstractmethod
    def create(
        self, kind: str, keys: Iterable[str] = (), meta: Mapping[str, Any] | None = None
    ) -> str:
        """Register a job with its items (all queued); returns the job id."""

    @abc.abstractmethod
    def add_items(self, job_id: str, keys: Iterable[str]) -> None:
        """Add items to a job (bulk jobs discover their items as they go)."""

    @abc.abstractmethod
    def set_item(
        self,
        job_id: str,
        key: str,
        state: State,
        reason: str | None = None,
        image_id: str | None = None,
        event: dict[str, Any] | None = None,
    ) -> None:
        """Move one item to a state (idempotent); ``event`` keeps what is needed to retry it."""

    @abc.abstractmethod
    def attempt(self, job_id: str, key: str) -> int:
        """Count one more delivery of an item; returns the count including this one."""

    @abc.abstractmethod
    def fail_job(self, job_id: str, reason: str) -> None:
        """Mark the whole job failed (e.g. its folder does not exist)."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job:
        """The job, or NotFound."""

    @abc.abstractmethod
    def items(self, job_id: str, state: State | None = None) -> list[ItemStatus]:
        """Items of a job, optionally only those in one state."""

    @abc.abstractmethod
    def recent(self, limit: int = 20) -> list[Job]:
        """The newest jobs still kept, newest first (for the status page)."""


class MemoryJobStore(JobStore):
    """Jobs in this process's memory: the embedded mode, where everything is one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}

    def _job(self, job_id: str) -> dict[str, Any]:
        try:
            return self._jobs[job_id]
        except KeyError as e:
            raise NotFound(f"no job {job_id!r}") from e

    def create(
        self, kind: str, keys: Iterable[str] = (), meta: Mapping[str, Any] | None = None
    ) -> str:
        job_id = uuid.uuid4().hex
        with self._lock:
            self._jobs[job_id] = {
                "kind": kind,
                "created_at": _now(),
                "meta": dict(meta or {}),
                "failure": None,
                "items": {},
                "attempts": {},
            }
        self.add_items(job_id, keys)
        return job_id

    def recent(self, limit: int = 20) -> list[Job]:
        with self._lock:
            ids = list(self._jobs)[-limit:]
        return [self.get(i) for i in reversed(ids)]

    def add_items(self, job_id: str, keys: Iterable[str]) -> None:
        with self._lock:
            items = self._job(job_id)["items"]
            for key in keys:
                items.setdefault(key, ItemStatus(key, State.QUEUED))

    def set_item(
        self,
        job_id: str,
        key: str,
        state: State,
        reason: str | None = None,
        image_id: str | None = None,
        event: dict[str, Any] | None = None,
    ) -> None:
        with self._lock:
            items = self._job(job_id)["items"]
            old = items.get(key, ItemStatus(key, State.QUEUED))
            items[key] = ItemStatus(
                key, state, reason, image_id or old.image_id, old.attempts, event or old.event
            )

    def attempt(self, job_id: str, key: str) -> int:
        with self._lock:
            attempts = self._job(job_id)["attempts"]
            attempts[key] = attempts.get(key, 0) + 1
            return int(attempts[key])

    def fail_job(self, job_id: str, reason: str) -> None:
        with self._lock:
            self._job(job_id)["failure"] = reason

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._job(job_id)
            items = list(job["items"].values())
        counts = {s.value: sum(i.state is s for i in items) for s in State}
        return Job(
            id=job_id,
            kind=job["kind"],
            state=derive_state(len(items), counts, job["failure"]),
            total=len(items),
            counts=counts,
            created_at=job["created_at"],
            reason=job["failure"],
            meta=job["meta"],
        )

    def items(self, job_id: str, state: State | None = None) -> list[ItemStatus]:
        with self._lock:
            job = self._job(job_id)
            items = list(job["items"].values())
            deliveries = _deliveries_per_item(job["attempts"])
        return sorted(
            (
                replace(i, attempts=deliveries.get(i.key, 0))
                for i in items
                if state is None or i.state is state
            ),
            key=lambda i: i.key,
        )


class RedisJobStore(JobStore):
    """Jobs in Redis, shared by web and worker processes on any machine.

    Keys (prefix ``sightline:job:<id>``): ``:meta`` hash, ``:items`` hash of item -> JSON
    status, ``:<state>`` sets of item keys, ``:attempts`` hash. Jobs expire after ``ttl_s``.
    """

    def __init__(self, client: Any, ttl_s: int = 7 * 24 * 3600) -> None:
        self.r = client
        self.ttl_s = ttl_s

    @staticmethod
    def _k(job_id: str, part: str) -> str:
        return f"sightline:job:{job_id}:{part}"

    def _touch(self, pipe: Any, job_id: str) -> None:
        for part in ("meta", "items", "attempts", *(s.value for s in State)):
            pipe.expire(self._k(job_id, part), self.ttl_s)

    def create(
        self, kind: str, keys: Iterable[str] = (), meta: Mapping[str, Any] | None = None
    ) -> str:
        job_id = uuid.uuid4().hex
        self.r.hset(
            self._k(job_id, "meta"),
            mapping={"kind": kind, "created_at": _now(), "meta": json.dumps(dict(meta or {}))},
        )
        self.r.expire(self._k(job_id, "meta"), self.ttl_s)
        self.r.lpush(RECENT_KEY, job_id)
        self.r.ltrim(RECENT_KEY, 0, RECENT_KEPT - 1)
        self.add_items(job_id, keys)
        return job_id

    def recent(self, limit: int = 20) -> list[Job]:
        out = []
        for raw in self.r.lrange(RECENT_KEY, 0, RECENT_KEPT - 1):
            try:
                out.append(self.get(raw.decode() if isinstance(raw, bytes) else raw))
            except NotFound:  # expired
                continue
            if len(out) == limit:
                break
        return out

    def _exists(self, job_id: str) -> None:
        if not self.r.exists(self._k(job_id, "meta")):
            raise NotFound(f"no job {job_id!r}")

    def add_items(self, job_id: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        pipe = self.r.pipeline()
        for key in keys:
            pipe.hsetnx(self._k(job_id, "items"), key, json.dumps({"state": State.QUEUED.value}))
            pipe.sadd(self._k(job_id, State.QUEUED.value), key)
        self._touch(pipe, job_id)
        pipe.execute()

    def set_item(
        self,
        job_id: str,
        key: str,
        state: State,
        reason: str | None = None,
        image_id: str | None = None,
        event: dict[str, Any] | None = None,
    ) -> None:
        old = self.r.hget(self._k(job_id, "items"), key)
        prev = json.loads(old) if old else {}
        status = {
            "state": state.value,
            "reason": reason,
            "image_id": image_id or prev.get("image_id"),
            "event": event or prev.get("event"),
        }
        pipe = self.r.pipeline(transaction=True)
        for s in State:
            if s is not state:
                pipe.srem(self._k(job_id, s.value), key)
        pipe.sadd(self._k(job_id, state.value), key)
        pipe.hset(self._k(job_id, "items"), key, json.dumps(status))
        self._touch(pipe, job_id)
        pipe.execute()

    def attempt(self, job_id: str, key: str) -> int:
        return int(self.r.hincrby(self._k(job_id, "attempts"), key, 1))

    def fail_job(self, job_id: str, reason: str) -> None:
        self.r.hset(self._k(job_id, "meta"), "failure", reason)

    def get(self, job_id: str) -> Job:
        pipe = self.r.pipeline()
        pipe.hgetall(self._k(job_id, "meta"))
        pipe.hlen(self._k(job_id, "items"))
        for s in State:
            pipe.scard(self._k(job_id, s.value))
        meta, total, *cards = pipe.execute()
        if not meta:
            raise NotFound(f"no job {job_id!r}")
        meta = {_s(k): _s(v) for k, v in meta.items()}
        counts = {s.value: int(c) for s, c in zip(State, cards, strict=True)}
        failure = meta.get("failure")
        return Job(
            id=job_id,
            kind=meta["kind"],
            state=derive_state(int(total), counts, failure),
            total=int(total),
            counts=counts,
            created_at=meta["created_at"],
            reason=failure,
            meta=json.loads(meta.get("meta", "{}")),
        )

    def items(self, job_id: str, state: State | None = None) -> list[ItemStatus]:
        self._exists(job_id)
        raw = self.r.hgetall(self._k(job_id, "items"))
        deliveries = _deliveries_per_item(
            {_s(k): int(v) for k, v in self.r.hgetall(self._k(job_id, "attempts")).items()}
        )
        out = []
        for k, v in raw.items():
            key = _s(k)
            status = json.loads(v)
            item = ItemStatus(
                key=key,
                state=State(status["state"]),
                reason=status.get("reason"),
                image_id=status.get("image_id"),
                attempts=deliveries.get(key, 0),
                event=status.get("event"),
            )
            if state is None or item.state is state:
                out.append(item)
        return sorted(out, key=lambda i: i.key)


def _deliveries_per_item(counters: Mapping[str, int]) -> dict[str, int]:
    """Sum delivery counters (keyed ``item#round.attempt``) per item."""
    totals: dict[str, int] = {}
    for key, n in counters.items():
        item = key.rsplit("#", 1)[0]
        totals[item] = totals.get(item, 0) + int(n)
    return totals


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
