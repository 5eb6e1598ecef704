"""Thumbnails, made at ingest so result grids load fast, and on demand for other sizes."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from PIL import Image

from services.errors import NotFound
from services.ids import is_image_id
from services.images import decode_image
from services.settings import ImageLimits
from services.storage.blobs import Blobs, FileBlobs
from services.storage.files import ImageStore

DEFAULT_SIZE = 256
ALLOWED_SIZES = (64, 128, 256, 512)


class ThumbnailStore:
    """JPEG thumbnails (longest side ``size``) beside the originals, written atomically."""

    def __init__(self, blobs: Blobs | Path, store: ImageStore, limits: ImageLimits) -> None:
        self.blobs = blobs if isinstance(blobs, Blobs) else FileBlobs(blobs)
        self.store = store
        self.limits = limits

    @staticmethod
    def key_for(image_id: str, size: int) -> str:
        """Where a thumbnail lives."""
        if not is_image_id(image_id):
            raise NotFound(f"not an image id: {image_id!r}")
        return f"{size}/{image_id[:2]}/{image_id}.jpg"

    def exists(self, image_id: str, size: int = DEFAULT_SIZE) -> bool:
        """True when the thumbnail has been made."""
        return self.blobs.exists(self.key_for(image_id, size))

    @staticmethod
    def render(image: Image.Image, size: int = DEFAULT_SIZE) -> bytes:
        """The JPEG thumbnail of a decoded image (nothing written)."""
        thumb = image.copy()
        thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        thumb.convert("RGB").save(buf, format="JPEG", quality=85, optimize=True)
        return buf.getvalue()

    def put(self, image_id: str, data: bytes, size: int = DEFAULT_SIZE) -> None:
        """Write thumbnail bytes that ``render`` made."""
        self.blobs.put(self.key_for(image_id, size), data)

    def make(self, image_id: str, image: Image.Image, size: int = DEFAULT_SIZE) -> bytes:
        """Write the thumbnail of an already decoded image; its bytes."""
        data = self.render(image, size)
        self.put(image_id, data, size)
        return data

    def get(self, image_id: str, size: int = DEFAULT_SIZE) -> bytes:
        """Thumbnail bytes, made from the original if missing.

        Raises:
            NotFound: unknown image or unsupported size.
        """
        if size not in ALLOWED_SIZES:
            raise NotFound(f"thumbnail size {size} not offered; use one of {ALLOWED_SIZES}")
        try:
            return self.blobs.get(self.key_for(image_id, size))
        except NotFound:
            decoded = decode_image(self.store.get(image_id), self.limits, min_side=size)
            return self.make(image_id, decoded.image, size)

    def discard(self, image_id: str, size: int = DEFAULT_SIZE) -> None:
        """Remove one size of an image's thumbnail, if there is one."""
        with contextlib.suppress(NotFound):
            self.blobs.delete(self.key_for(image_id, size))

    def delete(self, image_id: str) -> None:
        """Remove every size of an image's thumbnail."""
        for size in ALLOWED_SIZES:
            with contextlib.suppress(NotFound):
                self.blobs.delete(self.key_for(image_id, size))
