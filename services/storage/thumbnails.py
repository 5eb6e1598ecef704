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
from services.storage.files import ImageStore, atomic_write

DEFAULT_SIZE = 256
ALLOWED_SIZES = (64, 128, 256, 512)


class ThumbnailStore:
    """JPEG thumbnails (longest side ``size``) beside the originals, written atomically."""

    def __init__(self, root: Path, store: ImageStore, limits: ImageLimits) -> None:
        self.root = Path(root)
        self.store = store
        self.limits = limits

    def path_for(self, image_id: str, size: int) -> Path:
        """Where a thumbnail lives."""
        if not is_image_id(image_id):
            raise NotFound(f"not an image id: {image_id!r}")
        return self.root / str(size) / image_id[:2] / f"{image_id}.jpg"

    def make(self, image_id: str, image: Image.Image, size: int = DEFAULT_SIZE) -> Path:
        """Write the thumbnail of an already decoded image."""
        target = self.path_for(image_id, size)
        if target.exists():
            return target
        thumb = image.copy()
        thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        thumb.convert("RGB").save(buf, format="JPEG", quality=85, optimize=True)
        atomic_write(target, buf.getvalue())
        return target

    def get(self, image_id: str, size: int = DEFAULT_SIZE) -> bytes:
        """Thumbnail bytes, made from the original if missing.

        Raises:
            NotFound: unknown image or unsupported size.
        """
        if size not in ALLOWED_SIZES:
            raise NotFound(f"thumbnail size {size} not offered; use one of {ALLOWED_SIZES}")
        path = self.path_for(image_id, size)
        if not path.exists():
            decoded = decode_image(self.store.get(image_id), self.limits, min_side=size)
            self.make(image_id, decoded.image, size)
        return path.read_bytes()

    def delete(self, image_id: str) -> None:
        """Remove every size of an image's thumbnail."""
        for size in ALLOWED_SIZES:
            with contextlib.suppress(FileNotFoundError, NotFound):
                self.path_for(image_id, size).unlink()
