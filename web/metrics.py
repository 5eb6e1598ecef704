"""Prometheus metrics on a per-app registry (no global state, so apps and tests don't clash).

Under gunicorn every worker is a process with its own counters. With
``PROMETHEUS_MULTIPROC_DIR`` set (``infra/gunicorn.conf.py`` sets it), prometheus_client
keeps each process's counters and histograms in files there and a scrape, whichever
worker answers it, sums them all. Gauges that read shared state (queue depth, index size)
are read at scrape time, so any worker reports the same value.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from services.encoder import Modality


@dataclass
class LiveGauge:
    """A gauge whose values are read when scraped, one reader per label value."""

    name: str
    documentation: str
    label: str
    readers: dict[str, Callable[[], float]] = field(default_factory=dict)


class _LiveCollector(Collector):
    def __init__(self, gauges: Iterable[LiveGauge]) -> None:
        self.gauges = list(gauges)

    def collect(self) -> Iterable[Metric]:
        for gauge in self.gauges:
            family = GaugeMetricFamily(gauge.name, gauge.documentation, labels=[gauge.label])
            for value, read in gauge.readers.items():
                family.add_metric([value], read())
            yield family


class Metrics:
    """Request counts and latencies per route, queue depth, index size, embedding time,
    text-query cache hits and misses."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sightline_http_requests_total",
            "HTTP requests.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sightline_http_request_seconds",
            "HTTP request latency.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.embedding = Histogram(
            "sightline_embedding_seconds",
            "Time per encode call.",
            ["modality"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.embedded_items = Counter(
            "sightline_embedded_items_total",
            "Texts and images embedded.",
            ["modality"],
            registry=self.registry,
        )
        self.query_cache = Counter(
            "sightline_query_cache_total",
            "Text-query vector lookups, by whether the cache had the vector.",
            ["result"],
            registry=self.registry,
        )
        self.queue_depth = LiveGauge("sightline_queue_depth", "Messages waiting.", "queue")
        self.index_size = LiveGauge(
            "sightline_index_points", "Points per collection.", "collection"
        )
        self._live = _LiveCollector([self.queue_depth, self.index_size])
        self.registry.register(self._live)

    def observe_embedding(self, modality: Modality, items: int, seconds: float) -> None:
        """Encoder observer."""
        self.embedding.labels(modality.value).observe(seconds)
        self.embedded_items.labels(modality.value).inc(items)

    def observe_query(self, hit: bool) -> None:
        """Query-cache observer."""
        self.query_cache.labels("hit" if hit else "miss").inc()

    def gauge(self, gauge: LiveGauge, label: str, read: Callable[[], float]) -> None:
        """A gauge value read at scrape time."""
        gauge.readers[label] = read

    def install(self, app: Flask) -> None:
        """Time every request; expose ``/metrics``."""

        @app.before_request
        def _start() -> None:
            g.started = time.perf_counter()

        @app.after_request
        def _record(response: Response) -> Response:
            route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
            elapsed = time.perf_counter() - g.get("started", time.perf_counter())
            self.requests.labels(request.method, route, str(response.status_code)).inc()
            self.latency.labels(request.method, route).observe(elapsed)
            return response

    def render(self) -> Response:
        """The exposition format: this process's metrics, or every worker's summed."""
        registry = self.registry
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
            registry.register(self._live)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
