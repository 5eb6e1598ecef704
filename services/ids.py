"""Content-derived identifiers: the same bytes always map to the same point."""

from __future__ import annotations

import hashlib
import re
import uuid

_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of the bytes: the image's id and its address in the store."""
    return hashlib.sha256(data).hexdigest()


def point_id(image_id: str) -> str:
    """Qdrant point id for an image id.

    Qdrant ids are integers or UUIDs; the first 128 bits of the sha256 make a UUID that a
    retried or duplicated upload reproduces exactly, so upserts overwrite instead of adding.
    """
    return str(uuid.UUID(hex=image_id[:32]))


def is_image_id(value: str) -> bool:
    """True when the whole value is a lowercase hex sha256 (``fullmatch``: a ``$`` anchor
    would also accept a trailing newline)."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def is_point_id(value: str) -> bool:
    """True when the value is a point id as this code writes them (a canonical UUID)."""
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False
