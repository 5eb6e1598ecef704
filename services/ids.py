"""Content-derived identifiers: the same bytes always map to the same point."""

from __future__ import annotations

import hashlib
import re
import uuid

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    """True when the value is a full lowercase hex sha256."""
    return bool(_SHA256.match(value))
