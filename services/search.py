"""Search: text to images, image to similar images, and recommendations from examples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.encoder import Encoder
from services.errors import InvalidImage, NotFound
from services.ids import is_image_id, point_id
from services.images import decode_image
from services.index.base import Hit, PayloadFilter, Record, VectorIndex
from services.settings import ImageLimits

MAX_K = 1000


@dataclass(frozen=True)
class SearchHit:
    """A ranked image: its id, the cosine similarity and its payload."""

    image_id: str
    score: float
    payload: dict[str, Any]


def _to_hits(hits: Sequence[Hit]) -> list[SearchHit]:
    return [SearchHit(h.payload.get("image_id", h.id), h.score, h.payload) for h in hits]


class SearchService:
    """Queries over the images collection."""

    def __init__(
        self, encoder: Encoder, index: VectorIndex, limits: ImageLimits, collection: str
    ) -> None:
        self.encoder = encoder
        self.index = index
        self.limits = limits
        self.collection = collection

    @staticmethod
    def _check_k(k: int) -> None:
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")

    def record(self, ref: str, with_vector: bool = False) -> Record:
        """The stored point for an image id (sha256) or a point id (UUID), in one read.

        Raises:
            NotFound: no such image in the index.
        """
        ref = ref.strip().lower()
        pid = point_id(ref) if is_image_id(ref) else ref
        try:
            records = self.index.retrieve(self.collection, [pid], with_vectors=with_vector)
        except ValueError as e:  # not a UUID either
            raise NotFound(f"no image with id {ref!r}") from e
        if not records:
            raise NotFound(f"no image with id {ref!r}")
        return records[0]

    def resolve(self, ref: str) -> str:
        """Point id for an image reference, checking it exists."""
        return self.record(ref).id

    def _vector_of(self, ref: str) -> tuple[str, Any]:
        record = self.record(ref, with_vector=True)
        return record.id, record.vector

    def text(
        self,
        query: str,
        k: int = 10,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
    ) -> list[SearchHit]:
        """Images best matching a text query."""
        self._check_k(k)
        if not query.strip():
            raise ValueError("the query text is empty")
        vector = self.encoder.encode_texts([query])[0]
        return _to_hits(self.index.search(self.collection, vector, k, flt, group_by))

    def similar(
        self,
        ref: str,
        k: int = 10,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
    ) -> list[SearchHit]:
        """Images most like a stored one, never including the image itself."""
        self._check_k(k)
        pid, vector = self._vector_of(ref)
        flt = (flt or PayloadFilter()).excluding([pid])
        return _to_hits(self.index.search(self.collection, vector, k, flt, group_by))

    def by_image(
        self,
        data: bytes,
        k: int = 10,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
    ) -> list[SearchHit]:
        """Images most like uploaded bytes; the same image, if indexed, is left out.

        Raises:
            InvalidImage: the query image is refused like any upload.
        """
        self._check_k(k)
        decoded = decode_image(data, self.limits)
        vector = self.encoder.encode_images([decoded.image])[0]
        flt = (flt or PayloadFilter()).excluding([point_id(decoded.image_id)])
        return _to_hits(self.index.search(self.collection, vector, k, flt, group_by))

    def recommend(
        self,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        k: int = 10,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
    ) -> list[SearchHit]:
        """Images like the positives and unlike the negatives (examples excluded)."""
        self._check_k(k)
        if not positive:
            raise InvalidImage("recommend needs at least one positive example")
        pos = [self._vector_of(r) for r in positive]
        neg = [self._vector_of(r) for r in negative]
        flt = (flt or PayloadFilter()).excluding([pid for pid, _ in pos + neg])
        hits = self.index.recommend(
            self.collection, [v for _, v in pos], [v for _, v in neg], k, flt, group_by
        )
        return _to_hits(hits)
