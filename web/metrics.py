"""Prometheus metrics on a per-app registry (no global state, so apps and tests don't clash)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.encoder import Modality
from services.search.query_cache import CacheInfo


class QueryCacheCollector(Collector):
    """The text-query cache's counters, read at scrape time (the cache keeps its own)."""

    def __init__(self, read: Callable[[], CacheInfo]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        info = self.read()
        yield CounterMetricFamily(
            "sightline_query_cache_hits", "Text queries answered from the cache.", info.hits
        )
        yield CounterMetricFamily(
            "sightline_query_cache_misses", "Text queries that were encoded.", info.misses
        )
        yield GaugeMetricFamily("sightline_query_cache_entries", "Query vectors held.", info.size)


class Metrics:
    """Request counts and latencies per route, queue depth, index size, embedding time."""

    def __init__(self) -> None:
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
        self.queue_depth = Gauge(
            "sightline_queue_depth",
            "Messages waiting in a queue.",
            ["queue"],
            registry=self.registry,
        )
        self.index_size = Gauge(
            "sightline_index_points",
            "Points per collection.",
            ["collection"],
            registry=self.registry,
        )

    def observe_embedding(self, modality: Modality, items: int, seconds: float) -> None:
        """Encoder observer."""
        self.embedding.labels(modality.value).observe(seconds)
        self.embedded_items.labels(modality.value).inc(items)

    def query_cache(self, read: Callable[[], CacheInfo]) -> None:
        """Export the text-query cache's hits, misses and size."""
        self.registry.register(QueryCacheCollector(read))

    def gauge(self, gauge: Gauge, label: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time."""
        gauge.labels(label).set_function(read)

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
        """The exposition format."""
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)
