"""Content-addressed image store on the filesystem.

Images live at ``root/ab/cd/<sha256>``: the same bytes uploaded twice are stored once,
and a write is atomic (temporary file, fsync, rename) so a crash leaves no partial file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from services.errors import NotFound
from services.ids import is_image_id, sha256_hex


def atomic_write(target: Path, data: bytes) -> None:
    """Write a file so readers see all of it or none of it (temp file, fsync, rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class ImageStore:
    """Stores original image bytes by their sha256."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, image_id: str) -> Path:
        """Where an image id lives (whether or not it is stored)."""
        if not is_image_id(image_id):
            raise NotFound(f"not an image id: {image_id!r}")
        return self.root / image_id[:2] / image_id[2:4] / image_id

    def put(self, data: bytes) -> str:
        """Store bytes (once) and return their image id."""
        image_id = sha256_hex(data)
        target = self.path_for(image_id)
        if target.exists():
            return image_id
        atomic_write(target, data)
        return image_id

    def get(self, image_id: str) -> bytes:
        """The stored bytes, or NotFound."""
        try:
            return self.path_for(image_id).read_bytes()
        except FileNotFoundError as e:
            raise NotFound(f"image {image_id} is not stored") from e

    def exists(self, image_id: str) -> bool:
        """True when the image is stored."""
        return is_image_id(image_id) and self.path_for(image_id).is_file()

    def delete(self, image_id: str) -> bool:
        """Remove an image; False when it was not there."""
        try:
            self.path_for(image_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def ids(self) -> Iterator[str]:
        """Every stored image id (used by reconciliation)."""
        if not self.root.is_dir():
            return
        for path in self.root.glob("??/??/*"):
            if path.is_file() and is_image_id(path.name):
                yield path.name
