"""The last hour of the catalog's vital signs, sampled for the status page's charts.

Each sample reads shared state (the index's size, the broker's queue depths, the job
store's failed items), so every web process, sampling on its own, draws the same charts
without a time-series database; the history starts when the process does. A sample
costs three small reads, once per interval (30 s by default).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

WINDOW_S = 3600.0


@dataclass(frozen=True)
class Sample:
    """What the catalog looked like at ``at`` (epoch seconds)."""

    at: float
    indexed: int
    queued: int | None  # None: no broker to ask (single process) or it did not answer
    failed: int  # failed items of recent jobs, cumulative


@dataclass(frozen=True)
class Series:
    """One chart's points, ``(seconds before now, value)``, oldest first."""

    name: str
    unit: str
    points: list[tuple[float, float]]


class StatusHistory:
    """A ring of samples covering ``window_s``; ``series`` turns them into rates."""

    def __init__(
        self,
        read: Callable[[], Sample],
        interval_s: float = 30.0,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.read = read
        self.interval_s = interval_s
        self.clock = clock
        self._samples: deque[Sample] = deque(maxlen=max(2, int(window_s / interval_s) + 1))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> Sample | None:
        """Take one sample now (None when the state cannot be read: nothing is kept)."""
        try:
            taken = self.read()
        except Exception as e:  # a down broker or index must not stop the sampler
            log.warning("status sample skipped: %s", e)
            return None
        with self._lock:
            self._samples.append(taken)
        return taken

    def samples(self) -> list[Sample]:
        """Every kept sample, oldest first."""
        with self._lock:
            return list(self._samples)

    def series(self) -> list[Series]:
        """Ingest rate (images/min), queue depth and failures (items per interval)."""
        samples = self.samples()
        now = self.clock()
        rate: list[tuple[float, float]] = []
        failures: list[tuple[float, float]] = []
        for a, b in itertools.pairwise(samples):
            dt = max(b.at - a.at, 1e-6)
            rate.append((now - b.at, max(0.0, (b.indexed - a.indexed) * 60.0 / dt)))
            failures.append((now - b.at, float(max(0, b.failed - a.failed))))
        queued = [(now - s.at, float(s.queued)) for s in samples if s.queued is not None]
        return [
            Series("Ingest rate", "images/min", rate),
            Series("Queue depth", "messages", queued),
            Series("Failures", "items", failures),
        ]

    def start(self) -> None:
        """Sample every ``interval_s`` on a daemon thread until ``stop``."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="status-history", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        """End the sampling thread."""
        self._stop.set()
        if self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._thread.join(timeout=5)
