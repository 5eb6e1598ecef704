"""The backup format: files under one name in a blob store, listed with their checksums in
a manifest that is written last.

A backup is a folder of plain files (JSON, gzipped JSON lines, ``.npy`` arrays) so that
it can be read, copied and checked with ordinary tools, and restored into any deployment:
the vectors are dumped point by point, not as an engine's own files, so a backup of an
embedded index restores into a Qdrant cluster and back. A backup whose manifest is
missing was cut short and is never restored; one whose files do not match the manifest's
checksums is refused before anything is changed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.errors import InvalidBackup, InvalidInput, NotFound
from services.storage.blobs import Blobs

FORMAT = 1
MANIFEST = "manifest.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(name: str) -> str:
    """A backup name is one path segment of letters, digits and ``._-``."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidInput(f"{name!r} is not a backup name (letters, digits, . _ -)")
    return name


def jsonl_gz(rows: Iterable[Any]) -> bytes:
    """Rows as gzipped JSON lines (deterministic: no timestamp in the gzip header)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    return buf.getvalue()


def read_jsonl_gz(data: bytes) -> list[Any]:
    """The rows of a gzipped JSON-lines file."""
    return [json.loads(line) for line in gzip.decompress(data).splitlines() if line]


def npy(array: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def read_npy(data: bytes) -> np.ndarray:
    """The array in ``.npy`` bytes (never unpickles)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


@dataclass
class Manifest:
    """What a backup holds: every file with its sha256 and size, and a summary."""

    name: str
    created_at: str
    summary: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = FORMAT

    def as_dict(self) -> dict[str, Any]:
        """JSON form, as written."""
        return {
            "format": self.format,
            "name": self.name,
            "created_at": self.created_at,
            "summary": self.summary,
            "files": self.files,
        }

    @property
    def size(self) -> int:
        """Bytes of every file together."""
        return sum(int(f["bytes"]) for f in self.files.values())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Parse a manifest.

        Raises:
            InvalidBackup: from a newer format, or not a manifest.
        """
        try:
            fmt = int(data["format"])
            if fmt > FORMAT:
                raise InvalidBackup(
                    f"backup {data.get('name')!r} has format {fmt}; this Sightline reads "
                    f"up to {FORMAT}: restore it with a newer release"
                )
            return cls(
                name=str(data["name"]),
                created_at=str(data["created_at"]),
                summary=dict(data["summary"]),
                files={str(k): dict(v) for k, v in data["files"].items()},
                format=fmt,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InvalidBackup(f"not a Sightline backup manifest: {e}") from e


class BackupWriter:
    """Writes one backup's files, then its manifest (a backup appears only complete)."""

    def __init__(self, blobs: Blobs, name: str, created_at: str) -> None:
        self.blobs = blobs
        self.manifest = Manifest(check_name(name), created_at)
        if blobs.exists(f"{name}/{MANIFEST}"):
            raise InvalidInput(f"a backup named {name!r} exists already")

    def put(self, path: str, data: bytes) -> None:
        """Write one file of the backup and note its checksum."""
        self.blobs.put(f"{self.manifest.name}/{path}", data)
        self.manifest.files[path] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }

    def put_json(self, path: str, value: Any) -> None:
        """Write a JSON file."""
        self.put(path, json.dumps(value, sort_keys=True, indent=1).encode())

    def finish(self, summary: dict[str, Any]) -> Manifest:
        """Write the manifest: from now on the backup is listed and can be restored."""
        self.manifest.summary = summary
        data = json.dumps(self.manifest.as_dict(), sort_keys=True, indent=1).encode()
        self.blobs.put(f"{self.manifest.name}/{MANIFEST}", data)
        return self.manifest


class BackupReader:
    """Reads one complete backup, every file checked against the manifest."""

    def __init__(self, blobs: Blobs, name: str) -> None:
        self.blobs = blobs
        self.name = check_name(name)
        try:
            raw = blobs.get(f"{name}/{MANIFEST}")
        except NotFound as e:
            partial = next(iter(blobs.list_keys(f"{name}/")), None) is not None
            why = "it has no manifest (cut short?)" if partial else "no such backup"
            raise NotFound(f"backup {name!r}: {why}") from e
        try:
            self.manifest = Manifest.from_dict(json.loads(raw))
        except json.JSONDecodeError as e:
            raise InvalidBackup(f"backup {name!r}: the manifest is not JSON: {e}") from e

    def get(self, path: str) -> bytes:
        """One file's bytes, verified.

        Raises:
            InvalidBackup: the file is missing from the manifest or the store, or damaged.
        """
        expected = self.manifest.files.get(path)
        if expected is None:
            raise InvalidBackup(f"backup {self.name!r} lists no file {path!r}")
        try:
            data = self.blobs.get(f"{self.name}/{path}")
        except NotFound as e:
            raise InvalidBackup(f"backup {self.name!r} is missing {path}") from e
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise InvalidBackup(f"backup {self.name!r}: {path} is damaged (checksum differs)")
        return data

    def get_json(self, path: str) -> Any:
        """A JSON file, verified."""
        return json.loads(self.get(path))

    def verify(self) -> int:
        """Check every file; the number of bytes read.

        Raises:
            InvalidBackup: the first missing or damaged file.
        """
        return sum(len(self.get(path)) for path in sorted(self.manifest.files))


def list_manifests(blobs: Blobs) -> Iterator[Manifest | str]:
    """Every backup in a store, newest name last: its manifest, or its name alone when the
    manifest is missing or unreadable (an incomplete backup)."""
    names = sorted({key.split("/", 1)[0] for key in blobs.list_keys() if "/" in key})
    for name in names:
        try:
            yield BackupReader(blobs, name).manifest
        except (NotFound, InvalidInput):
            yield name
