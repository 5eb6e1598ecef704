"""Job tracking: every upload and bulk job has an id whose state any process can read.

Items move queued -> processing -> done | failed. Counts come from per-state sets, so a
redelivered item (at-least-once delivery) is counted once. A job is ``done`` only when
every item is done, ``partial`` when some failed, ``failed`` when all did (or the job as a
whole did).

Beside states the store keeps what per-item accounting needs: each item's event (to
retry or re-publish it), markers of the chunk an item is being processed in (so a
redelivery can tell that its worker died, and in how large a group), how often an item
was being processed alone when its worker died, and a dead-letter list of messages that
could not even be parsed. Two stores share one contract: Redis for multi-process
deployments, memory for the embedded single-process mode.
"""

from __future__ import annotations

import abc
import datetime as dt
import functools
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeVar

import tenacity

from services.errors import BrokerUnavailable, NotFound

# An item that catalog-wide jobs (re-tag, moderation scan) are created with and finish
# last, so a job cannot look done while its scan is still finding items.
SCAN_ITEM = "catalog scan"

RECENT_KEY = "sightline:jobs:recent"
RECENT_KEPT = 200
DEAD_LETTERS_KEY = "sightline:dead-letters"
DEAD_LETTERS_KEPT = 10_000
# A Redis blip shorter than this is ridden out inside the call that met it.
RETRY_WINDOW_S = 3.0


class State(StrEnum):
    """Lifecycle of a job or of one of its items (``partial``: jobs only)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    PARTIAL = "partial"


ITEM_STATES = (State.QUEUED, State.PROCESSING, State.DONE, State.FAILED)


@dataclass(frozen=True)
class ItemStatus:
    """One item of a job (an image id, a file, a URL)."""

    key: str
    state: State
    reason: str | None = None
    image_id: str | None = None
    attempts: int = 0
    event: dict[str, Any] | None = None
    since: str | None = None  # when it entered its state


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
    published: bool = True

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


@dataclass(frozen=True)
class DeadLetter:
    """A message no worker could parse, kept for an operator to inspect and replay."""

    id: str
    kind: str
    payload: Any
    reason: str
    at: str

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the CLI."""
        return {
            "id": self.id,
            "kind": self.kind,
            "payload": self.payload,
            "reason": self.reason,
            "at": self.at,
        }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def derive_state(total: int, counts: Mapping[str, int], failure: str | None) -> State:
    """``done`` only when every item is done; ``partial`` or ``failed`` once all settled."""
    if failure is not None:
        return State.FAILED
    done, failed = counts.get("done", 0), counts.get("failed", 0)
    if total and done + failed >= total:
        if failed == 0:
            return State.DONE
        return State.FAILED if done == 0 else State.PARTIAL
    if counts.get("processing", 0) or done or failed:
        return State.PROCESSING
    return State.QUEUED


class JobStore(abc.ABC):
    """Where job and item states live."""

    @abc.abstractmethod
    def create(
        self,
        kind: str,
        keys: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
        events: Mapping[str, Mapping[str, Any]] | None = None,
        job_id: str | None = None,
    ) -> str:
        """Register a job with its items (all queued, each with its event if given);
        returns its id (``job_id`` if given, else a new one)."""

    @abc.abstractmethod
    def mark_published(self, job_id: str) -> None:
        """Every message of the job was handed to the broker."""

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
    def begin(self, job_id: str, keys: Sequence[str], marker: str) -> None:
        """Mark items as being processed now (in a chunk described by ``marker``)."""

    @abc.abstractmethod
    def finish(self, job_id: str, keys: Sequence[str]) -> None:
        """Clear the processing markers of items whose outcome is recorded."""

    @abc.abstractmethod
    def markers(self, job_id: str, keys: Sequence[str]) -> dict[str, str]:
        """The processing markers left on these items (by a worker that died)."""

    @abc.abstractmethod
    def count_death(self, job_id: str, key: str) -> int:
        """One more time this item was alone in a worker that died; returns the count."""

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
    def statuses(self, job_id: str, keys: Sequence[str]) -> dict[str, ItemStatus]:
        """The statuses of some items of a job (missing keys are left out)."""

    @abc.abstractmethod
    def recent(self, limit: int = 20) -> list[Job]:
        """The newest jobs still kept, newest first (for the status page)."""

    def unsettled(self, job_id: str) -> list[ItemStatus]:
        """Items still queued or being processed (what a lost message would leave)."""
        return [i for i in self.items(job_id) if i.state in (State.QUEUED, State.PROCESSING)]

    @abc.abstractmethod
    def add_dead_letter(self, kind: str, payload: Any, reason: str) -> str:
        """Keep a message that could not be parsed; returns its id."""

    @abc.abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, newest first."""

    @abc.abstractmethod
    def take_dead_letter(self, letter_id: str) -> DeadLetter:
        """Remove a dead letter and return it (to replay or drop it); NotFound if gone."""


class MemoryJobStore(JobStore):
    """Jobs in this process's memory: the embedded mode, where everything is one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._dead: dict[str, DeadLetter] = {}

    def _job(self, job_id: str) -> dict[str, Any]:
        try:
            return self._jobs[job_id]
        except KeyError as e:
            raise NotFound(f"no job {job_id!r}") from e

    def create(
        self,
        kind: str,
        keys: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
        events: Mapping[str, Mapping[str, Any]] | None = None,
        job_id: str | None = None,
    ) -> str:
        job_id = job_id or uuid.uuid4().hex
        with self._lock:
            self._jobs[job_id] = {
                "kind": kind,
                "created_at": _now(),
                "meta": dict(meta or {}),
                "failure": None,
                "published": False,
                "items": {},
                "attempts": {},
                "markers": {},
                "deaths": {},
            }
        self.add_items(job_id, keys)
        with self._lock:
            items = self._job(job_id)["items"]
            for key, event in (events or {}).items():
                items[key] = replace(items[key], event=dict(event))
        return job_id

    def mark_published(self, job_id: str) -> None:
        with self._lock:
            self._job(job_id)["published"] = True

    def recent(self, limit: int = 20) -> list[Job]:
        with self._lock:
            ids = list(self._jobs)[-limit:]
        return [self.get(i) for i in reversed(ids)]

    def add_items(self, job_id: str, keys: Iterable[str]) -> None:
        now = _now()
        with self._lock:
            items = self._job(job_id)["items"]
            for key in keys:
                items.setdefault(key, ItemStatus(key, State.QUEUED, since=now))

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
                key,
                state,
                reason,
                image_id or old.image_id,
                old.attempts,
                event or old.event,
                _now() if state is not old.state or old.since is None else old.since,
            )

    def attempt(self, job_id: str, key: str) -> int:
        with self._lock:
            attempts = self._job(job_id)["attempts"]
            attempts[key] = attempts.get(key, 0) + 1
            return int(attempts[key])

    def begin(self, job_id: str, keys: Sequence[str], marker: str) -> None:
        with self._lock:
            self._job(job_id)["markers"].update(dict.fromkeys(keys, marker))

    def finish(self, job_id: str, keys: Sequence[str]) -> None:
        with self._lock:
            markers = self._job(job_id)["markers"]
            for key in keys:
                markers.pop(key, None)

    def markers(self, job_id: str, keys: Sequence[str]) -> dict[str, str]:
        with self._lock:
            markers = self._job(job_id)["markers"]
            return {k: markers[k] for k in keys if k in markers}

    def count_death(self, job_id: str, key: str) -> int:
        with self._lock:
            deaths = self._job(job_id)["deaths"]
            deaths[key] = deaths.get(key, 0) + 1
            return int(deaths[key])

    def fail_job(self, job_id: str, reason: str) -> None:
        with self._lock:
            self._job(job_id)["failure"] = reason

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._job(job_id)
            items = list(job["items"].values())
        counts = {s.value: sum(i.state is s for i in items) for s in ITEM_STATES}
        return Job(
            id=job_id,
            kind=job["kind"],
            state=derive_state(len(items), counts, job["failure"]),
            total=len(items),
            counts=counts,
            created_at=job["created_at"],
            reason=job["failure"],
            meta=job["meta"],
            published=job["published"],
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

    def statuses(self, job_id: str, keys: Sequence[str]) -> dict[str, ItemStatus]:
        with self._lock:
            items = self._job(job_id)["items"]
            return {k: items[k] for k in keys if k in items}

    def add_dead_letter(self, kind: str, payload: Any, reason: str) -> str:
        letter = DeadLetter(uuid.uuid4().hex, kind, payload, reason, _now())
        with self._lock:
            self._dead[letter.id] = letter
        return letter.id

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            return list(reversed(self._dead.values()))[:limit]

    def take_dead_letter(self, letter_id: str) -> DeadLetter:
        with self._lock:
            try:
                return self._dead.pop(letter_id)
            except KeyError as e:
                raise NotFound(f"no dead letter {letter_id!r}") from e


T = TypeVar("T")


def _redis_call(method: Callable[..., T]) -> Callable[..., T]:
    """Ride out a short Redis outage (reconnecting with backoff for up to
    ``RETRY_WINDOW_S``), then report it as BrokerUnavailable: transient, not a bug."""
    import redis

    retrying = tenacity.retry(
        retry=tenacity.retry_if_exception_type((redis.ConnectionError, redis.TimeoutError)),
        stop=tenacity.stop_after_delay(RETRY_WINDOW_S),
        wait=tenacity.wait_exponential(multiplier=0.05, max=0.5),
        reraise=True,
    )(method)

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> T:
        try:
            return retrying(*args, **kwargs)
        except redis.RedisError as e:
            raise BrokerUnavailable(f"the job store (Redis) is unavailable: {e}") from e

    return call


class RedisJobStore(JobStore):
    """Jobs in Redis, shared by web and worker processes on any machine.

    Keys (prefix ``sightline:job:<id>``): ``:meta`` hash, ``:items`` hash of item -> JSON
    status, ``:<state>`` sets of item keys, ``:attempts``, ``:markers`` and ``:deaths``
    hashes. Jobs expire after ``ttl_s``.
    """

    def __init__(self, client: Any, ttl_s: int = 7 * 24 * 3600) -> None:
        self.r = client
        self.ttl_s = ttl_s

    @staticmethod
    def _k(job_id: str, part: str) -> str:
        return f"sightline:job:{job_id}:{part}"

    def _touch(self, pipe: Any, job_id: str) -> None:
        parts = ("meta", "items", "attempts", "markers", "deaths", *(s.value for s in ITEM_STATES))
        for part in parts:
            pipe.expire(self._k(job_id, part), self.ttl_s)

    @_redis_call
    def create(
        self,
        kind: str,
        keys: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
        events: Mapping[str, Mapping[str, Any]] | None = None,
        job_id: str | None = None,
    ) -> str:
        job_id = job_id or uuid.uuid4().hex
        keys = list(keys)
        now = _now()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            self._k(job_id, "meta"),
            mapping={"kind": kind, "created_at": now, "meta": json.dumps(dict(meta or {}))},
        )
        for key in keys:
            status = {"state": State.QUEUED.value, "since": now}
            if events and key in events:
                status["event"] = dict(events[key])  # type: ignore[assignment]
            pipe.hset(self._k(job_id, "items"), key, json.dumps(status))
            pipe.sadd(self._k(job_id, State.QUEUED.value), key)
        pipe.lpush(RECENT_KEY, job_id)
        pipe.ltrim(RECENT_KEY, 0, RECENT_KEPT - 1)
        self._touch(pipe, job_id)
        pipe.execute()
        return job_id

    @_redis_call
    def mark_published(self, job_id: str) -> None:
        self.r.hset(self._k(job_id, "meta"), "published", "1")

    @_redis_call
    def recent(self, limit: int = 20) -> list[Job]:
        out = []
        for raw in self.r.lrange(RECENT_KEY, 0, RECENT_KEPT - 1):
            try:
                out.append(self.get(_s(raw)))
            except NotFound:  # expired
                continue
            if len(out) == limit:
                break
        return out

    def _exists(self, job_id: str) -> None:
        if not self.r.exists(self._k(job_id, "meta")):
            raise NotFound(f"no job {job_id!r}")

    @_redis_call
    def add_items(self, job_id: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        status = json.dumps({"state": State.QUEUED.value, "since": _now()})
        pipe = self.r.pipeline()
        for key in keys:
            pipe.hsetnx(self._k(job_id, "items"), key, status)
            pipe.sadd(self._k(job_id, State.QUEUED.value), key)
        self._touch(pipe, job_id)
        pipe.execute()

    @_redis_call
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
        same = prev.get("state") == state.value
        status = {
            "state": state.value,
            "reason": reason,
            "image_id": image_id or prev.get("image_id"),
            "event": event or prev.get("event"),
            "since": prev.get("since") if same and prev.get("since") else _now(),
        }
        pipe = self.r.pipeline(transaction=True)
        for s in ITEM_STATES:
            if s is not state:
                pipe.srem(self._k(job_id, s.value), key)
        pipe.sadd(self._k(job_id, state.value), key)
        pipe.hset(self._k(job_id, "items"), key, json.dumps(status))
        self._touch(pipe, job_id)
        pipe.execute()

    @_redis_call
    def attempt(self, job_id: str, key: str) -> int:
        return int(self.r.hincrby(self._k(job_id, "attempts"), key, 1))

    @_redis_call
    def begin(self, job_id: str, keys: Sequence[str], marker: str) -> None:
        if keys:
            self.r.hset(self._k(job_id, "markers"), mapping=dict.fromkeys(keys, marker))

    @_redis_call
    def finish(self, job_id: str, keys: Sequence[str]) -> None:
        if keys:
            self.r.hdel(self._k(job_id, "markers"), *keys)

    @_redis_call
    def markers(self, job_id: str, keys: Sequence[str]) -> dict[str, str]:
        if not keys:
            return {}
        values = self.r.hmget(self._k(job_id, "markers"), list(keys))
        return {k: _s(v) for k, v in zip(keys, values, strict=True) if v is not None}

    @_redis_call
    def count_death(self, job_id: str, key: str) -> int:
        return int(self.r.hincrby(self._k(job_id, "deaths"), key, 1))

    @_redis_call
    def fail_job(self, job_id: str, reason: str) -> None:
        self.r.hset(self._k(job_id, "meta"), "failure", reason)

    @_redis_call
    def get(self, job_id: str) -> Job:
        pipe = self.r.pipeline()
        pipe.hgetall(self._k(job_id, "meta"))
        pipe.hlen(self._k(job_id, "items"))
        for s in ITEM_STATES:
            pipe.scard(self._k(job_id, s.value))
        meta, total, *cards = pipe.execute()
        if not meta:
            raise NotFound(f"no job {job_id!r}")
        meta = {_s(k): _s(v) for k, v in meta.items()}
        counts = {s.value: int(c) for s, c in zip(ITEM_STATES, cards, strict=True)}
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
            published=meta.get("published") == "1",
        )

    @_redis_call
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
                since=status.get("since"),
            )
            if state is None or item.state is state:
                out.append(item)
        return sorted(out, key=lambda i: i.key)

    @_redis_call
    def statuses(self, job_id: str, keys: Sequence[str]) -> dict[str, ItemStatus]:
        if not keys:
            return {}
        values = self.r.hmget(self._k(job_id, "items"), list(keys))
        out = {}
        for key, raw in zip(keys, values, strict=True):
            if raw is not None:
                status = json.loads(raw)
                out[key] = ItemStatus(
                    key,
                    State(status["state"]),
                    status.get("reason"),
                    status.get("image_id"),
                    event=status.get("event"),
                    since=status.get("since"),
                )
        return out

    @_redis_call
    def unsettled(self, job_id: str) -> list[ItemStatus]:
        keys = sorted(
            _s(k)
            for k in self.r.sunion(
                self._k(job_id, State.QUEUED.value), self._k(job_id, State.PROCESSING.value)
            )
        )
        return list(self.statuses(job_id, keys).values())

    @_redis_call
    def add_dead_letter(self, kind: str, payload: Any, reason: str) -> str:
        letter = DeadLetter(uuid.uuid4().hex, kind, payload, reason, _now())
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(DEAD_LETTERS_KEY, letter.id, json.dumps(letter.as_dict(), default=repr))
        pipe.lpush(DEAD_LETTERS_KEY + ":order", letter.id)
        pipe.ltrim(DEAD_LETTERS_KEY + ":order", 0, DEAD_LETTERS_KEPT - 1)
        pipe.execute()
        return letter.id

    @_redis_call
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        ids = [_s(i) for i in self.r.lrange(DEAD_LETTERS_KEY + ":order", 0, limit - 1)]
        raws = self.r.hmget(DEAD_LETTERS_KEY, ids) if ids else []
        return [DeadLetter(**json.loads(raw)) for raw in raws if raw]

    @_redis_call
    def take_dead_letter(self, letter_id: str) -> DeadLetter:
        raw = self.r.hget(DEAD_LETTERS_KEY, letter_id)
        if raw is None:
            raise NotFound(f"no dead letter {letter_id!r}")
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(DEAD_LETTERS_KEY, letter_id)
        pipe.lrem(DEAD_LETTERS_KEY + ":order", 0, letter_id)
        pipe.execute()
        return DeadLetter(**json.loads(raw))


def _deliveries_per_item(counters: Mapping[str, int]) -> dict[str, int]:
    """Sum delivery counters (keyed ``item#round.attempt``) per item."""
    totals: dict[str, int] = {}
    for key, n in counters.items():
        item = key.rsplit("#", 1)[0]
        totals[item] = totals.get(item, 0) + int(n)
    return totals


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
