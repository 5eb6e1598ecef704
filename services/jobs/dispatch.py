"""How work reaches a worker: the ``Dispatcher`` protocol, and its in-process implementation.

A dispatcher only publishes; it never runs work. Whatever consumes the messages (a Celery
worker, or ``LocalWorker`` here) runs them through the job-kind table, so publishers and
workers never hold each other. Payloads are plain JSON-like dicts on every path, so the
in-process mode exercises the same (de)serialisation as the distributed one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from services.jobs.kinds import JOB_KINDS, Kind

log = logging.getLogger(__name__)

Payload = Mapping[str, Any]
# In-process redelivery of messages whose outcome could not be recorded.
REDELIVER_S = 1.0


class Dispatcher(Protocol):
    """Publishes work and answers what operators ask of the queue."""

    @property
    def local(self) -> bool:
        """True when work runs on a thread of this process (no broker)."""

    def publish(self, kind: Kind, payloads: Sequence[Payload], delay_s: float = 0.0) -> None:
        """Publish one message per payload (optionally after a delay, for retries).

        Raises:
            BrokerUnavailable: the broker cannot be reached.
        """

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting, per queue."""

    def check_broker(self) -> None:
        """Raise BrokerUnavailable when the broker cannot be reached."""

    def workers(self, timeout_s: float = 1.0) -> list[str]:
        """Names of the workers that answer a ping."""

    def in_flight(self, queue: str) -> set[tuple[str, str]] | None:
        """(job id, item) of every message of ``queue`` delivered to a worker and not yet
        acknowledged; None where the dispatcher cannot lose a message (in-process)."""

    def close(self) -> None:
        """Release connections (and finish queued local work)."""


Executor = Callable[[Kind, Sequence[Payload]], set[int]]


class LocalQueue:
    """The embedded mode's broker: a thread-safe queue in this process, consumed by a
    ``LocalWorker``. It counts messages until they are finished, so callers can wait."""

    local = True

    def __init__(self) -> None:
        self.messages: queue.Queue[tuple[Kind, Payload] | None] = queue.Queue()
        self._timers: set[threading.Timer] = set()
        self._pending = 0
        self._idle = threading.Condition()

    def publish(self, kind: Kind, payloads: Sequence[Payload], delay_s: float = 0.0) -> None:
        with self._idle:
            self._pending += len(payloads)
        for payload in payloads:
            message = (kind, dict(payload))
            if delay_s > 0:
                timer = threading.Timer(delay_s, self.messages.put, args=(message,))
                timer.daemon = True
                self._timers.add(timer)
                timer.start()
            else:
                self.messages.put(message)

    def finished(self, n: int) -> None:
        """The worker finished ``n`` messages."""
        with self._idle:
            self._pending -= n
            self._idle.notify_all()

    def join(self, timeout_s: float = 30.0) -> bool:
        """Wait until every message published so far is finished."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s)

    def queue_depths(self) -> dict[str, int]:
        return {"in-process": self.messages.qsize()}

    def check_broker(self) -> None:
        return None

    def workers(self, timeout_s: float = 1.0) -> list[str]:
        return ["in-process worker thread"]

    def in_flight(self, queue: str) -> set[tuple[str, str]] | None:
        return None  # work runs in this process: nothing is in a broker to lose

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self.messages.put(None)


class LocalWorker:
    """A background thread running what a ``LocalQueue`` holds, as a Celery worker would:
    ingest messages are batched (up to ``batch_size``, waiting at most ``max_wait_s`` after
    the first, and not at all once ``ready_size`` are in hand and none is waiting: a full
    model batch is worth starting rather than holding for stragglers), every other kind
    runs one message at a time."""

    def __init__(
        self,
        messages: LocalQueue,
        execute: Executor,
        batch_size: int,
        max_wait_s: float,
        ready_size: int | None = None,
    ) -> None:
        self.queue = messages
        self.execute = execute
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.ready_size = ready_size or batch_size
        self._thread = threading.Thread(target=self._run, name="sightline-queue", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deferred: list[tuple[Kind, Payload]] = []
        source = self.queue.messages
        while True:
            message = deferred.pop(0) if deferred else source.get()
            if message is None:
                return
            kind, payload = message
            batch = [payload]
            if JOB_KINDS[kind].batched:
                deadline = time.monotonic() + self.max_wait_s
                while len(batch) < self.batch_size:
                    remaining = deadline - time.monotonic()
                    if len(batch) >= self.ready_size:
                        remaining = 0.0
                    try:
                        nxt = (
                            source.get(timeout=remaining) if remaining > 0 else source.get_nowait()
                        )
                    except queue.Empty:
                        break
                    if nxt is not None and nxt[0] is kind:
                        batch.append(nxt[1])
                    else:
                        deferred.append(nxt)  # type: ignore[arg-type]
                        if nxt is None:
                            break
            self._guard(kind, batch)
            self.queue.finished(len(batch))

    def _guard(self, kind: Kind, batch: Sequence[Payload]) -> None:
        try:
            again = self.execute(kind, batch)
        except Exception:  # the queue thread must survive anything one job does
            log.exception("in-process %s work failed", kind.value)
            return
        if again:  # outcomes that could not be recorded: deliver them again, later
            self.queue.publish(kind, [batch[i] for i in sorted(again)], delay_s=REDELIVER_S)

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop after the messages already queued."""
        self.queue.close()
        self._thread.join(timeout=timeout_s)
