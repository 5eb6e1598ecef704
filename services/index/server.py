"""Server adapter: a Qdrant server or cluster through ``qdrant-client``.

Used for production and every multi-process setup. The model identity is kept in the
collection's metadata, so any process can check it before writing or querying.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from services.encoder import ModelIdentity
from services.errors import IndexUnavailable, NotFound
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
    check_identity,
    identity_from_dict,
)

ACTIVE_ALIAS = "sightline-active"


def _match_any(key: str, values: Sequence[Any]) -> Any:
    """One of several values: one ``MatchAny`` when they are all strings or all integers
    (what it takes), else any of several ``MatchValue`` conditions (booleans, mixed)."""
    if all(isinstance(v, str) for v in values) or all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        return models.FieldCondition(key=key, match=models.MatchAny(any=list(values)))
    return models.Filter(
        should=[models.FieldCondition(key=key, match=models.MatchValue(value=v)) for v in values]
    )


def _server_filter(flt: PayloadFilter | None) -> models.Filter | None:
    if flt is None or flt.is_empty():
        return None
    must: list[Any] = []
    must_not: list[Any] = []
    for key, value in flt.equals.items():
        must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
    for key, values in flt.any_of.items():
        must.append(_match_any(key, values))
    for key, r in flt.ranges.items():
        must.append(
            models.FieldCondition(
                key=key, range=models.Range(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt)
            )
        )
    for key, value in flt.not_equals.items():
        must_not.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
    if flt.exclude_ids:
        must_not.append(models.HasIdCondition(has_id=sorted(flt.exclude_ids)))
    return models.Filter(must=must or None, must_not=must_not or None)


def _vec(v: Vector) -> list[float]:
    return np.asarray(v, dtype=np.float32).reshape(-1).tolist()


def _record(r: Any, with_vectors: bool) -> Record:
    vector = None
    if with_vectors and r.vector is not None:
        raw = r.vector.get("") if isinstance(r.vector, dict) else r.vector
        vector = np.asarray(raw, dtype=np.float32)
    return Record(id=str(r.id), payload=dict(r.payload or {}), vector=vector)


def _hits(points: Sequence[Any]) -> list[Hit]:
    return [Hit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in points]


class ServerIndex(VectorIndex):
    """Collections on a Qdrant server, through an injected ``QdrantClient``."""

    def __init__(
        self, client: QdrantClient, hnsw_ef: int = 512, storage: VectorStorage | None = None
    ) -> None:
        self.client = client
        self.hnsw_ef = hnsw_ef
        self.storage = storage or VectorStorage()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a client call, mapping transport failures to IndexUnavailable."""
        try:
            return fn(*args, **kwargs)
        except (ResponseHandlingException, ConnectionError, TimeoutError) as e:
            raise IndexUnavailable(f"Qdrant unreachable during {what}: {e}") from e
        except UnexpectedResponse as e:
            if e.status_code == 404:
                raise NotFound(f"{what}: not found") from e
            raise IndexUnavailable(f"Qdrant error during {what}: {e}") from e

    def collection_identity(self, name: str) -> ModelIdentity | None:
        if not self._call("collection_exists", self.client.collection_exists, name):
            return None
        info = self._call("get_collection", self.client.get_collection, name)
        identity = identity_from_dict(info.config.metadata)
        if identity is None:
            # Created outside Sightline: report what the vectors are, so the mismatch says so.
            params = info.config.params.vectors
            size = params.size if isinstance(params, models.VectorParams) else 0
            return ModelIdentity(model_id="<unrecorded>", size=size)
        return identity

    def ensure_collection(self, name: str, identity: ModelIdentity) -> None:
        stored = self.collection_identity(name)
        if stored is not None:
            check_identity(name, stored, identity)
            return
        self._call(
            "create_collection",
            self.client.create_collection,
            name,
            vectors_config=models.VectorParams(
                size=identity.size,
                distance=models.Distance.COSINE,
                on_disk=self.storage.on_disk or None,
            ),
            hnsw_config=models.HnswConfigDiff(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT),
            quantization_config=models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, quantile=0.99, always_ram=True
                )
            )
            if self.storage.quantized
            else None,
            replication_factor=self.storage.replication_factor,
            write_consistency_factor=self.storage.write_consistency_factor,
            metadata=identity.as_dict(),
        )

    def list_collections(self) -> list[str]:
        response = self._call("get_collections", self.client.get_collections)
        return sorted(c.name for c in response.collections)

    def drop_collection(self, name: str) -> None:
        self._call("delete_collection", self.client.delete_collection, name)

    def upsert(self, name: str, points: Sequence[PointData]) -> None:
        if not points:
            return
        structs = [
            models.PointStruct(id=p.id, vector=_vec(p.vector), payload=p.payload) for p in points
        ]
        self._call("upsert", self.client.upsert, name, points=structs, wait=True)

    def set_payload(self, name: str, ids: Sequence[str], payload: Mapping[str, Any]) -> None:
        if not ids:
            return
        self._call(
            "set_payload",
            self.client.set_payload,
            name,
            payload=dict(payload),
            points=list(ids),
            wait=True,
        )

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        self._call(
            "delete",
            self.client.delete,
            name,
            points_selector=models.PointIdsList(points=list(ids)),
            wait=True,
        )

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        if not ids:
            return []
        found = self._call(
            "retrieve",
            self.client.retrieve,
            name,
            ids=list(ids),
            with_payload=True,
            with_vectors=with_vectors,
        )
        return [_record(r, with_vectors) for r in found]

    def count(self, name: str, flt: PayloadFilter | None = None) -> int:
        result = self._call(
            "count", self.client.count, name, count_filter=_server_filter(flt), exact=True
        )
        return int(result.count)

    def scroll(
        self,
        name: str,
        flt: PayloadFilter | None = None,
        limit: int = 100,
        offset: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[Record], str | None]:
        records, next_offset = self._call(
            "scroll",
            self.client.scroll,
            name,
            scroll_filter=_server_filter(flt),
            limit=limit,
            offset=offset,
            with_payload=True,
            with_vectors=with_vectors,
        )
        return (
            [_record(r, with_vectors) for r in records],
            str(next_offset) if next_offset is not None else None,
        )

    def _ranked(
        self,
        name: str,
        query: Any,
        k: int,
        flt: PayloadFilter | None,
        group_by: str | None,
        ef: int | None = None,
    ) -> list[Hit]:
        params = models.SearchParams(
            hnsw_ef=max(ef or self.hnsw_ef, k),
            quantization=models.QuantizationSearchParams(
                rescore=True, oversampling=self.storage.oversampling
            )
            if self.storage.quantized
            else None,
        )
        if group_by is None:
            response = self._call(
                "query_points",
                self.client.query_points,
                name,
                query=query,
                query_filter=_server_filter(flt),
                search_params=params,
                limit=k,
                with_payload=True,
            )
            return _hits(response.points)
        groups = self._call(
            "query_points_groups",
            self.client.query_points_groups,
            name,
            query=query,
            group_by=group_by,
            query_filter=_server_filter(flt),
            search_params=params,
            limit=k,
            group_size=1,
            with_payload=True,
        )
        return [_hits(g.hits)[0] for g in groups.groups if g.hits]

    def search(
        self,
        name: str,
        vector: Vector,
        k: int,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
        ef: int | None = None,
    ) -> list[Hit]:
        return self._ranked(name, _vec(vector), k, flt, group_by, ef)

    def recommend(
        self,
        name: str,
        positive: Sequence[Vector],
        negative: Sequence[Vector],
        k: int,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
    ) -> list[Hit]:
        query = models.RecommendQuery(
            recommend=models.RecommendInput(
                positive=[_vec(v) for v in positive],
                negative=[_vec(v) for v in negative],
                strategy=models.RecommendStrategy.SUM_SCORES,
            )
        )
        return self._ranked(name, query, k, flt, group_by)

    def index_keyword(self, name: str, field: str) -> None:
        info = self._call("get_collection", self.client.get_collection, name)
        if field in (info.payload_schema or {}):
            return
        self._call(
            "create_payload_index",
            self.client.create_payload_index,
            name,
            field_name=field,
            field_schema=models.PayloadSchemaType.KEYWORD,
            wait=True,
        )

    def active_prefix(self) -> str | None:
        response = self._call("get_aliases", self.client.get_aliases)
        for alias in response.aliases:
            if alias.alias_name == ACTIVE_ALIAS and alias.collection_name.endswith("images"):
                return str(alias.collection_name[: -len("images")])
        return None

    def set_active_prefix(self, prefix: str) -> None:
        # A Qdrant alias on the active images collection: switched in one atomic request.
        ops: list[Any] = []
        if self.active_prefix() is not None:
            ops.append(
                models.DeleteAliasOperation(
                    delete_alias=models.DeleteAlias(alias_name=ACTIVE_ALIAS)
                )
            )
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(
                    collection_name=f"{prefix}images", alias_name=ACTIVE_ALIAS
                )
            )
        )
        self._call(
            "update_collection_aliases",
            self.client.update_collection_aliases,
            change_aliases_operations=ops,
        )

    def snapshot(self, name: str) -> str:
        try:
            description = self._call(
                "create_snapshot", self.client.create_snapshot, name, wait=True
            )
        except NotImplementedError as e:  # qdrant-client's local mode
            raise IndexUnavailable(f"this Qdrant takes no snapshots: {e}") from e
        if description is None:
            raise IndexUnavailable(f"Qdrant returned no snapshot for {name!r}")
        return str(description.name)

    def close(self) -> None:
        self.client.close()
