"""An append-only record of every change to the catalog: who did what to which item, when,
and why.

Services write it (not the interfaces), so an upload, a delete, a taxonomy change or a
review decision leaves the same record whether the API, the dashboard or the CLI made
it. Trust-and-safety decisions must be explainable later, so every entry is written
before the call that made the change returns, and nothing here updates or deletes one.
SQLite (WAL, synchronous FULL) in the embedded deployment; a Redis stream, shared by
every process, with a broker.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.errors import BrokerUnavailable, InvalidInput, StorageUnavailable


@dataclass(frozen=True)
class AuditEvent:
    """One decision or automatic action."""

    id: str
    at: str
    actor: str
    action: str
    target: str
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the API."""
        return asdict(self)


Entry = tuple[str, str | None, Mapping[str, Any] | None]


def _details(details: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(details or {}), sort_keys=True, default=str)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class AuditLog(abc.ABC):
    """Append and read back, newest first."""

    @abc.abstractmethod
    def record(
        self,
        actor: str,
        action: str,
        target: str,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """Append one event durably and return it."""

    @abc.abstractmethod
    def record_many(self, actor: str, action: str, entries: Sequence[Entry]) -> None:
        """Append one event per ``(target, reason, details)`` in one durable write."""

    @abc.abstractmethod
    def list(
        self,
        limit: int = 100,
        target: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        before: str | None = None,
    ) -> list[AuditEvent]:
        """The newest events, newest first: optionally about one target, by one actor, of
        actions starting with ``action`` (``flag.`` for every flag change), older than the
        event id ``before`` (the last id of the previous page).

        Raises:
            InvalidInput: ``before`` is not an id this log gave.
        """

    @abc.abstractmethod
    def events(self) -> Iterator[AuditEvent]:
        """Every event, oldest first (a backup reads the whole log)."""

    @abc.abstractmethod
    def replay(self, events: Sequence[AuditEvent]) -> None:
        """Append events as they were recorded elsewhere (their time, actor and reason
        kept; ids are this log's own), in one durable write: how a restore brings a
        log back without rewriting history."""


@contextlib.contextmanager
def _sqlite_errors() -> Iterator[None]:
    """A database that cannot be written (disk full, read-only) is a transient failure."""
    try:
        yield
    except sqlite3.OperationalError as e:
        raise StorageUnavailable(f"cannot write the audit log: {e}") from e


class SqliteAuditLog(AuditLog):
    """A SQLite file beside the data."""

    _INSERT = (
        "INSERT INTO audit (at, actor, action, target, reason, details) VALUES (?, ?, ?, ?, ?, ?)"
    )

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, "
                "target TEXT NOT NULL, reason TEXT, details TEXT NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS audit_target ON audit (target)")

    def record(
        self,
        actor: str,
        action: str,
        target: str,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        at = _now()
        body = _details(details)
        with self._lock, _sqlite_errors():
            cur = self._db.execute(self._INSERT, (at, actor, action, target, reason, body))
        return AuditEvent(str(cur.lastrowid), at, actor, action, target, reason, json.loads(body))

    def _insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows in one transaction: all of them are recorded, or none."""
        if not rows:
            return
        with self._lock, _sqlite_errors():
            self._db.execute("BEGIN")
            try:
                self._db.executemany(self._INSERT, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def record_many(self, actor: str, action: str, entries: Sequence[Entry]) -> None:
        at = _now()
        self._insert([(at, actor, action, t, r, _details(d)) for t, r, d in entries])

    def events(self) -> Iterator[AuditEvent]:
        last = 0
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, at, actor, action, target, reason, details FROM audit "
                    "WHERE id > ? ORDER BY id LIMIT 1000",
                    (last,),
                ).fetchall()
            if not rows:
                return
            for r in rows:
                yield AuditEvent(str(r[0]), r[1], r[2], r[3], r[4], r[5], json.loads(r[6]))
            last = rows[-1][0]

    def replay(self, events: Sequence[AuditEvent]) -> None:
        self._insert(
            [(e.at, e.actor, e.action, e.target, e.reason, _details(e.details)) for e in events]
        )

    def list(
        self,
        limit: int = 100,
        target: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        before: str | None = None,
    ) -> list[AuditEvent]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("target", target), ("actor", actor)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if action:  # a prefix: substr avoids LIKE's wildcards in the value
            where.append("substr(action, 1, ?) = ?")
            args += [len(action), action]
        if before is not None:
            if not (before.isascii() and before.isdigit() and len(before) < 19):
                raise InvalidInput(f"before: {before!r} is not an audit event id")
            where.append("id < ?")
            args.append(int(before))
        query = "SELECT id, at, actor, action, target, reason, details FROM audit"
        if where:
            query += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [AuditEvent(str(r[0]), r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]


class RedisAuditLog(AuditLog):
    """A Redis stream (never trimmed); run Redis with AOF persistence in production."""

    def __init__(self, client: Any, key: str = "sightline:audit") -> None:
        self.r = client
        self.key = key

    def record(
        self,
        actor: str,
        action: str,
        target: str,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        import redis

        fields = self._fields(actor, action, target, reason, details)
        try:
            event_id = self.r.xadd(self.key, fields)
        except redis.RedisError as e:
            raise BrokerUnavailable(f"cannot write the audit log: {e}") from e
        return self._event(event_id, fields)

    def record_many(self, actor: str, action: str, entries: Sequence[Entry]) -> None:
        import redis

        if not entries:
            return
        pipe = self.r.pipeline(transaction=True)
        for target, reason, details in entries:
            pipe.xadd(self.key, self._fields(actor, action, target, reason, details))
        try:
            pipe.execute()
        except redis.RedisError as e:
            raise BrokerUnavailable(f"cannot write the audit log: {e}") from e

    def events(self) -> Iterator[AuditEvent]:
        start = "-"
        while True:
            page = self.r.xrange(self.key, min=start, max="+", count=1000)
            if not page:
                return
            for event_id, f in page:
                yield self._event(event_id, f)
            last = page[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))

    def replay(self, events: Sequence[AuditEvent]) -> None:
        import redis

        if not events:
            return
        pipe = self.r.pipeline(transaction=True)
        for event in events:
            fields = self._fields(
                event.actor, event.action, event.target, event.reason, event.details
            )
            pipe.xadd(self.key, {**fields, "at": event.at})
        try:
            pipe.execute()
        except redis.RedisError as e:
            raise BrokerUnavailable(f"cannot write the audit log: {e}") from e

    @staticmethod
    def _fields(
        actor: str,
        action: str,
        target: str,
        reason: str | None,
        details: Mapping[str, Any] | None,
    ) -> dict[str, str]:
        return {
            "at": _now(),
            "actor": actor,
            "action": action,
            "target": target,
            "reason": reason or "",
            "details": _details(details),
        }

    @staticmethod
    def _event(event_id: Any, f: Mapping[Any, Any]) -> AuditEvent:
        def text(v: Any) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        g = {text(k): text(v) for k, v in f.items()}
        return AuditEvent(
            text(event_id),
            g["at"],
            g["actor"],
            g["action"],
            g["target"],
            g["reason"] or None,
            json.loads(g["details"]),
        )

    def list(
        self,
        limit: int = 100,
        target: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        before: str | None = None,
    ) -> list[AuditEvent]:
        out: list[AuditEvent] = []
        end = "+"
        if before is not None:
            ms, dash, seq = before.partition("-")
            if not (dash and ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
                raise InvalidInput(f"before: {before!r} is not an audit event id")
            end = "(" + before
        while len(out) < limit:
            page = self.r.xrevrange(self.key, max=end, min="-", count=500)
            if not page:
                break
            for event_id, f in page:
                event = self._event(event_id, f)
                if (
                    (target is None or event.target == target)
                    and (actor is None or event.actor == actor)
                    and (not action or event.action.startswith(action))
                ):
                    out.append(event)
            last = page[-1][0]
            end = "(" + (last.decode() if isinstance(last, bytes) else str(last))
            if len(page) < 500:
                break
        return out[:limit]
