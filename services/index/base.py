"""The vector index contract that every deployment (embedded, server) fulfils.

Services speak only these types; each adapter translates them to its client's models, so
the same contract tests run against both and must agree with a brute-force computation.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.encoder import ModelIdentity
from services.errors import IndexUnavailable, ModelMismatch

# Filter values are strings or integers: qdrant-edge-py 0.9.0 cannot match booleans
# (MatchValue(True) matches nothing), so the contract leaves them out for both adapters.
PayloadValue = str | int | bool

# Denser HNSW graphs than Qdrant's defaults (16/100): text queries sit off the image
# clusters (CLIP's modality gap) and need them for recall@10 >= 0.95 at 100k points
# (bench/query.py measures it).
HNSW_M = 32
HNSW_EF_CONSTRUCT = 256


@dataclass(frozen=True)
class VectorStorage:
    """How a new collection keeps its vectors (existing collections keep theirs).

    ``int8``: Qdrant scalar quantization, one byte per dimension held in RAM (a quarter of
    float32) for the HNSW walk; the best ``oversampling`` * k candidates are then rescored
    with the original vectors, so rankings stay those of float32. ``on_disk``: the
    originals live in memory-mapped files and only the rescored few are read, so vector RAM
    is the int8 copy alone.
    """

    quantization: str = "none"  # none | int8
    on_disk: bool = False
    oversampling: float = 2.0
    # Qdrant cluster (server adapter): copies of each shard, and how many must acknowledge
    # a write before it counts.
    replication_factor: int = 1
    write_consistency_factor: int = 1

    @property
    def quantized(self) -> bool:
        """Scalar int8 quantization is on."""
        return self.quantization == "int8"


Vector = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class Range:
    """Numeric range condition; unset bounds are open."""

    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None


@dataclass(frozen=True)
class PayloadFilter:
    """Conditions on payload fields, all of which must hold."""

    equals: Mapping[str, PayloadValue] = field(default_factory=dict)
    any_of: Mapping[str, Sequence[PayloadValue]] = field(default_factory=dict)
    ranges: Mapping[str, Range] = field(default_factory=dict)
    not_equals: Mapping[str, PayloadValue] = field(default_factory=dict)
    exclude_ids: frozenset[str] = frozenset()

    def is_empty(self) -> bool:
        """True when the filter matches everything."""
        return not (
            self.equals or self.any_of or self.ranges or self.not_equals or self.exclude_ids
        )

    def excluding(self, ids: Sequence[str]) -> PayloadFilter:
        """The same filter that also drops these point ids."""
        return PayloadFilter(
            equals=self.equals,
            any_of=self.any_of,
            ranges=self.ranges,
            not_equals=self.not_equals,
            exclude_ids=self.exclude_ids | frozenset(ids),
        )


@dataclass(frozen=True)
class PointData:
    """A point to write."""

    id: str
    vector: np.ndarray
    payload: dict[str, Any]


@dataclass(frozen=True)
class Record:
    """A stored point as read back."""

    id: str
    payload: dict[str, Any]
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class Hit:
    """One search result: cosine similarity for nearest-neighbour queries."""

    id: str
    score: float
    payload: dict[str, Any]


def identity_from_dict(data: Mapping[str, Any] | None) -> ModelIdentity | None:
    """Parse the identity a collection recorded, or None when it recorded none."""
    if not data or "model_id" not in data or "size" not in data:
        return None
    return ModelIdentity(
        model_id=str(data["model_id"]),
        size=int(data["size"]),
        distance=str(data.get("distance", "cosine")),
    )


def check_identity(name: str, stored: ModelIdentity | None, wanted: ModelIdentity) -> None:
    """Refuse to use a collection with another model than the one it was built with."""
    if stored is None:
        raise ModelMismatch(
            f"collection {name!r} records no model identity; it was not created by Sightline"
        )
    if stored != wanted:
        hint = "load the original model"
        if stored.model_id.removesuffix("#int8") == wanted.model_id.removesuffix("#int8"):
            # The same model under another runtime: int8 vectors are a collection's own.
            runtime = "onnx-int8" if stored.model_id.endswith("#int8") else "torch or onnx"
            hint = f"run with SIGHTLINE_RUNTIME={runtime} as it was built"
        raise ModelMismatch(
            f"collection {name!r} was built with model {stored.model_id!r} "
            f"({stored.size}-d, {stored.distance}); the loaded model is {wanted.model_id!r} "
            f"({wanted.size}-d, {wanted.distance}). Re-embed into a new collection "
            f"(set SIGHTLINE_INDEX__COLLECTION_PREFIX) or {hint}."
        )


def best_per_group(
    fetch: Callable[[int], list[Hit]], k: int, group_by: str, start: int = 32
) -> list[Hit]:
    """Best hit per distinct ``group_by`` value, for backends without native grouping.

    Fetches a growing window of ranked hits until k groups are found or the collection is
    exhausted; hits lacking the field are skipped, as Qdrant's group queries do.
    """
    limit = max(start, 4 * k)
    while True:
        hits = fetch(limit)
        seen: dict[Any, Hit] = {}
        for hit in hits:
            key = hit.payload.get(group_by)
            if key is None or isinstance(key, list | dict) or key in seen:
                continue
            seen[key] = hit
            if len(seen) == k:
                return list(seen.values())
        if len(hits) < limit:
            return list(seen.values())
        limit *= 4


class VectorIndex(abc.ABC):
    """Collections of unit vectors with payloads, queried by cosine similarity."""

    @abc.abstractmethod
    def ensure_collection(self, name: str, identity: ModelIdentity) -> None:
        """Create the collection for this model, or verify it was built with it.

        Raises:
            ModelMismatch: the collection exists with another model identity.
        """

    @abc.abstractmethod
    def collection_identity(self, name: str) -> ModelIdentity | None:
        """The identity a collection recorded; None if it does not exist."""

    @abc.abstractmethod
    def list_collections(self) -> list[str]:
        """Names of the collections present."""

    @abc.abstractmethod
    def drop_collection(self, name: str) -> None:
        """Delete a collection and its points."""

    @abc.abstractmethod
    def upsert(self, name: str, points: Sequence[PointData]) -> None:
        """Insert or replace points; returns once the write is durable."""

    @abc.abstractmethod
    def set_payload(self, name: str, ids: Sequence[str], payload: Mapping[str, Any]) -> None:
        """Merge keys into the payload of existing points."""

    @abc.abstractmethod
    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Delete points by id (missing ids are ignored)."""

    @abc.abstractmethod
    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        """Points by id, in no particular order; missing ids are left out."""

    @abc.abstractmethod
    def count(self, name: str, flt: PayloadFilter | None = None) -> int:
        """Exact number of points matching the filter."""

    @abc.abstractmethod
    def scroll(
        self,
        name: str,
        flt: PayloadFilter | None = None,
        limit: int = 100,
        offset: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[Record], str | None]:
        """A page of points in id order, and the offset of the next page (None at the end)."""

    @abc.abstractmethod
    def search(
        self,
        name: str,
        vector: Vector,
        k: int,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
        ef: int | None = None,
    ) -> list[Hit]:
        """The k nearest points by cosine similarity, best first.

        With ``group_by``, at most one hit (the best) per distinct value of that field.
        ``ef``: this query's HNSW beam (default the index's): text queries, off the image
        clusters, need a wider one than image queries.
        """

    @abc.abstractmethod
    def recommend(
        self,
        name: str,
        positive: Sequence[Vector],
        negative: Sequence[Vector],
        k: int,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
    ) -> list[Hit]:
        """Points ranked by sum of similarities to positives minus those to negatives."""

    @abc.abstractmethod
    def index_keyword(self, name: str, field: str) -> None:
        """Index a string payload field, so filters and grouping on it stay fast (idempotent)."""

    @abc.abstractmethod
    def active_prefix(self) -> str | None:
        """The collection prefix the deployment was last switched to (None: never switched)."""

    @abc.abstractmethod
    def set_active_prefix(self, prefix: str) -> None:
        """Switch the deployment to the collections under ``prefix`` (atomically)."""

    def snapshot(self, name: str) -> str:
        """Have the engine take a snapshot of its own of one collection, kept where the
        engine keeps them (a Qdrant server's snapshot storage); the snapshot's name.

        Raises:
            IndexUnavailable: this deployment takes no server-side snapshots.
        """
        raise IndexUnavailable(f"{type(self).__name__} takes no server-side snapshots")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and connections."""
