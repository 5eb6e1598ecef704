"""Search: text to images, image to similar images, and recommendations from examples.

Every call takes the caller: quarantined images are filtered out of what non-admins can
reach (as references and as results), and payloads come back shaped for the caller.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.auth.principal import Principal, Scope
from services.encoder import Encoder
from services.errors import InvalidQuery, NotFound
from services.ids import is_image_id, point_id
from services.images import decode_image
from services.index.base import Hit, PayloadFilter, Record, VectorIndex
from services.payload import can_see, shape_for, visible_filter
from services.search.query_cache import QueryVectors
from services.settings import ImageLimits
from services.storage.files import ImageStore
from services.storage.thumbnails import ThumbnailStore

MAX_K = 1000


@dataclass(frozen=True)
class SearchHit:
    """A ranked image: its id, the cosine similarity and its payload (as the caller sees it)."""

    image_id: str
    score: float
    payload: dict[str, Any]


class SearchService:
    """The read side of the catalog: queries, stored records, originals and thumbnails."""

    def __init__(
        self,
        encoder: Encoder,
        index: VectorIndex,
        limits: ImageLimits,
        collection: str,
        store: ImageStore,
        thumbnails: ThumbnailStore,
        query_cache_size: int = 1024,
        text_ef: int | None = None,
    ) -> None:
        self.text_ef = text_ef
        self.encoder = encoder
        self.queries = QueryVectors(encoder, query_cache_size)
        self.index = index
        self.limits = limits
        self.collection = collection
        self.store = store
        self.thumbnails = thumbnails

    @staticmethod
    def _check_k(k: int, offset: int = 0) -> int:
        """How many to ask the index for: a page at ``offset`` is the tail of the first
        ``offset + k`` hits (bounded, so deep paging cannot grow without limit)."""
        if not 1 <= k <= MAX_K or offset < 0 or offset + k > MAX_K:
            raise InvalidQuery(f"k and offset + k must be between 1 and {MAX_K}")
        return offset + k

    def _hits(self, caller: Principal, hits: Sequence[Hit]) -> list[SearchHit]:
        return [
            SearchHit(str(h.payload.get("image_id", h.id)), h.score, shape_for(caller, h.payload))
            for h in hits
        ]

    def record(
        self, caller: Principal, ref: str, with_vector: bool = False, scope: Scope = Scope.SEARCH
    ) -> Record:
        """The stored point for an image id (sha256) or a point id (UUID), in one read,
        with its payload as the caller may see it. ``scope`` is what the caller's operation
        needs (a moderation check by an ingest key reads an image too).

        Raises:
            NotFound: no such image, or one hidden from the caller (the two read alike).
        """
        caller.require(scope)
        record = self._raw(ref, with_vector)
        if not can_see(caller, record.payload):
            raise NotFound(f"no image with id {ref.strip().lower()!r}")
        return Record(record.id, shape_for(caller, record.payload), record.vector)

    def _raw(self, ref: str, with_vector: bool = False) -> Record:
        ref = ref.strip().lower()
        if is_image_id(ref):
            pid = point_id(ref)
        else:
            try:
                pid = str(uuid.UUID(ref))
            except ValueError as e:
                raise NotFound(f"no image with id {ref!r}") from e
        records = self.index.retrieve(self.collection, [pid], with_vectors=with_vector)
        if not records:
            raise NotFound(f"no image with id {ref!r}")
        return records[0]

    def _vector_of(self, caller: Principal, ref: str) -> tuple[str, Any]:
        record = self.record(caller, ref, with_vector=True)
        return record.id, record.vector

    def text(
        self,
        caller: Principal,
        query: str,
        k: int = 10,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
        offset: int = 0,
    ) -> list[SearchHit]:
        """Images best matching a text query."""
        caller.require(Scope.SEARCH)
        n = self._check_k(k, offset)
        if not query.strip():
            raise InvalidQuery("the query text is empty")
        vector = self.queries.vector(query)
        flt = visible_filter(caller, flt)
        hits = self.index.search(self.collection, vector, n, flt, group_by, ef=self.text_ef)
        return self._hits(caller, hits[offset:])

    def similar(
        self,
        caller: Principal,
        ref: str,
        k: int = 10,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
        offset: int = 0,
    ) -> list[SearchHit]:
        """Images most like a stored one, never including the image itself."""
        n = self._check_k(k, offset)
        pid, vector = self._vector_of(caller, ref)
        flt = visible_filter(caller, flt).excluding([pid])
        hits = self.index.search(self.collection, vector, n, flt, group_by)
        return self._hits(caller, hits[offset:])

    def by_image(
        self,
        caller: Principal,
        data: bytes,
        k: int = 10,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
        offset: int = 0,
    ) -> list[SearchHit]:
        """Images most like uploaded bytes; the same image, if indexed, is left out.

        Raises:
            InvalidImage: the query image is refused like any upload.
        """
        caller.require(Scope.SEARCH)
        n = self._check_k(k, offset)
        decoded = decode_image(data, self.limits)
        vector = self.encoder.encode_images([decoded.image])[0]
        flt = visible_filter(caller, flt).excluding([point_id(decoded.image_id)])
        hits = self.index.search(self.collection, vector, n, flt, group_by)
        return self._hits(caller, hits[offset:])

    def recommend(
        self,
        caller: Principal,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        k: int = 10,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
    ) -> list[SearchHit]:
        """Images like the positives and unlike the negatives (examples excluded)."""
        self._check_k(k)
        if not positive:
            raise InvalidQuery("recommend needs at least one positive example")
        pos = [self._vector_of(caller, r) for r in positive]
        neg = [self._vector_of(caller, r) for r in negative]
        flt = visible_filter(caller, flt).excluding([pid for pid, _ in pos + neg])
        hits = self.index.recommend(
            self.collection, [v for _, v in pos], [v for _, v in neg], k, flt, group_by
        )
        return self._hits(caller, hits)

    def browse(
        self, caller: Principal, flt: PayloadFilter | None = None, limit: int = 24
    ) -> list[SearchHit]:
        """The catalog without a query (the dashboard's first page), filtered."""
        caller.require(Scope.SEARCH)
        self._check_k(limit)
        flt = visible_filter(caller, flt)
        records, _ = self.index.scroll(self.collection, None if flt.is_empty() else flt, limit)
        return [
            SearchHit(str(r.payload.get("image_id")), 0.0, shape_for(caller, r.payload))
            for r in records
        ]

    def original(
        self, caller: Principal, ref: str, scope: Scope = Scope.SEARCH
    ) -> tuple[bytes, str]:
        """The stored original of a visible image and its format (``JPEG``, ``PNG``, ...)."""
        record = self.record(caller, ref, scope=scope)
        image_id = str(record.payload["image_id"])
        return self.store.get(image_id), str(record.payload.get("format", ""))

    def thumbnail(self, caller: Principal, ref: str, size: int) -> bytes:
        """A JPEG thumbnail of a visible image (made on demand for sizes not kept)."""
        record = self.record(caller, ref)
        return self.thumbnails.get(str(record.payload["image_id"]), size)
