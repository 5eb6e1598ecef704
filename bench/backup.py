"""Backup and restore time against the index's own bulk upsert, measured in one run.

Fills an embedded (or ``--index server``: qdrant-client's local mode) index with N
clustered 512-d vectors and small payloads, then times ``BackupService.create`` (a
point-by-point dump to a folder) and ``restore`` into a fresh index of the same kind,
beside the time the same upserts took to begin with. The restored collection's vectors
are compared with the originals.

Run: ``.venv/bin/python -m bench.backup [--points 100000] [--index embedded]``
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import clustered_vectors, table
from services.audit import SqliteAuditLog
from services.auth.accounts import SqliteAccountStore
from services.auth.apikeys import SqliteKeyStore
from services.auth.principal import operator
from services.backup.service import BackupService, Stores
from services.encoder import ModelIdentity
from services.index.base import PointData, VectorIndex
from services.index.edge import EdgeIndex
from services.storage.blobs import FileBlobs
from services.storage.files import ImageStore
from services.tagging.labels import FileTaxonomyStore

IDENTITY = ModelIdentity("bench/clustered-512", 512)


def _index(kind: str, root: Path) -> VectorIndex:
    if kind == "embedded":
        return EdgeIndex(root / "edge")
    from qdrant_client import QdrantClient

    from services.index.server import ServerIndex

    return ServerIndex(QdrantClient(path=str(root / "local")))


def _service(index: VectorIndex, root: Path, backups: Path) -> BackupService:
    stores = Stores(
        ImageStore(root / "images"),
        ImageStore(root / "flagged"),
        FileTaxonomyStore(root / "taxonomy.json"),
        SqliteKeyStore(root / "auth.sqlite"),
        SqliteAccountStore(root / "auth.sqlite"),
        SqliteAuditLog(root / "audit.sqlite"),
    )
    return BackupService(index, stores, FileBlobs(backups))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--index", choices=["embedded", "server"], default="embedded")
    args = parser.parse_args()
    me = operator("bench")
    work = Path(tempfile.mkdtemp(prefix="sightline-bench-backup-"))
    try:
        vectors = clustered_vectors(args.points, 512, clusters=200)
        source = _index(args.index, work / "source")
        source.ensure_collection("images", IDENTITY)
        t0 = time.perf_counter()
        for start in range(0, args.points, 1000):
            source.upsert(
                "images",
                [
                    PointData(
                        f"00000000-0000-4000-8000-{i:012d}",
                        vectors[i],
                        {"image_id": f"{i:064x}", "title": f"product {i}", "price": i % 500},
                    )
                    for i in range(start, min(start + 1000, args.points))
                ],
            )
        upsert_s = time.perf_counter() - t0
        backups = work / "backups"
        service = _service(source, work / "source", backups)
        t0 = time.perf_counter()
        manifest = service.create(me, "bench")
        create_s = time.perf_counter() - t0
        source.close()

        target = _index(args.index, work / "target")
        t0 = time.perf_counter()
        _service(target, work / "target", backups).restore(me, "bench")
        restore_s = time.perf_counter() - t0
        got, offset, checked = 0, None, 0.0
        while True:
            records, offset = target.scroll("images", limit=5000, offset=offset, with_vectors=True)
            for r in records:
                i = int(r.id.rsplit("-", 1)[1])
                checked = max(checked, float(np.abs(np.asarray(r.vector) - vectors[i]).max()))
            got += len(records)
            if offset is None:
                break
        target.close()
        rows = [
            [
                "bulk upsert (baseline)",
                f"{upsert_s:.1f}",
                f"{args.points / upsert_s:,.0f}",
                "1.00x",
            ],
            [
                "backup create (dump)",
                f"{create_s:.1f}",
                f"{args.points / create_s:,.0f}",
                f"{create_s / upsert_s:.2f}x",
            ],
            [
                "backup restore",
                f"{restore_s:.1f}",
                f"{args.points / restore_s:,.0f}",
                f"{restore_s / upsert_s:.2f}x",
            ],
        ]
        print(f"\n{args.points:,} points, 512-d, {args.index} index\n")
        print(table(rows, ["step", "seconds", "points/s", "time vs upsert"]))
        print(
            f"\nbackup size {manifest.size / 1e6:,.0f} MB "
            f"({manifest.size / args.points:,.0f} bytes a point); restored {got:,} points, "
            f"largest vector difference {checked:.1e}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
