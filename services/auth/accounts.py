"""Dashboard accounts: usernames with scrypt-hashed passwords.

Passwords are hashed with the standard library's scrypt (memory-hard, per-user salt) and
compared in constant time; the plain password is never stored or logged. Accounts live
beside the API keys: Redis with a broker, else a SQLite file.
"""

from __future__ import annotations

import abc
import base64
import datetime as dt
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.auth.principal import Role
from services.errors import Conflict, InvalidAccount, NotFound

_N, _R, _P = 2**14, 8, 1
_USERNAME = re.compile(r"[A-Za-z0-9_.@-]{2,64}")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
MAX_SESSIONS = 20


@dataclass(frozen=True)
class Account:
    """A dashboard user and their role."""

    username: str
    created_at: str
    role: Role = Role.ADMIN

    def as_dict(self) -> dict[str, str]:
        return {"username": self.username, "created_at": self.created_at, "role": self.role}


def _role(record: dict[str, Any]) -> Role:
    """Accounts made before roles existed were all admins, and stay so."""
    return Role(record.get("role", Role.ADMIN.value))


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$digest``, all that is needed to verify later."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of a password against ``hash_password``'s output."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


class AccountStore(abc.ABC):
    """Create and check dashboard accounts, and the sessions each one has open.

    A session is a random nonce kept in the account record and in the signed cookie; the
    cookie is honoured only while its nonce is in the record, so logging out (or changing
    the password) ends a session even if the cookie was copied.
    """

    @abc.abstractmethod
    def _save(self, username: str, record: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def _load(self, username: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def usernames(self) -> list[str]:
        """Every account name."""

    @abc.abstractmethod
    def _delete(self, username: str) -> bool: ...

    def get(self, username: str) -> Account | None:
        """One account, or None."""
        record = self._load(username)
        return None if record is None else Account(username, record["created_at"], _role(record))

    def all(self) -> list[Account]:
        """Every account with its role, by name."""
        return [a for a in map(self.get, self.usernames()) if a is not None]

    def set_role(self, username: str, role: Role) -> Account:
        """Change an account's role; its open sessions see the new role at once.

        Raises:
            NotFound: no such account.
            Conflict: it would leave no admin.
        """
        record = self._load(username)
        if record is None:
            raise NotFound(f"no account {username!r}")
        if role is not Role.ADMIN and _role(record) is Role.ADMIN:
            self._keep_an_admin(username)
        record["role"] = role.value
        self._save(username, record)
        return Account(username, record["created_at"], role)

    def delete(self, username: str) -> None:
        """Remove an account (its sessions end with it).

        Raises:
            NotFound: no such account.
            Conflict: it is the last admin.
        """
        account = self.get(username)
        if account is None:
            raise NotFound(f"no account {username!r}")
        if account.role is Role.ADMIN:
            self._keep_an_admin(username)
        self._delete(username)

    def _keep_an_admin(self, leaving: str) -> None:
        if not any(a.role is Role.ADMIN for a in self.all() if a.username != leaving):
            raise Conflict(f"{leaving!r} is the last admin; make another admin first")

    def export(self) -> dict[str, dict[str, Any]]:
        """Every account's record (password hash, no sessions), for a backup."""
        out = {}
        for username in self.usernames():
            record = self._load(username)
            if record is not None:
                out[username] = {k: v for k, v in record.items() if k != "sessions"}
        return out

    def restore(self, records: dict[str, dict[str, Any]]) -> int:
        """Write exported accounts back (same name: replaced, its sessions ended)."""
        for username, record in records.items():
            self._save(username, {k: v for k, v in record.items() if k != "sessions"})
        return len(records)

    def create(self, username: str, password: str, role: Role | None = None) -> Account:
        """Create or reset an account (a reset ends its sessions; its role stays unless
        one is given). New accounts are admins unless a role is given.

        Raises:
            InvalidAccount: a bad username or a short password.
        """
        if not _USERNAME.fullmatch(username):
            raise InvalidAccount("usernames are 2-64 letters, digits, or . _ @ -")
        _check_password(password)
        existing = self._load(username)
        demoted = role is not None and role is not Role.ADMIN
        if existing is not None and demoted and _role(existing) is Role.ADMIN:
            self._keep_an_admin(username)
        role = role or (_role(existing) if existing is not None else Role.ADMIN)
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        record = {"hash": hash_password(password), "created_at": created, "role": role.value}
        self._save(username, record)
        return Account(username, created, role)

    def authenticate(self, username: str, password: str) -> Account | None:
        """The account if the password is right, else None: one scrypt either way, so
        the time taken does not tell whether the username exists."""
        record = self._load(username)
        if record is None:
            verify_password(password, self._dummy_hash)
            return None
        ok = verify_password(password, record["hash"])
        return Account(username, record["created_at"], _role(record)) if ok else None

    @functools.cached_property
    def _dummy_hash(self) -> str:
        """A hash to check unknown usernames against (made once per store)."""
        return hash_password(secrets.token_hex(16))

    def open_session(self, username: str) -> str:
        """A new session nonce for an authenticated user (the newest few are kept)."""
        record = self._load(username)
        if record is None:
            raise InvalidAccount(f"no account {username!r}")
        nonce = secrets.token_urlsafe(24)
        record["sessions"] = [*record.get("sessions", []), nonce][-MAX_SESSIONS:]
        self._save(username, record)
        return nonce

    def session_role(self, username: str, nonce: str) -> Role | None:
        """The account's role while this session is open, else None."""
        record = self._load(username)
        if record is None or not any(
            hmac.compare_digest(nonce, n) for n in record.get("sessions", [])
        ):
            return None
        return _role(record)

    def close_session(self, username: str, nonce: str) -> None:
        """End one session (logout)."""
        record = self._load(username)
        if record is not None:
            record["sessions"] = [n for n in record.get("sessions", []) if n != nonce]
            self._save(username, record)

    def change_password(self, username: str, old: str, new: str) -> str:
        """Set a new password and end every session; returns a session for the caller.

        Raises:
            InvalidAccount: the old password is wrong or the new one too short.
        """
        if self.authenticate(username, old) is None:
            raise InvalidAccount("the current password is wrong")
        _check_password(new)
        record = self._load(username)
        assert record is not None  # authenticated above
        record.update(hash=hash_password(new), sessions=[])
        self._save(username, record)
        return self.open_session(username)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidAccount(f"passwords need at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidAccount(f"passwords have at most {MAX_PASSWORD} characters")


class SqliteAccountStore(AccountStore):
    """Accounts in a SQLite file (the embedded deployment)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS accounts (username TEXT PRIMARY KEY, record TEXT)"
            )

    def _save(self, username: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO accounts VALUES (?, ?)", (username, json.dumps(record))
            )

    def _load(self, username: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM accounts WHERE username = ?", (username,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def usernames(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT username FROM accounts ORDER BY 1")]

    def _delete(self, username: str) -> bool:
        with self._lock:
            return (
                self._db.execute("DELETE FROM accounts WHERE username = ?", (username,)).rowcount
                > 0
            )


class RedisAccountStore(AccountStore):
    """Accounts in a Redis hash shared by every web process."""

    def __init__(self, client: Any, key: str = "sightline:accounts") -> None:
        self.r = client
        self.key = key

    def _save(self, username: str, record: dict[str, Any]) -> None:
        self.r.hset(self.key, username, json.dumps(record))

    def _load(self, username: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.key, username)
        return json.loads(raw) if raw else None

    def usernames(self) -> list[str]:
        return sorted(k.decode() if isinstance(k, bytes) else k for k in self.r.hkeys(self.key))

    def _delete(self, username: str) -> bool:
        return bool(self.r.hdel(self.key, username))
