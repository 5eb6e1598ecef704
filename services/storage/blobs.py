"""Where stored bytes live: a local directory or an S3-compatible bucket.

Originals, thumbnails and flagged originals are blobs under keys. On one machine a
directory is enough; with workers on several machines every process must read what the
API stored (events carry ids, not bytes), which is what object storage gives a cluster.
Both adapters pass one contract test suite (``tests/test_blob_store.py``). A write is
all-or-nothing in both: a temporary file renamed into place, or one S3 PUT.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from services.errors import NotFound, StorageUnavailable


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


class Blobs(abc.ABC):
    """Bytes by key ('/'-separated, no leading slash)."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store bytes under a key, all or nothing.

        Raises:
            StorageUnavailable: the store refused (retry later).
        """

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes under a key.

        Raises:
            NotFound: nothing is stored there.
            StorageUnavailable: the store cannot be read now.
        """

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """True when something is stored under the key."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove a key; False when it was not there."""

    @abc.abstractmethod
    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with ``prefix``."""

    def check_writable(self) -> None:
        """Raise StorageUnavailable unless a write succeeds now (readiness)."""
        self.put(".probe", b"ok")


class FileBlobs(Blobs):
    """Blobs as files under a directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise NotFound(f"not a storage key: {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes) -> None:
        atomic_write(self._path(key), data)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as e:
            raise NotFound(f"{key} is not stored") from e
        except OSError as e:
            raise storage_error(e, f"read {key}") from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise storage_error(e, f"delete {key}") from e
        return True

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        folder, _, _ = prefix.rpartition("/")
        start = self._path(folder) if folder else self.root
        if not start.is_dir():
            return
        for path in start.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key
