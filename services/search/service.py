"""Search: text to images, image to similar images, and recommendations from examples.

Every call takes the caller: quarantined images are filtered out of what non-admins can
reach (as references and as results), and payloads come back shaped for the caller.
"""

from __future__ import annotations

import difflib
import time
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
from services.payload import INTERNAL_FIELDS, can_see, shape_for, visible_filter
from services.search.query_cache import QueryVectors
from services.settings import ImageLimits
from services.storage.files import ImageStore
from services.storage.thumbnails import ThumbnailStore

MAX_K = 1000
FIELDS_SAMPLE = 1000  # images whose fields count as the catalog's, for filter warnings
FIELDS_TTL_S = 60.0


def _field_paths(value: Any, prefix: str, out: set[str], depth: int = 0) -> None:
    """Every dotted path a filter could name (``tags.colour``, ``attrs.size``)."""
    if not isinstance(value, dict) or depth > 3:
        return
    for key, inner in value.items():
        path = f"{prefix}{key}"
        out.add(path)
        _field_paths(inner, path + ".", out, depth + 1)


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
        query_images: ThumbnailStore | None = None,
    ) -> None:
        self.text_ef = text_ef
        self.query_images = query_images
        self._fields_cache: tuple[float, frozenset[str]] | None = None
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
        # Decoded as ingest decodes (at the model's input size): the same bytes give the
        # same vector, and a 12-megapixel query is decoded at 1/8 scale.
        decoded = decode_image(data, self.limits, min_side=self.encoder.input_size)
        vector = self.encoder.encode_images([decoded.image])[0]
        flt = visible_filter(caller, flt).excluding([point_id(decoded.image_id)])
        hits = self.index.search(self.collection, vector, n, flt, group_by)
        return self._hits(caller, hits[offset:])

    def keep_query_image(self, caller: Principal, data: bytes) -> str:
        """Keep a search-by-image query (checked like an upload) so that later pages of
        its results, and the page showing it, can name it by id instead of carrying the
        bytes again. Query images are not catalog images: nothing indexes them.

        Raises:
            InvalidImage: the bytes are refused like any upload.
        """
        caller.require(Scope.SEARCH)
        decode_image(data, self.limits)
        return self._queries().store.put(data)

    def by_kept_image(
        self,
        caller: Principal,
        query_id: str,
        k: int = 10,
        flt: PayloadFilter | None = None,
        group_by: str | None = None,
        offset: int = 0,
    ) -> list[SearchHit]:
        """``by_image`` for a query image kept by ``keep_query_image``."""
        caller.require(Scope.SEARCH)
        return self.by_image(caller, self._kept(query_id), k, flt, group_by, offset)

    def query_thumbnail(self, caller: Principal, query_id: str, size: int) -> bytes:
        """A thumbnail of a kept query image."""
        caller.require(Scope.SEARCH)
        self._kept(query_id)
        return self._queries().get(query_id, size)

    def _queries(self) -> ThumbnailStore:
        if self.query_images is None:
            raise NotFound("this server keeps no query images")
        return self.query_images

    def _kept(self, query_id: str) -> bytes:
        try:
            return self._queries().store.get(query_id)
        except NotFound as e:
            raise NotFound("the query image is no longer kept; search with it again") from e

    def unknown_fields(self, caller: Principal, flt: PayloadFilter) -> list[str]:
        """Warnings for filter fields no image has: a typo (``colr=red``) must not pass
        for an empty catalog. Warned, not refused: the known fields are those of a sample
        of the catalog (refreshed every minute), and a field only a few images carry
        may lie outside it."""
        caller.require(Scope.SEARCH)
        asked = {*flt.equals, *flt.any_of, *flt.ranges, *flt.not_equals}
        if not asked:
            return []
        known = self._known_fields()
        if not known:  # an empty catalog: nothing to compare with
            return []
        if not caller.sees_moderation:  # internal fields and every path below them
            known = frozenset(f for f in known if f.split(".", 1)[0] not in INTERNAL_FIELDS)
        unknown = sorted(f for f in asked if f not in known)
        if not unknown:
            return []
        # Name what a person filters on: metadata and tags, not per-label scores or
        # moderation internals (filterable, but dozens of them drown the useful names).
        listed = sorted(
            f
            for f in known - {"image_id", "phash", "moderation", "tag_scores"}
            if not f.startswith(("tag_scores.", "moderation."))
        )
        out = []
        for f in unknown:
            close = difflib.get_close_matches(f, listed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            names = ", ".join(listed[:30]) + (" …" if len(listed) > 30 else "")
            out.append(f"no image has a field {f!r}; {hint}fields in the catalog: {names}")
        return out

    def _known_fields(self) -> frozenset[str]:
        now = time.monotonic()
        cached = self._fields_cache
        if cached is not None and now - cached[0] < FIELDS_TTL_S:
            return cached[1]
        records, _ = self.index.scroll(self.collection, None, FIELDS_SAMPLE)
        fields: set[str] = set()
        for record in records:
            _field_paths(record.payload, "", fields)
        known = frozenset(fields)
        self._fields_cache = (now, known)
        return known

    def count(
        self, caller: Principal, flt: PayloadFilter | None = None, query_image: str | None = None
    ) -> int:
        """How many images the caller can see match a filter (a result page's total);
        a search by a kept query image leaves that image out, as its results do."""
        caller.require(Scope.SEARCH)
        flt = visible_filter(caller, flt)
        if query_image is not None and is_image_id(query_image):
            flt = flt.excluding([point_id(query_image)])
        return self.index.count(self.collection, None if flt.is_empty() else flt)

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
