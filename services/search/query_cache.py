"""Text-query vectors, kept per process: people repeat queries (paging, refining filters,
the same popular words), and a text encode is most of a text search's time.

A bounded LRU keyed by the query as the model will read it: Unicode NFKC and runs of
whitespace collapsed, case kept (SigLIP's tokenizer is case-sensitive). Each lookup is
reported to ``observer(hit)`` (the web app counts them as Prometheus counters, which sum
across gunicorn workers).
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from services.encoder import Encoder

_SPACES = re.compile(r"\s+")


class CacheInfo(NamedTuple):
    """Counters of this process since it started."""

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
        self.observer: Callable[[bool], None] | None = None
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def vector(self, text: str) -> np.ndarray:
        """The query's unit vector (read-only: shared by every caller that asks again).

        Raises:
            InvalidQuery: the text is not valid Unicode.
        """
        key = normalise_query(text)
        with self._lock:
            found = self._vectors.get(key)
            if found is not None:
                self._vectors.move_to_end(key)
                self._hits += 1
            else:
                self._misses += 1
        if self.observer is not None:
            self.observer(found is not None)
        if found is not None:
            return found
        vector = self.encoder.encode_texts([key])[0]  # outside the lock: encodes overlap
        vector.setflags(write=False)
        if self.capacity:
            with self._lock:
                self._vectors[key] = vector
                while len(self._vectors) > self.capacity:
                    self._vectors.popitem(last=False)
        return vector

    def info(self) -> CacheInfo:
        """Hits, misses and fill of this process's cache."""
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._vectors), self.capacity)
