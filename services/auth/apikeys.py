"""API keys with scopes. Only a hash of each secret is stored; tokens are shown once.

Token format ``sl_<key id>_<secret>``: the id finds the record without scanning, the
secret (256 random bits) is compared by its sha256 in constant time. A fast hash is
right here: the secret is random, not a password, so there is nothing to brute-force.
"""

from __future__ import annotations

import abc
import builtins
import datetime as dt
import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.auth.principal import Principal, Scope
from services.errors import InvalidInput, NotFound


@dataclass(frozen=True)
class ApiKey:
    """A key's public facts (never its secret)."""

    id: str
    name: str
    scopes: frozenset[Scope]
    created_at: str
    revoked: bool = False

    def allows(self, scope: Scope) -> bool:
        """Whether this key may use an endpoint that needs ``scope``."""
        return not self.revoked and self.principal().allows(scope)

    def principal(self) -> Principal:
        """The caller this key acts as (a revoked key holds no scopes)."""
        return Principal(f"key:{self.name}", frozenset() if self.revoked else self.scopes)

    def as_dict(self) -> dict[str, Any]:
        """JSON form (no secret)."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(s.value for s in self.scopes),
            "created_at": self.created_at,
            "revoked": self.revoked,
        }


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _parse(token: str) -> tuple[str, str] | None:
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != "sl" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class KeyStore(abc.ABC):
    """Where key records live."""

    def create(self, name: str, scopes: Iterable[Scope]) -> tuple[ApiKey, str]:
        """A new key and its token (the only time the token exists in clear)."""
        key = ApiKey(
            id=secrets.token_hex(6),
            name=name,
            scopes=frozenset(scopes),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        if not key.scopes:
            raise InvalidInput("a key needs at least one scope")
        secret = secrets.token_urlsafe(32)
        self._save(key, _digest(secret))
        return key, f"sl_{key.id}_{secret}"

    def verify(self, token: str) -> ApiKey | None:
        """The key a token belongs to, or None (unknown, wrong secret or revoked)."""
        parsed = _parse(token)
        if parsed is None:
            return None
        found = self._load(parsed[0])
        if found is None:
            return None
        key, digest = found
        if not hmac.compare_digest(digest, _digest(parsed[1])) or key.revoked:
            return None
        return key

    @abc.abstractmethod
    def _save(self, key: ApiKey, digest: str) -> None: ...

    @abc.abstractmethod
    def _load(self, key_id: str) -> tuple[ApiKey, str] | None: ...

    def revoke(self, key_id: str) -> None:
        """Revoke a key (kept for the record); NotFound if unknown."""
        found = self._load(key_id)
        if found is None:
            raise NotFound(f"no API key {key_id!r}")
        key, digest = found
        self._save(ApiKey(key.id, key.name, key.scopes, key.created_at, True), digest)

    @abc.abstractmethod
    def list(self) -> list[ApiKey]:
        """Every key, revoked ones included."""

    def export(self) -> builtins.list[dict[str, Any]]:
        """Every key record with its secret's digest (for a backup: never a secret)."""
        rows = []
        for key in self.list():
            found = self._load(key.id)
            if found is not None:
                rows.append({"record": found[0].as_dict(), "digest": found[1]})
        return rows

    def restore(self, rows: Iterable[dict[str, Any]]) -> int:
        """Write exported records back (same id: replaced); the number written. Tokens
        issued before the backup work again, as their digests come back with them."""
        count = 0
        for row in rows:
            self._save(_key_from(row["record"]), str(row["digest"]))
            count += 1
        return count


def _key_from(record: dict[str, Any]) -> ApiKey:
    return ApiKey(
        id=record["id"],
        name=record["name"],
        scopes=frozenset(Scope(s) for s in record["scopes"]),
        created_at=record["created_at"],
        revoked=bool(record.get("revoked")),
    )


class SqliteKeyStore(KeyStore):
    """Keys in a SQLite file: single-machine deployments."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, record TEXT NOT NULL,"
                " digest TEXT NOT NULL)"
            )

    def _save(self, key: ApiKey, digest: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO api_keys VALUES (?, ?, ?)",
                (key.id, json.dumps(key.as_dict()), digest),
            )

    def _load(self, key_id: str) -> tuple[ApiKey, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT record, digest FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        return (_key_from(json.loads(row[0])), row[1]) if row else None

    def list(self) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM api_keys ORDER BY id").fetchall()
        return [_key_from(json.loads(r[0])) for r in rows]


class RedisKeyStore(KeyStore):
    """Keys in Redis: shared by every web process of a multi-machine deployment."""

    _PREFIX = "sightline:apikey:"

    def __init__(self, client: Any) -> None:
        self.r = client

    def _save(self, key: ApiKey, digest: str) -> None:
        self.r.hset(
            self._PREFIX + key.id, mapping={"record": json.dumps(key.as_dict()), "digest": digest}
        )

    def _load(self, key_id: str) -> tuple[ApiKey, str] | None:
        raw = self.r.hgetall(self._PREFIX + key_id)
        if not raw:
            return None
        data = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        return _key_from(json.loads(data["record"])), data["digest"]

    def list(self) -> list[ApiKey]:
        keys = []
        for name in sorted(self.r.scan_iter(match=self._PREFIX + "*")):
            found = self._load(
                (name.decode() if isinstance(name, bytes) else name)[len(self._PREFIX) :]
            )
            if found:
                keys.append(found[0])
        return keys
