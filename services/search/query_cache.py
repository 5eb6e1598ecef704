"""Text-query vectors, kept per process: people repeat queries (paging, refining filters,
the same popular words), and a text encode is most of a text search's time.

A bounded LRU keyed by the query as the model will read it: Unicode NFKC and runs of
whitespace collapsed, case kept (SigLIP's tokenizer is case-sensitive). Its counters are
exported as Prometheus metrics (``sightline_query_cache_*``).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import NamedTuple

import numpy as np

from services.encoder import Encoder

_SPACES = re.compile(r"\s+")


class CacheInfo(NamedTuple):
    """Counters since the process started."""

    hits: int
    misses: int
    size: int
    capacity: int


def normalise_query(text: str) -> str:
    """The form two queries share when the model would read them alike."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()


class QueryVectors:
    """Vectors of text queries through an LRU of ``capacity`` entries (0: no cache)."""

    def __init__(self, encoder: Encoder, capacity: int) -> None:
        self.encoder = encoder
        self.capacity = capacity
        self._cached = functools.lru_cache(maxsize=capacity)(self._encode)

    def _encode(self, text: str) -> np.ndarray:
        vector = self.encoder.encode_texts([text])[0]
        vector.setflags(write=False)  # shared by every caller that asks again
        return vector

    def vector(self, text: str) -> np.ndarray:
        """The query's unit vector (read-only).

        Raises:
            InvalidQuery: the text is not valid Unicode.
        """
        key = normalise_query(text)
        return self._cached(key) if self.capacity else self._encode(key)

    def info(self) -> CacheInfo:
        """Hits, misses and fill."""
        info = self._cached.cache_info()
        return CacheInfo(info.hits, info.misses, info.currsize, self.capacity)

    def clear(self) -> None:
        """Forget every vector (the model changed)."""
        self._cached.cache_clear()
