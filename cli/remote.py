"""The CLI talking to a running Sightline over HTTP (remote mode).

With ``SIGHTLINE_URL`` and ``SIGHTLINE_API_KEY`` set, search, similar, tag, info,
ingest, job and taxonomy go through the service's API with that key: no model
is loaded here and no index is opened, so the CLI works beside a server that holds an
embedded index, from any machine, with the key's rights. Errors are the API's own
messages.
"""

from __future__ import annotations

import ipaddress
import mimetypes
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import typer

from services.search.service import SearchHit

URL_ENV = "SIGHTLINE_URL"
KEY_ENV = "SIGHTLINE_API_KEY"
TIMEOUT_S = 120.0


class RemoteError(Exception):
    """The service refused a request or could not be reached; the message says why."""


def _cleartext_to_another_host(url: str) -> bool:
    """True for ``http://`` to anything but this machine (a key sent there can be read)."""
    parsed = httpx.URL(url)
    if parsed.scheme != "http":
        return False
    host = parsed.host.strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


class Remote:
    """An API client for one service and key."""

    def __init__(self, url: str, key: str, transport: httpx.BaseTransport | None = None):
        self.base = url.rstrip("/")
        if _cleartext_to_another_host(self.base):
            typer.echo(
                f"warning: {URL_ENV} is plain http to another host: the API key crosses the "
                "network readable; use https",
                err=True,
            )
        self.http = httpx.Client(
            base_url=f"{self.base}/api/v1",
            headers={"Authorization": f"Bearer {key}"},
            timeout=TIMEOUT_S,
            transport=transport,
            follow_redirects=True,  # a proxy sending http to https, say
        )

    @classmethod
    def from_env(cls) -> Remote | None:
        """A client when both variables are set; None (local mode) otherwise.

        Raises:
            typer.BadParameter: only one of them is set.
        """
        url, key = os.environ.get(URL_ENV), os.environ.get(KEY_ENV)
        if not url and not key:
            return None
        if not (url and key):
            missing = KEY_ENV if url else URL_ENV
            raise typer.BadParameter(
                f"remote mode needs {URL_ENV} and {KEY_ENV}; {missing} is unset"
            )
        return cls(url, key)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of one request.

        Raises:
            RemoteError: an HTTP error (with the API's message) or no connection.
        """
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise RemoteError(f"cannot reach {self.base}: {e}") from e
        kind = response.headers.get("content-type", "")
        if not response.is_success:
            detail: Any = response.text[:200]
            if kind.startswith("application/json"):
                error = response.json().get("error")
                detail = error.get("message", error) if isinstance(error, dict) else error
            raise RemoteError(f"{response.status_code}: {detail}")
        if kind.startswith("application/json"):
            return response.json()
        if kind.startswith(("text/", "application/yaml")) and path.startswith("/taxonomy"):
            return response.text
        raise RemoteError(
            f"{self.base} did not answer as a Sightline service ({kind or 'no type'})"
        )

    def hits(self, path: str, params: dict[str, Any], **kwargs: Any) -> list[SearchHit]:
        """Ranked results as the local services return them."""
        method = "POST" if "files" in kwargs else "GET"
        data = self.call(method, path, params=params, **kwargs)
        for warning in data.get("warnings", []):
            typer.echo(f"warning: {warning}", err=True)
        return [SearchHit(h["image_id"], float(h["score"]), h["payload"]) for h in data["results"]]

    def upload(
        self,
        files: Sequence[Path],
        per_file: dict[str, dict[str, Any]],
        chunk: int = 64,
        max_bytes: int = 32 * 1024 * 1024,
    ) -> Iterator[dict[str, Any]]:
        """Upload files in requests of at most ``chunk`` files and ``max_bytes`` (under the
        service's request limits); one receipt per request. A request refused as a whole
        (every file in it invalid, say) becomes a receipt refusing its files, so the other
        requests' jobs are still reported."""
        import json

        for part in _batches(files, chunk, max_bytes):
            meta = {str(f): per_file[str(f)] for f in part if per_file.get(str(f))}
            handles = [
                ("files", (str(f), f.read_bytes(), mimetypes.guess_type(f.name)[0] or "image/*"))
                for f in part
            ]
            try:
                yield self.call(
                    "POST", "/images", files=handles, data={"per_file": json.dumps(meta)}
                )
            except RemoteError as e:
                refused = [{"filename": str(f), "message": str(e)} for f in part]
                yield {"job_id": None, "accepted": [], "refused": refused}


def _batches(files: Sequence[Path], chunk: int, max_bytes: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    size = 0
    for f in files:
        length = f.stat().st_size
        if batch and (len(batch) >= chunk or size + length > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += length
    if batch:
        yield batch
