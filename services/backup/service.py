"""Backups of a whole deployment, and restores from them.

What a backup holds:

- every Sightline collection (images, labels, flagged, and collections of other models
  left by a re-embed), dumped point by point: id, payload and vector, with the model
  identity the collection records, and the active prefix;
- the taxonomy document, API keys (digests, never secrets), dashboard accounts
  (password hashes) and the whole audit log;
- the image store's manifest (every stored original's id, and the flagged originals'),
  and with ``images=True`` the originals themselves.

Thumbnails are left out: they are made again from the originals on first request.

Consistency: the embedded index admits one process, so a backup taken through it sees no
concurrent writes. Against a Qdrant server, ingestion may go on while collections are
read page by page; a point written meanwhile may be missing from the dump, and after a
restore ``sightline reconcile`` re-queues every stored original the index lacks (point
ids come from content, so the result is the same catalog).

Restoring into a deployment whose collections hold points is refused unless
``replace=True``; keys and accounts are merged (the backup's records win), and the
audit log is merged too: events already present are kept once, nothing is deleted.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.audit import AuditEvent, AuditLog
from services.auth.accounts import AccountStore
from services.auth.apikeys import KeyStore
from services.auth.principal import Principal, Scope
from services.backup.archive import (
    BackupReader,
    BackupWriter,
    Manifest,
    jsonl_gz,
    list_manifests,
    npy,
    read_jsonl_gz,
    read_npy,
)
from services.encoder import ModelIdentity
from services.errors import Conflict, InvalidBackup
from services.index.base import PointData, VectorIndex, identity_from_dict
from services.storage.blobs import Blobs
from services.storage.files import ImageStore
from services.tagging.labels import TaxonomyStore
from services.tagging.taxonomy import taxonomy_from_data

log = logging.getLogger(__name__)
CHUNK_POINTS = 2000  # points per file: 4 MB of 512-d float32 vectors
UPSERT_BATCH = 256
AREAS = ("images", "flagged")  # the image stores a backup lists (and may copy)


@dataclass(frozen=True)
class Stores:
    """Everything outside the index that a backup reads and a restore writes."""

    images: ImageStore
    flagged_originals: ImageStore
    taxonomy: TaxonomyStore
    keys: KeyStore
    accounts: AccountStore
    audit: AuditLog


@dataclass
class RestoreReport:
    """What a restore wrote, and what it could not find."""

    name: str
    collections: dict[str, int] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)  # collection -> model it was built with
    keys: int = 0
    accounts: int = 0
    audit_events_added: int = 0
    images_copied: int = 0
    missing_originals: dict[str, int] = field(default_factory=dict)
    taxonomy: bool = False
    active_prefix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "collections": self.collections,
            "models": self.models,
            "keys": self.keys,
            "accounts": self.accounts,
            "audit_events_added": self.audit_events_added,
            "images_copied": self.images_copied,
            "missing_originals": self.missing_originals,
            "taxonomy": self.taxonomy,
            "active_prefix": self.active_prefix,
        }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fingerprint(e: AuditEvent) -> tuple[str, str, str, str, str | None]:
    return (e.at, e.actor, e.action, e.target, e.reason)


class BackupService:
    """Creates, lists and restores backups kept in a blob store (a folder, or the
    deployment's bucket under ``backups/``)."""

    def __init__(
        self,
        index: VectorIndex,
        stores: Stores,
        backups: Blobs,
    ) -> None:
        self.index = index
        self.stores = stores
        self.backups = backups

    def at(self, blobs: Blobs) -> BackupService:
        """The same service over another place to keep backups (``--dest DIR``)."""
        return BackupService(self.index, self.stores, blobs)

    # -- create ----------------------------------------------------------------------------

    def _collections(self) -> dict[str, ModelIdentity]:
        """Sightline's collections: those that record a model identity."""
        found = {}
        for name in self.index.list_collections():
            identity = self.index.collection_identity(name)
            if identity is not None and identity.model_id != "<unrecorded>":
                found[name] = identity
        return found

    def _dump_collection(self, writer: BackupWriter, name: str) -> dict[str, Any]:
        offset: str | None = None
        chunks = points = 0
        while True:
            records, offset = self.index.scroll(
                name, limit=CHUNK_POINTS, offset=offset, with_vectors=True
            )
            if records:
                rows = [{"id": r.id, "payload": r.payload} for r in records]
                vectors = np.stack([np.asarray(r.vector, dtype=np.float32) for r in records])
                writer.put(f"collections/{name}/{chunks:06d}.jsonl.gz", jsonl_gz(rows))
                writer.put(f"collections/{name}/{chunks:06d}.npy", npy(vectors))
                chunks += 1
                points += len(records)
            if offset is None:
                return {"points": points, "chunks": chunks}

    def create(
        self,
        caller: Principal,
        name: str | None = None,
        images: bool = False,
        engine_snapshots: bool = False,
        progress: Callable[[str], None] = lambda _: None,
    ) -> Manifest:
        """Take a backup; its manifest.

        ``images``: copy the originals too (single-box deployments; with object storage,
        bucket versioning or replication keeps them better). ``engine_snapshots``: also
        have a Qdrant server snapshot each collection on its own storage.

        Raises:
            InvalidInput: a bad or taken name.
            IndexUnavailable: ``engine_snapshots`` where the index takes none.
        """
        caller.require(Scope.ADMIN)
        started = _now()
        name = name or started.strftime("%Y%m%dT%H%M%SZ")
        writer = BackupWriter(self.backups, name, started.isoformat(timespec="seconds"))
        found = self._collections()
        # First, so that an index without them fails the backup before anything is written.
        snapshots = {c: self.index.snapshot(c) for c in found} if engine_snapshots else {}
        collections: dict[str, Any] = {}
        for coll, identity in found.items():
            progress(f"collection {coll}")
            facts = self._dump_collection(writer, coll)
            collections[coll] = {"identity": identity.as_dict(), **facts}
            if coll in snapshots:
                collections[coll]["engine_snapshot"] = snapshots[coll]
        stores = self.stores
        taxonomy = stores.taxonomy.get()
        if taxonomy is not None:
            writer.put_json("taxonomy.json", taxonomy.model_dump(mode="json"))
        keys = stores.keys.export()
        writer.put_json("keys.json", keys)
        accounts = stores.accounts.export()
        writer.put_json("accounts.json", accounts)
        progress("audit log")
        events = [e.as_dict() for e in stores.audit.events()]
        writer.put("audit.jsonl.gz", jsonl_gz(events))
        originals: dict[str, int] = {}
        for area, store in zip(AREAS, (stores.images, stores.flagged_originals), strict=True):
            progress(f"{area} manifest")
            ids = sorted(store.ids())
            writer.put(f"{area}.jsonl.gz", jsonl_gz(ids))
            originals[area] = len(ids)
            if images:
                for image_id in ids:
                    writer.put(f"blobs/{area}/{store.key_for(image_id)}", store.get(image_id))
        summary = {
            "collections": collections,
            "active_prefix": self.index.active_prefix(),
            "taxonomy": taxonomy is not None,
            "keys": len(keys),
            "accounts": len(accounts),
            "audit_events": len(events),
            "originals": originals,
            "includes_images": images,
            "seconds": round((_now() - started).total_seconds(), 1),
        }
        manifest = writer.finish(summary)
        details = {k: v for k, v in summary.items() if k != "collections"}
        stores.audit.record(caller.name, "backup.create", name, None, details)
        return manifest

    def manifests(self, caller: Principal) -> list[Manifest | str]:
        """Every backup here, oldest first; an incomplete one appears as its name alone."""
        caller.require(Scope.ADMIN)
        return list(list_manifests(self.backups))

    # -- restore ---------------------------------------------------------------------------

    def _occupied(self, names: list[str]) -> list[str]:
        present = set(self.index.list_collections())
        return [n for n in names if n in present and self.index.count(n) > 0]

    def _load_collection(self, reader: BackupReader, name: str, facts: dict[str, Any]) -> int:
        identity = identity_from_dict(facts.get("identity"))
        if identity is None:
            raise InvalidBackup(f"backup {reader.name!r}: collection {name!r} has no identity")
        self.index.drop_collection(name)
        self.index.ensure_collection(name, identity)
        written = 0
        for chunk in range(int(facts["chunks"])):
            rows = read_jsonl_gz(reader.get(f"collections/{name}/{chunk:06d}.jsonl.gz"))
            vectors = read_npy(reader.get(f"collections/{name}/{chunk:06d}.npy"))
            if len(rows) != len(vectors) or vectors.shape[1:] != (identity.size,):
                raise InvalidBackup(f"backup {reader.name!r}: chunk {chunk} of {name} is uneven")
            points = [
                PointData(str(row["id"]), vectors[i], dict(row["payload"]))
                for i, row in enumerate(rows)
            ]
            for start in range(0, len(points), UPSERT_BATCH):
                self.index.upsert(name, points[start : start + UPSERT_BATCH])
            written += len(points)
        return written

    def _merge_audit(self, reader: BackupReader) -> int:
        present = {_fingerprint(e) for e in self.stores.audit.events()}
        new = [
            AuditEvent(
                id="",
                at=str(row["at"]),
                actor=str(row["actor"]),
                action=str(row["action"]),
                target=str(row["target"]),
                reason=row.get("reason"),
                details=dict(row.get("details") or {}),
            )
            for row in read_jsonl_gz(reader.get("audit.jsonl.gz"))
        ]
        new = [e for e in new if _fingerprint(e) not in present]
        for start in range(0, len(new), 1000):
            self.stores.audit.replay(new[start : start + 1000])
        return len(new)

    def _originals(self, reader: BackupReader, report: RestoreReport, copy: bool) -> None:
        stores = self.stores
        for area, store in zip(AREAS, (stores.images, stores.flagged_originals), strict=True):
            wanted = read_jsonl_gz(reader.get(f"{area}.jsonl.gz"))
            have = set(store.ids())
            missing = [i for i in wanted if i not in have]
            if copy:
                for image_id in missing:
                    store.put(reader.get(f"blobs/{area}/{store.key_for(image_id)}"))
                report.images_copied += len(missing)
                missing = []
            report.missing_originals[area] = len(missing)

    def restore(
        self,
        caller: Principal,
        name: str,
        replace: bool = False,
        progress: Callable[[str], None] = lambda _: None,
    ) -> RestoreReport:
        """Bring a backup back into this deployment.

        Every file is checked against the manifest before anything changes, so a damaged
        or partial backup leaves the deployment as it was.

        Raises:
            NotFound: no such backup (or it has no manifest).
            InvalidBackup: a file is missing or damaged.
            Conflict: collections here hold points and ``replace`` is off.
        """
        caller.require(Scope.ADMIN)
        reader = BackupReader(self.backups, name)
        summary = reader.manifest.summary
        progress("verifying checksums")
        reader.verify()
        collections: dict[str, Any] = summary.get("collections", {})
        occupied = self._occupied(sorted(collections))
        if occupied and not replace:
            raise Conflict(
                f"collections here hold points ({', '.join(occupied)}); restore into an "
                "empty deployment, or replace them (--replace)"
            )
        report = RestoreReport(name)
        for coll, facts in collections.items():
            progress(f"collection {coll}")
            report.collections[coll] = self._load_collection(reader, coll, facts)
            report.models[coll] = str(facts["identity"]["model_id"])
        if prefix := summary.get("active_prefix"):
            self.index.set_active_prefix(str(prefix))
            report.active_prefix = str(prefix)
        stores = self.stores
        if summary.get("taxonomy"):
            stores.taxonomy.put(taxonomy_from_data(reader.get_json("taxonomy.json")))
            report.taxonomy = True
        report.keys = stores.keys.restore(reader.get_json("keys.json"))
        report.accounts = stores.accounts.restore(reader.get_json("accounts.json"))
        progress("audit log")
        report.audit_events_added = self._merge_audit(reader)
        self._originals(reader, report, bool(summary.get("includes_images")))
        stores.audit.record(caller.name, "backup.restore", name, None, report.as_dict())
        return report


def describe(manifest: Manifest | str) -> dict[str, Any]:
    """One line of ``backup list`` as data."""
    if isinstance(manifest, str):
        return {"name": manifest, "complete": False}
    summary = manifest.summary
    points = {k: v.get("points", 0) for k, v in summary.get("collections", {}).items()}
    return {
        "name": manifest.name,
        "complete": True,
        "created_at": manifest.created_at,
        "bytes": manifest.size,
        "points": points,
        "originals": summary.get("originals", {}),
        "includes_images": bool(summary.get("includes_images")),
    }
