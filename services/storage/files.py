"""Content-addressed image store over blobs (a directory or a bucket).

Images live under ``ab/cd/<sha256>``: the same bytes uploaded twice are stored once, and
a write is all-or-nothing (``services.storage.blobs``), so a crash leaves no partial
image.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from services.errors import InvalidInput, NotFound
from services.ids import is_image_id, sha256_hex
from services.storage.blobs import Blobs, FileBlobs, atomic_write, storage_error

__all__ = ["ImageStore", "atomic_write", "storage_error"]

MIN_PREFIX = 6  # hex digits: 16.7 million possible prefixes, as short as people type
_HEX = re.compile(r"[0-9a-f]+")


class ImageStore:
    """Stores original image bytes by their sha256."""

    def __init__(self, blobs: Blobs | Path) -> None:
        self.blobs = blobs if isinstance(blobs, Blobs) else FileBlobs(blobs)

    @staticmethod
    def key_for(image_id: str) -> str:
        """Where an image id lives (whether or not it is stored)."""
        if not is_image_id(image_id):
            raise NotFound(f"not an image id: {image_id!r}")
        return f"{image_id[:2]}/{image_id[2:4]}/{image_id}"

    def put(self, data: bytes) -> str:
        """Store bytes (once) and return their image id."""
        image_id = sha256_hex(data)
        key = self.key_for(image_id)
        if not self.blobs.exists(key):
            self.blobs.put(key, data)
        return image_id

    def get(self, image_id: str) -> bytes:
        """The stored bytes, or NotFound (StorageUnavailable when the store fails)."""
        try:
            return self.blobs.get(self.key_for(image_id))
        except NotFound as e:
            raise NotFound(f"image {image_id} is not stored") from e

    def exists(self, image_id: str) -> bool:
        """True when the image is stored."""
        return is_image_id(image_id) and self.blobs.exists(self.key_for(image_id))

    def delete(self, image_id: str) -> bool:
        """Remove an image; False when it was not there."""
        return self.blobs.delete(self.key_for(image_id))

    def check_writable(self) -> None:
        """Raise StorageUnavailable unless a write succeeds now (readiness)."""
        self.blobs.check_writable()

    def resolve(self, prefix: str) -> str:
        """The stored image id that starts with ``prefix`` (as git resolves abbreviated
        commits): at least 6 hex digits, and only one image may match.

        Raises:
            NotFound: no stored image starts so.
            InvalidInput: not hex, too short, or more than one image starts so.
        """
        value = prefix.strip().lower()
        if is_image_id(value):
            return value
        if len(value) < MIN_PREFIX or not _HEX.fullmatch(value):
            raise InvalidInput(
                f"{prefix!r} is not an image id or a prefix of at least {MIN_PREFIX} hex digits"
            )
        # Ids live under ab/cd/: the listing is narrowed to one folder (or key prefix).
        found = [
            key.rsplit("/", 1)[-1]
            for key in self.blobs.list_keys(f"{value[:2]}/{value[2:4]}/{value}")
        ]
        matches = sorted({i for i in found if is_image_id(i) and i.startswith(value)})
        if not matches:
            raise NotFound(f"no stored image id starts with {value}")
        if len(matches) > 1:
            shown = ", ".join(m[:12] for m in matches[:5])
            raise InvalidInput(f"{value} is ambiguous: {len(matches)} images start so ({shown})")
        return matches[0]

    def ids(self) -> Iterator[str]:
        """Every stored image id (used by reconciliation)."""
        for key in self.blobs.list_keys():
            parts = key.split("/")
            if len(parts) == 3 and is_image_id(parts[2]):
                yield parts[2]
