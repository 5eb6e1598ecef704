"""Where the taxonomy lives, and its label vectors, cached per process.

The document is kept where every process of a deployment can read it (Redis when there
is a broker, else a file beside the data); its label vectors live in the ``labels``
collection with the model identity. Each process caches the vectors of the version it
last saw and re-reads them when the stored version changes, so a web process and a
worker process pick up a new taxonomy on their next request without a restart.
"""

from __future__ import annotations

import abc
import json
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.encoder import Encoder
from services.errors import BrokerUnavailable
from services.index.base import PayloadFilter, PointData, VectorIndex
from services.storage.files import atomic_write
from services.tagging.taxonomy import Taxonomy, taxonomy_from_data

_NAMESPACE = uuid.UUID("0b7f8f2e-7d51-4d0f-9d8e-5a4c3b2a1f00")
REDIS_KEY = "sightline:taxonomy"


class TaxonomyStore(abc.ABC):
    """The current taxonomy document, shared by every process of a deployment."""

    @abc.abstractmethod
    def _read(self) -> str | None: ...

    @abc.abstractmethod
    def _write(self, text: str) -> None: ...

    def get(self) -> Taxonomy | None:
        """The stored taxonomy, or None before one was loaded."""
        raw = self._read()
        if not raw:
            return None
        return taxonomy_from_data(json.loads(raw))

    def put(self, taxonomy: Taxonomy) -> None:
        """Replace the document (atomically: readers see the old one or the new one)."""
        self._write(json.dumps(taxonomy.model_dump(mode="json"), sort_keys=True))


class FileTaxonomyStore(TaxonomyStore):
    """A JSON file: the embedded single-process deployment."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> str | None:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None

    def _write(self, text: str) -> None:
        atomic_write(self.path, text.encode())


class RedisTaxonomyStore(TaxonomyStore):
    """A Redis key: every web and worker process reads the same document."""

    def __init__(self, client: Any, key: str = REDIS_KEY) -> None:
        self.r = client
        self.key = key

    def _read(self) -> str | None:
        import redis

        try:
            raw = self.r.get(self.key)
        except redis.RedisError as e:
            raise BrokerUnavailable(f"cannot read the taxonomy from Redis: {e}") from e
        return raw.decode() if isinstance(raw, bytes) else raw

    def _write(self, text: str) -> None:
        import redis

        try:
            self.r.set(self.key, text)
        except redis.RedisError as e:
            raise BrokerUnavailable(f"cannot store the taxonomy in Redis: {e}") from e


@dataclass(frozen=True)
class DimensionVectors:
    """One dimension's labels and their unit vectors (rows in label order)."""

    name: str
    multi_label: bool
    labels: list[str]
    vectors: np.ndarray
    thresholds: list[float | None]


@dataclass(frozen=True)
class LabelSet:
    """A taxonomy with its label vectors: what tagging needs."""

    taxonomy: Taxonomy
    version: str
    dimensions: list[DimensionVectors]


def label_point_id(version: str, dimension: str, label: str) -> str:
    """Stable id of a label vector for one taxonomy version."""
    return str(uuid.uuid5(_NAMESPACE, f"{version}/{dimension}/{label}"))


def mean_direction(vectors: np.ndarray) -> np.ndarray:
    """The normalised mean of unit vectors: a label's vector from its prompts' vectors."""
    mean = vectors.astype(np.float64).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm == 0.0:
        raise ValueError("prompt embeddings cancel out; the label has no direction")
    return (mean / norm).astype(np.float32)


def embed_taxonomy(encoder: Encoder, taxonomy: Taxonomy) -> LabelSet:
    """Every label vector of a taxonomy (all prompts embedded in one batch)."""
    prompts: list[str] = []
    spans: list[tuple[int, int]] = []
    for dim in taxonomy.dimensions:
        for label in dim.labels:
            texts = taxonomy.prompts(dim, label, encoder.family.value)
            spans.append((len(prompts), len(prompts) + len(texts)))
            prompts.extend(texts)
    vectors = encoder.encode_texts(prompts)
    spans_iter = iter(spans)
    dims = []
    for dim in taxonomy.dimensions:
        rows = []
        for _ in dim.labels:
            start, end = next(spans_iter)
            rows.append(mean_direction(vectors[start:end]))
        dims.append(
            DimensionVectors(
                name=dim.name,
                multi_label=dim.multi_label,
                labels=[label.name for label in dim.labels],
                vectors=np.stack(rows),
                thresholds=[label.threshold for label in dim.labels],
            )
        )
    return LabelSet(taxonomy, taxonomy.version, dims)


class LabelBank:
    """Label vectors of the current taxonomy, for one process."""

    def __init__(
        self, encoder: Encoder, index: VectorIndex, collection: str, store: TaxonomyStore
    ) -> None:
        self.encoder = encoder
        self.index = index
        self.collection = collection
        self.store = store
        self._lock = threading.Lock()
        self._cached: LabelSet | None = None

    def embed(self, taxonomy: Taxonomy) -> LabelSet:
        """Compute every label vector of a taxonomy."""
        return embed_taxonomy(self.encoder, taxonomy)

    def _write(self, labels: LabelSet) -> None:
        points = []
        for dim in labels.dimensions:
            for name, vector in zip(dim.labels, dim.vectors, strict=True):
                label = labels.taxonomy.dimension(dim.name).label(name)
                points.append(
                    PointData(
                        id=label_point_id(labels.version, dim.name, name),
                        vector=vector,
                        payload={
                            "kind": "label",
                            "version": labels.version,
                            "dimension": dim.name,
                            "label": name,
                            "prompts": labels.taxonomy.prompts(
                                labels.taxonomy.dimension(dim.name),
                                label,
                                self.encoder.family.value,
                            ),
                        },
                    )
                )
        if points:
            self.index.upsert(self.collection, points)

    def _read(self, taxonomy: Taxonomy) -> LabelSet | None:
        """The stored vectors of this version, or None when any is missing."""
        version = taxonomy.version
        wanted = {
            label_point_id(version, d.name, label.name): (d.name, label.name)
            for d in taxonomy.dimensions
            for label in d.labels
        }
        records = self.index.retrieve(self.collection, list(wanted), with_vectors=True)
        if len(records) != len(wanted):
            return None
        by_key = {wanted[r.id]: r.vector for r in records}
        dims = [
            DimensionVectors(
                name=d.name,
                multi_label=d.multi_label,
                labels=[label.name for label in d.labels],
                vectors=np.stack([np.asarray(by_key[(d.name, lab.name)]) for lab in d.labels]),
                thresholds=[lab.threshold for lab in d.labels],
            )
            for d in taxonomy.dimensions
        ]
        return LabelSet(taxonomy, version, dims)

    def replace(self, taxonomy: Taxonomy) -> LabelSet:
        """Make ``taxonomy`` current: vectors first, then the document, then old vectors go.

        Other processes switch when they next read the document, by which time the vectors
        it names are already stored.
        """
        labels = self.embed(taxonomy)
        self._write(labels)
        self.store.put(taxonomy)
        stale = PayloadFilter(not_equals={"version": labels.version})
        while True:
            records, _ = self.index.scroll(self.collection, stale, limit=256)
            if not records:
                break
            self.index.delete(self.collection, [r.id for r in records])
        with self._lock:
            self._cached = labels
        return labels

    def current(self) -> LabelSet | None:
        """The current taxonomy's label vectors (None when no taxonomy was loaded).

        One small read of the shared document per call; vectors are re-read only when its
        version changed, and recomputed only if the collection lacks them (e.g. after a
        re-embed into a new model's collections).
        """
        taxonomy = self.store.get()
        if taxonomy is None:
            return None
        version = taxonomy.version
        cached = self._cached
        if cached is not None and cached.version == version:
            return cached
        with self._lock:
            if self._cached is not None and self._cached.version == version:
                return self._cached
            labels = self._read(taxonomy)
            if labels is None:
                labels = self.embed(taxonomy)
                self._write(labels)
            self._cached = labels
            return labels

    def dimension_names(self) -> list[str]:
        """Names of the current taxonomy's dimensions (for tag filters)."""
        taxonomy = self.store.get()
        return [d.name for d in taxonomy.dimensions] if taxonomy else []
