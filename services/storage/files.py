"""Content-addressed image store over blobs (a directory or a bucket).

Images live under ``ab/cd/<sha256>``: the same bytes uploaded twice are stored once, and
a write is all-or-nothing (``services.storage.blobs``), so a crash leaves no partial
image.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from services.errors import NotFound
from services.ids import is_image_id, sha256_hex
from services.storage.blobs import Blobs, FileBlobs, atomic_write, storage_error

__all__ = ["ImageStore", "atomic_write", "storage_error"]


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

    def ids(self) -> Iterator[str]:
        """Every stored image id (used by reconciliation)."""
        for key in self.blobs.list_keys():
            parts = key.split("/")
            if len(parts) == 3 and is_image_id(parts[2]):
                yield parts[2]
