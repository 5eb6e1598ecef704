"""Intake: what an upload is, and the checks it passes before anything is written.

Bad input is refused here, before any byte is stored, so every entry point can answer
with the reason at once and leave nothing half-written behind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.errors import InvalidMetadata
from services.images import DecodedImage, decode_image
from services.payload import SYSTEM_FIELDS
from services.settings import ImageLimits

# Payload keys the system writes; user metadata may not overwrite them.
RESERVED_KEYS = SYSTEM_FIELDS
# Publishers only validate: decoding at the smallest scale still reads the whole stream.
VALIDATION_SIDE = 8
_MAX_META_KEYS = 64
_MAX_META_VALUE = 4096


@dataclass(frozen=True)
class IngestItem:
    """One upload: raw bytes and the caller's metadata."""

    data: bytes
    filename: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """An upload that passed intake: decoded pixels and the payload it will be stored with."""

    item: IngestItem
    decoded: DecodedImage
    payload: dict[str, Any]
    # Made ahead, off the model's thread (``Indexer.ready``): the model's input for the
    # image and its thumbnail's bytes; None when not made (then made when indexed).
    model_input: np.ndarray | None = None
    thumbnail: bytes | None = None

    @property
    def image_id(self) -> str:
        """The content hash: the image's id and its address in the store."""
        return self.decoded.image_id


def validate_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Check caller metadata is small, JSON-like and free of reserved keys.

    Raises:
        InvalidMetadata: naming the offending key.
    """
    if not isinstance(metadata, Mapping):
        raise InvalidMetadata("metadata must be an object of key -> value")
    if len(metadata) > _MAX_META_KEYS:
        raise InvalidMetadata(f"too many metadata keys ({len(metadata)} > {_MAX_META_KEYS})")
    clean: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key) > 64 or "\x00" in key:
            raise InvalidMetadata(f"metadata key {key!r} must be a string of 1-64 characters")
        if key in RESERVED_KEYS:
            raise InvalidMetadata(f"metadata key {key!r} is reserved by Sightline")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is not None and not isinstance(v, str | int | float | bool):
                raise InvalidMetadata(f"metadata {key!r}: values must be strings or numbers")
            if isinstance(v, float) and not math.isfinite(v):
                raise InvalidMetadata(f"metadata {key!r}: numbers must be finite")
            if isinstance(v, str) and len(v) > _MAX_META_VALUE:
                raise InvalidMetadata(f"metadata {key!r}: value longer than {_MAX_META_VALUE}")
            if isinstance(v, str) and "\x00" in v:
                # Never text a person wrote, and the embedded index reserves it (booleans).
                raise InvalidMetadata(f"metadata {key!r}: values may not hold NUL characters")
        clean[key] = value
    return clean


def prepare(item: IngestItem, limits: ImageLimits, min_side: int | None = None) -> Prepared:
    """Validate one upload without writing anything.

    ``min_side`` is the smallest side the pixels are decoded at: the model's input size
    for embedding, ``VALIDATION_SIDE`` when only checking.

    Raises:
        InvalidImage, InvalidMetadata: the item is refused.
    """
    metadata = validate_metadata(item.metadata)
    decoded = decode_image(item.data, limits, min_side=min_side)
    payload = {
        **metadata,
        "image_id": decoded.image_id,
        "filename": item.filename,
        "format": decoded.format,
        "width": decoded.width,
        "height": decoded.height,
        "bytes": decoded.size_bytes,
    }
    return Prepared(item=item, decoded=decoded, payload=payload)
