"""Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, GCS's XML API).

The boto3 client is built once by the composition root and passed in. Transport and
server errors (5xx, throttling, connection failures) are ``StorageUnavailable``, retried
by the pipeline like a full disk; a missing key is ``NotFound``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from services.errors import NotFound, StorageUnavailable
from services.storage.blobs import Blobs

_MISSING = {"NoSuchKey", "404", "NotFound"}


def _unavailable(e: Exception, what: str) -> StorageUnavailable:
    return StorageUnavailable(f"cannot {what} in object storage: {e}")


class S3Blobs(Blobs):
    """Blobs as objects under ``prefix`` in ``bucket``."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise NotFound(f"not a storage key: {key!r}")
        return self.prefix + key

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (BotoCoreError, ClientError) as e:
            raise _unavailable(e, f"write {key}") from e

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(response["Body"].read())
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _MISSING:
                raise NotFound(f"{key} is not stored") from e
            raise _unavailable(e, f"read {key}") from e
        except BotoCoreError as e:
            raise _unavailable(e, f"read {key}") from e

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _MISSING:
                return False
            raise _unavailable(e, f"look up {key}") from e
        except BotoCoreError as e:
            raise _unavailable(e, f"look up {key}") from e
        return True

    def delete(self, key: str) -> bool:
        # S3 deletes are idempotent and say nothing of what was there: ask first.
        if not self.exists(key):
            return False
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as e:
            raise _unavailable(e, f"delete {key}") from e
        return True

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    key = str(item["Key"])[len(self.prefix) :]
                    if not key.rsplit("/", 1)[-1].startswith("."):
                        yield key
        except (BotoCoreError, ClientError) as e:
            raise _unavailable(e, "list keys") from e
