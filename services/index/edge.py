"""Embedded adapter: Qdrant Edge (the Qdrant engine in-process), one shard per collection.

The default on a single machine: no server to run. A shard can be opened by one process at
a time, so multi-process deployments (separate web and worker processes) use the server
adapter. Each collection directory holds the shard and a ``sightline.json`` with the model
identity it was built with.

Booleans: the binding (qdrant-edge-py 0.9) turns a ``MatchValue(True)`` into the integer 1,
so a stored ``true`` can never be matched. Payload booleans are therefore kept in the
shard as two reserved strings and turned back into booleans on every read, and boolean
conditions match those strings: through this adapter, booleans behave exactly as on a
Qdrant server (the contract suite checks both). A shard written before this encoding
(``payload_format`` below 2 in its ``sightline.json``) has its booleans rewritten once,
when this adapter first opens it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from services.encoder import ModelIdentity
from services.errors import ConfigError, IndexUnavailable, NotFound
from services.index.base import (
    HNSW_EF_CONSTRUCT,
    HNSW_M,
    Hit,
    PayloadFilter,
    PointData,
    Record,
    Vector,
    VectorIndex,
    VectorStorage,
    best_per_group,
    check_identity,
    identity_from_dict,
)

_META_FILE = "sightline.json"
PAYLOAD_FORMAT = 2  # 2: payload booleans kept as the reserved strings below
_ACTIVE_FILE = "active.json"  # the switch pointer (Qdrant aliases' role on a server)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")


_TRUE, _FALSE = "\x00sightline:true", "\x00sightline:false"  # how the shard keeps booleans


def _stored(value: Any) -> Any:
    """A payload value as the shard keeps it: booleans as their reserved strings."""
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, dict):
        return {k: _stored(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stored(v) for v in value]
    return value


def _read(value: Any) -> Any:
    """A payload value as callers see it: the reserved strings back to booleans."""
    if isinstance(value, str) and value in (_TRUE, _FALSE):
        return value == _TRUE
    if isinstance(value, dict):
        return {k: _read(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_read(v) for v in value]
    return value


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, dict):
        return any(_has_bool(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    return False


def _payload(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: _read(v) for k, v in (raw or {}).items()}


def _match_any(key: str, values: Sequence[Any]) -> Any:
    """One of several values: a single ``MatchAny`` when they share a type, else any of
    several ``MatchValue`` conditions (Qdrant's ``MatchAny`` takes one type)."""
    stored = [_stored(v) for v in values]
    if all(isinstance(v, str) for v in stored) or all(isinstance(v, int) for v in stored):
        return qe.FieldCondition(key, match=qe.MatchAny(stored))
    return qe.Filter(should=[qe.FieldCondition(key, match=qe.MatchValue(v)) for v in stored])


def _edge_filter(flt: PayloadFilter | None) -> qe.Filter | None:
    if flt is None or flt.is_empty():
        return None
    must: list[Any] = []
    must_not: list[Any] = []
    for key, value in flt.equals.items():
        must.append(qe.FieldCondition(key, match=qe.MatchValue(_stored(value))))
    for key, values in flt.any_of.items():
        must.append(_match_any(key, values))
    for key, r in flt.ranges.items():
        must.append(
            qe.FieldCondition(key, range=qe.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt))
        )
    for key, value in flt.not_equals.items():
        must_not.append(qe.FieldCondition(key, match=qe.MatchValue(_stored(value))))
    if flt.exclude_ids:
        must_not.append(qe.HasIdCondition({uuid.UUID(i) for i in flt.exclude_ids}))
    return qe.Filter(must=must or None, must_not=must_not or None)


def _vec(v: Vector) -> list[float]:
    return np.asarray(v, dtype=np.float32).reshape(-1).tolist()


def _record(r: Any, with_vectors: bool) -> Record:
    vector = None
    if with_vectors and r.vector is not None:
        raw = r.vector[""] if isinstance(r.vector, dict) else r.vector
        vector = np.asarray(raw, dtype=np.float32)
    return Record(id=str(r.id), payload=_payload(r.payload), vector=vector)


class EdgeIndex(VectorIndex):
    """Collections as Qdrant Edge shards under one directory."""

    def __init__(
        self, root: Path, hnsw_ef: int = 512, storage: VectorStorage | None = None
    ) -> None:
        self.root = Path(root)
        self.hnsw_ef = hnsw_ef
        self.storage = storage or VectorStorage()
        self._shards: dict[str, qe.EdgeShard] = {}
        self._lock = threading.RLock()

    def _dir(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise ConfigError(f"invalid collection name {name!r}")
        return self.root / name

    def _open(self, name: str) -> qe.EdgeShard:
        with self._lock:
            shard = self._shards.get(name)
            if shard is not None:
                return shard
            shard_dir = self._dir(name) / "shard"
            if not (self._dir(name) / _META_FILE).is_file():
                raise NotFound(f"collection {name!r} does not exist")
            try:
                shard = qe.EdgeShard.load(str(shard_dir))
            except Exception as e:  # the binding raises plain Exception subclasses
                if "WouldBlock" in str(e):
                    raise IndexUnavailable(
                        f"the embedded index at {self.root} is in use by another process "
                        "(a running `sightline serve` or `demo`?); talk to that service "
                        "instead: export SIGHTLINE_URL=http://HOST:PORT SIGHTLINE_API_KEY=KEY"
                    ) from e
                raise IndexUnavailable(
                    f"cannot open embedded index at {shard_dir}: {e}. Only one process can open "
                    "an embedded index at a time; use a Qdrant server for several processes."
                ) from e
            self._shards[name] = shard
            self._upgrade_payloads(name, shard)
            return shard

    def _upgrade_payloads(self, name: str, shard: qe.EdgeShard) -> None:
        """Rewrite the booleans of a shard stored before they were encoded, once: until
        then a boolean filter could not match them. Points without booleans are left
        alone; the format is recorded only after every point is rewritten."""
        meta_path = self._dir(name) / _META_FILE
        meta = json.loads(meta_path.read_text())
        if int(meta.get("payload_format", 1)) >= PAYLOAD_FORMAT:
            return
        offset: Any = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=256, with_payload=True, with_vector=False)
            )
            for r in records:
                payload = dict(r.payload or {})
                if _has_bool(payload):
                    op = qe.UpdateOperation.set_payload([r.id], _stored(payload))
                    shard.update(op)
            if offset is None:
                break
        shard.flush()
        meta["payload_format"] = PAYLOAD_FORMAT
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)

    def collection_identity(self, name: str) -> ModelIdentity | None:
        meta = self._dir(name) / _META_FILE
        if not meta.is_file():
            return None
        return identity_from_dict(json.loads(meta.read_text()))

    def ensure_collection(self, name: str, identity: ModelIdentity) -> None:
        with self._lock:
            stored = self.collection_identity(name)
            if stored is not None:
                check_identity(name, stored, identity)
                self._open(name)
                return
            directory = self._dir(name)
            directory.mkdir(parents=True, exist_ok=True)
            quantization = (
                qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
                if self.storage.quantized
                else None
            )
            config = qe.EdgeConfig(
                vectors={
                    "": qe.EdgeVectorParams(
                        size=identity.size,
                        distance=qe.Distance.Cosine,
                        on_disk=self.storage.on_disk or None,
                    )
                },
                hnsw_config=qe.HnswIndexConfig(
                    m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=10_000
                ),
                quantization_config=quantization,
            )
            try:
                shard = qe.EdgeShard.create(str(directory / "shard"), config)
            except Exception as e:
                raise IndexUnavailable(f"cannot create embedded collection {name!r}: {e}") from e
            tmp = directory / (_META_FILE + ".tmp")
            tmp.write_text(json.dumps({**identity.as_dict(), "payload_format": PAYLOAD_FORMAT}))
            os.replace(tmp, directory / _META_FILE)  # identity appears only once complete
            self._shards[name] = shard

    def list_collections(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{_META_FILE}"))

    def drop_collection(self, name: str) -> None:
        with self._lock:
            shard = self._shards.pop(name, None)
            if shard is not None:
                shard.close()
            shutil.rmtree(self._dir(name), ignore_errors=True)

    def _write(self, name: str, operation: Any) -> None:
        """Apply an update and flush it; a failure of the engine's storage (disk full,
        read-only) is transient, not a bug."""
        with self._lock:
            shard = self._open(name)
            try:
                shard.update(operation)
                shard.flush()
            except Exception as e:  # the binding raises plain Exception subclasses
                raise IndexUnavailable(f"cannot write embedded collection {name!r}: {e}") from e

    def upsert(self, name: str, points: Sequence[PointData]) -> None:
        if not points:
            return
        edge_points = [
            qe.Point(uuid.UUID(p.id), _vec(p.vector), _stored(dict(p.payload))) for p in points
        ]
        self._write(name, qe.UpdateOperation.upsert_points(edge_points))

    def set_payload(self, name: str, ids: Sequence[str], payload: Mapping[str, Any]) -> None:
        if not ids:
            return
        self._write(
            name,
            qe.UpdateOperation.set_payload([uuid.UUID(i) for i in ids], _stored(dict(payload))),
        )

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        self._write(name, qe.UpdateOperation.delete_points([uuid.UUID(i) for i in ids]))

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        if not ids:
            return []
        with self._lock:
            found = self._open(name).retrieve(
                [uuid.UUID(i) for i in ids], with_payload=True, with_vector=with_vectors
            )
        return [_record(r, with_vectors) for r in found]

    def count(self, name: str, flt: PayloadFilter | None = None) -> int:
        with self._lock:
            return int(
                self._open(name).count(qe.CountRequest(exact=True, filter=_edge_filter(flt)))
            )

    def scroll(
        self,
        name: str,
        flt: PayloadFilter | None = None,
        limit: int = 100,
        offset: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[Record], str | None]:
        request = qe.ScrollRequest(
            offset=uuid.UUID(offset) if offset else None,
            limit=limit,
            filter=_edge_filter(flt),
            with_payload=True,
            with_vector=with_vectors,
        )
        with self._lock:
            records, next_offset = self._open(name).scroll(request)
        return (
            [_record(r, with_vectors) for r in records],
            str(next_offset) if next_offset is not None else None,
        )

    def _query(
        self, name: str, query: Any, limit: int, flt: PayloadFilter | None, ef: int | None = None
    ) -> list[Hit]:
        request = qe.QueryRequest(
            limit=limit,
            query=query,
            filter=_edge_filter(flt),
            with_payload=True,
            params=qe.SearchParams(
                hnsw_ef=max(ef or self.hnsw_ef, limit),
                quantization=qe.QuantizationSearchParams(
                    rescore=True, oversampling=self.storage.oversampling
                )
                if self.storage.quantized
                else None,
            ),
        )
        with self._lock:
            found = self._open(name).query(request)
        return [Hit(id=str(p.id), score=float(p.score), payload=_payload(p.payload)) for p in found]

    def _ranked(
        self,
        name: str,
        query: Any,
        k: int,
        flt: PayloadFilter | None,
        group_by: str | None,
        ef: int | None = None,
    ) -> list[Hit]:
        if group_by is None:
            return self._query(name, query, k, flt, ef)
        return best_per_group(lambda limit: self._query(name, query, limit, flt, ef), k, group_by)

    def search(
        self,
        name: str,
        vector: Vector,
        k: int,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
        ef: int | None = None,
    ) -> list[Hit]:
        return self._ranked(name, qe.Query.Nearest(_vec(vector)), k, flt, group_by, ef)

    def recommend(
        self,
        name: str,
        positive: Sequence[Vector],
        negative: Sequence[Vector],
        k: int,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
    ) -> list[Hit]:
        query = qe.Query.RecommendSumScores(
            qe.RecommendQuery(
                positives=[_vec(v) for v in positive], negatives=[_vec(v) for v in negative]
            )
        )
        return self._ranked(name, query, k, flt, group_by)

    def index_keyword(self, name: str, field: str) -> None:
        with self._lock:
            shard = self._open(name)
            if field in shard.info().payload_schema:
                return
            shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
            shard.flush()

    def active_prefix(self) -> str | None:
        pointer = self.root / _ACTIVE_FILE
        if not pointer.is_file():
            return None
        return str(json.loads(pointer.read_text())["prefix"])

    def set_active_prefix(self, prefix: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / (_ACTIVE_FILE + ".tmp")
        tmp.write_text(json.dumps({"prefix": prefix}))
        os.replace(tmp, self.root / _ACTIVE_FILE)

    def optimize(self, name: str) -> None:
        """Build the HNSW index now instead of leaving it to the next optimiser pass."""
        with self._lock:
            self._open(name).optimize()

    def close(self) -> None:
        with self._lock:
            for shard in self._shards.values():
                shard.flush()
                shard.close()
            self._shards.clear()
