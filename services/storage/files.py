"""Content-addressed image store on the filesystem.

Images live at ``root/ab/cd/<sha256>``: the same bytes uploaded twice are stored once,
and a write is atomic (temporary file, fsync, rename) so a crash leaves no partial file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from services.errors import NotFound, StorageUnavailable
from services.ids import is_image_id, sha256_hex


def storage_error(e: OSError, what: str) -> StorageUnavailable:
    """An OS error of the store as the transient failure it is (disk full, read-only file
    system, I/O error): retried with backoff, reported as such."""
    name = errno.errorcode.get(e.errno or 0, "error")
    return StorageUnavailable(f"cannot {what}: {name} ({e.strerror or e})")


def atomic_write(target: Path, data: bytes) -> None:
    """Write a file so readers see all of it or none of it (temp file, fsync, rename).

    Raises:
        StorageUnavailable: the file system refused (nothing partial is left behind).
    """
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise storage_error(e, f"write {target.name}") from e
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
        """The stored bytes, or NotFound (StorageUnavailable when the disk fails)."""
        try:
            return self.path_for(image_id).read_bytes()
        except FileNotFoundError as e:
            raise NotFound(f"image {image_id} is not stored") from e
        except OSError as e:
            raise storage_error(e, f"read image {image_id}") from e

    def exists(self, image_id: str) -> bool:
        """True when the image is stored."""
        return is_image_id(image_id) and self.path_for(image_id).is_file()

    def delete(self, image_id: str) -> bool:
        """Remove an image; False when it was not there."""
        try:
            self.path_for(image_id).unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise storage_error(e, f"delete image {image_id}") from e
        return True

    def check_writable(self) -> None:
        """Raise StorageUnavailable unless a file can be written here now (readiness)."""
        atomic_write(self.root / ".probe", b"ok")

    def ids(self) -> Iterator[str]:
        """Every stored image id (used by reconciliation)."""
        if not self.root.is_dir():
            return
        for path in self.root.glob("??/??/*"):
            if path.is_file() and is_image_id(path.name):
                yield path.name
