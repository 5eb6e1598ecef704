"""Backups: a whole deployment taken and restored, its answers equal to the original's.

The restore goes into a fresh deployment of the other index kind as well (an embedded
backup restores into a Qdrant server and back); answers are compared with the source's
own and with a brute-force scan of the restored vectors. A damaged or partial backup
is refused with nothing changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from demo.photos import jpeg, real_photos
from services.audit import RedisAuditLog, SqliteAuditLog
from services.auth.accounts import RedisAccountStore, SqliteAccountStore
from services.auth.apikeys import RedisKeyStore, SqliteKeyStore
from services.auth.principal import Scope
from services.encoder import Encoder
from services.errors import Conflict, IndexUnavailable, InvalidBackup, NotFound
from services.ids import point_id
from services.ingest.intake import IngestItem
from services.runtime import Runtime, build_runtime
from services.settings import Settings
from services.storage.blobs import FileBlobs
from services.tagging.taxonomy import Dimension, Label, Taxonomy
from tests.brute import top_k
from tests.conftest import ADMIN, make_index, png_bytes, set_taxonomy
from tests.servers import RedisServer
from tests.test_cli import run

TAXONOMY = Taxonomy(
    dimensions=[
        Dimension(name="kind", labels=[Label(name="photo"), Label(name="noise")]),
    ]
)
QUERIES = ["a photo of a cat", "coins on a table", "noise"]


def _runtime(root: Path, kind: str, model: Path, encoder: Encoder) -> Runtime:
    settings = Settings(data_dir=root / "data", model=str(model), batch_size=4)
    runtime = build_runtime(settings, encoder=encoder, index=make_index(kind, root))
    runtime.open()
    return runtime


def _fill(runtime: Runtime) -> dict[str, object]:
    """A small catalog with everything a backup holds; returns what to compare."""
    photos = real_photos()
    items = [
        IngestItem(jpeg(img), f"{name}.jpg", {"title": name, "price": 10 + i, "product_id": name})
        for i, (name, img) in enumerate(sorted(photos.items())[:8])
    ]
    items += [IngestItem(png_bytes(i), f"noise{i}.png", {"title": f"noise {i}"}) for i in range(6)]
    ids = [r.image_id for r in runtime.ingestor.ingest(ADMIN, items).results]
    set_taxonomy(runtime, TAXONOMY)
    runtime.moderation.add_image(ADMIN, png_bytes(100), "spam", "upload", 0.99, "known", False)
    runtime.moderation.add_text(ADMIN, "a photo of a weapon", "weapons", None, "concept", False)
    _, token = runtime.access.create_key(ADMIN, "restored-key", [Scope.SEARCH])
    runtime.access.create_account(ADMIN, "moderator", "correct horse battery")
    return {"ids": ids, "token": token}


def _answers(runtime: Runtime, ids: list[str]) -> dict[str, object]:
    """What users see: text and similar rankings with scores, tags, the flagged set."""
    search = runtime.search
    out: dict[str, object] = {}
    for q in QUERIES:
        out[f"text:{q}"] = [(h.image_id, h.score) for h in search.text(ADMIN, q, k=10)]
    for image_id in ids[:3]:
        out[f"similar:{image_id}"] = [
            (h.image_id, h.score) for h in search.similar(ADMIN, image_id, k=10)
        ]
        out[f"payload:{image_id}"] = search.record(ADMIN, image_id).payload
    out["flagged"] = sorted((e.id, e.kind, e.category) for e in runtime.moderation.entries(ADMIN))
    out["taxonomy"] = runtime.tagging.taxonomy(ADMIN)
    out["count"] = runtime.index.count(runtime.collections.images)
    return out


def _assert_same_answers(got: dict[str, object], want: dict[str, object]) -> None:
    """The same answers: rankings exactly, scores to float32 precision (the two index
    engines compute a cosine in their own order of operations), everything else exactly."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key.startswith(("text:", "similar:")):
            ranked, expected = list(got[key]), list(value)  # type: ignore[call-overload]
            assert [i for i, _ in ranked] == [i for i, _ in expected], key
            np.testing.assert_allclose(
                [s for _, s in ranked], [s for _, s in expected], atol=1e-5, err_msg=key
            )
        else:
            assert got[key] == value, key


@pytest.fixture
def source(
    tmp_path: Path, index_kind: str, tiny_model_dir: Path, encoder: Encoder
) -> Iterator[tuple[Runtime, dict[str, object]]]:
    runtime = _runtime(tmp_path / "source", index_kind, tiny_model_dir, encoder)
    facts = _fill(runtime)
    yield runtime, facts
    runtime.close()


def test_restore_into_a_fresh_deployment_of_either_kind_answers_alike(
    source: tuple[Runtime, dict[str, object]],
    tmp_path: Path,
    tiny_model_dir: Path,
    encoder: Encoder,
) -> None:
    runtime, facts = source
    ids = list(facts["ids"])  # type: ignore[call-overload]
    before = _answers(runtime, ids)
    audit_before = [(e.at, e.action, e.target) for e in runtime.audit.events()]
    manifest = runtime.backups.create(ADMIN, "nightly")
    assert manifest.summary["collections"]["images"]["points"] == len(ids)
    assert manifest.summary["originals"] == {"images": len(ids), "flagged": 1}
    assert [m.name for m in runtime.backups.manifests(ADMIN)] == ["nightly"]  # type: ignore[union-attr]
    backups = FileBlobs(runtime.settings.data_dir / "backups")

    for target_kind in ("embedded", "server"):
        target = _runtime(tmp_path / f"to-{target_kind}", target_kind, tiny_model_dir, encoder)
        # The originals come back from the bucket (or a copy of DATA_DIR/images), not from
        # the backup: copy them as an operator would.
        for image_id in runtime.store.ids():
            target.store.put(runtime.store.get(image_id))
        for image_id in runtime.moderation.flagged.originals.ids():
            target.moderation.flagged.originals.put(
                runtime.moderation.flagged.originals.get(image_id)
            )
        report = target.backups.at(backups).restore(ADMIN, "nightly")
        assert report.collections["images"] == len(ids)
        assert report.missing_originals == {"images": 0, "flagged": 0}
        target.close()
        # A new process over the restored deployment, as after a real restore.
        target = _runtime(tmp_path / f"to-{target_kind}", target_kind, tiny_model_dir, encoder)
        _assert_same_answers(_answers(target, ids), before)
        # The restored vectors rank as an exhaustive scan of them does.
        records, _ = target.index.scroll("images", limit=100, with_vectors=True)
        vectors = np.stack([r.vector for r in records])  # type: ignore[arg-type]
        query = encoder.encode_texts([QUERIES[0]])[0]
        want = top_k(query, [str(r.payload["image_id"]) for r in records], vectors, 5)
        got = target.search.text(ADMIN, QUERIES[0], k=5)
        assert [h.image_id for h in got] == [i for i, _ in want]
        # Keys still verify, accounts still log in, the audit log came along in order.
        assert target.access.verify_key(str(facts["token"])) is not None
        assert target.access.login("moderator", "correct horse battery") is not None
        events = [(e.at, e.action, e.target) for e in target.audit.events()]
        assert events[: len(audit_before)] == audit_before
        assert events[-1][1] == "backup.restore"
        target.close()


def test_a_damaged_or_partial_backup_changes_nothing(
    source: tuple[Runtime, dict[str, object]],
    tmp_path: Path,
    tiny_model_dir: Path,
    encoder: Encoder,
) -> None:
    runtime, _ = source
    runtime.backups.create(ADMIN, "b1")
    root = runtime.settings.data_dir / "backups"
    chunk = root / "b1" / "collections" / "images" / "000000.npy"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    target = _runtime(tmp_path / "target", "embedded", tiny_model_dir, encoder)
    service = target.backups.at(FileBlobs(root))
    with pytest.raises(InvalidBackup, match="damaged"):
        service.restore(ADMIN, "b1")
    assert target.index.count("images") == 0 and target.access.usernames(ADMIN) == []
    assert target.tagging.taxonomy(ADMIN) is None

    runtime.backups.create(ADMIN, "b2")
    (root / "b2" / "manifest.json").unlink()  # cut short before its manifest
    with pytest.raises(NotFound, match="cut short"):
        service.restore(ADMIN, "b2")
    listed = service.manifests(ADMIN)
    assert listed[1] == "b2"  # an incomplete backup is listed by its name alone
    target.close()


def test_restore_over_a_catalog_needs_replace(
    source: tuple[Runtime, dict[str, object]],
) -> None:
    runtime, facts = source
    ids = list(facts["ids"])  # type: ignore[call-overload]
    before = _answers(runtime, ids)
    runtime.backups.create(ADMIN, "b")
    extra = runtime.ingestor.ingest(ADMIN, [IngestItem(png_bytes(500), "late.png")]).results
    with pytest.raises(Conflict, match="--replace"):
        runtime.backups.restore(ADMIN, "b")
    report = runtime.backups.restore(ADMIN, "b", replace=True)
    assert report.audit_events_added == 0  # the same log: nothing added twice
    assert not runtime.index.retrieve("images", [point_id(extra[0].image_id)])
    _assert_same_answers(_answers(runtime, ids), before)


def test_cli_backup_with_images_restores_an_empty_machine(
    env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, img in sorted(real_photos().items())[:6]:
        (folder / f"{name}.jpg").write_bytes(jpeg(img))
    run(env, "ingest", str(folder))
    before = json.loads(run(env, "search", "a cat", "-k", "6", "--json").stdout)
    dest = tmp_path / "offsite"
    made = json.loads(
        run(env, "backup", "create", "--images", "--dest", str(dest), "--json").stdout
    )
    assert made["includes_images"] and made["originals"]["images"] == 6
    listed = json.loads(run(env, "backup", "list", "--dest", str(dest), "--json").stdout)
    assert [b["name"] for b in listed] == [made["name"]]

    fresh = {**env, "SIGHTLINE_DATA_DIR": str(tmp_path / "new-machine")}
    restored = json.loads(
        run(fresh, "backup", "restore", made["name"], "--dest", str(dest), "--json").stdout
    )
    assert restored["images_copied"] == 6 and restored["collections"]["images"] == 6
    after = json.loads(run(fresh, "search", "a cat", "-k", "6", "--json").stdout)
    assert after == before
    # The originals are back: a similar-by-id and a thumbnail need them.
    first = before[0]["image_id"]
    assert (tmp_path / "new-machine" / "images" / first[:2] / first[2:4] / first).is_file()


def test_keys_accounts_and_audit_move_between_sqlite_and_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """What a backup reads from one deployment's stores writes into another's: a single
    box (SQLite) restored into a cluster (Redis) keeps tokens, passwords and history."""
    client = redis_server.client()
    sqlite_keys, redis_keys = SqliteKeyStore(tmp_path / "auth.sqlite"), RedisKeyStore(client)
    sqlite_accounts = SqliteAccountStore(tmp_path / "auth.sqlite")
    redis_accounts = RedisAccountStore(client)
    sqlite_audit, redis_audit = SqliteAuditLog(tmp_path / "audit.sqlite"), RedisAuditLog(client)

    key, token = sqlite_keys.create("ci", [Scope.SEARCH, Scope.INGEST])
    sqlite_keys.revoke(sqlite_keys.create("old", [Scope.ADMIN])[0].id)
    sqlite_accounts.create("alice", "correct horse battery")
    sqlite_accounts.open_session("alice")
    for i in range(1205):  # more than one page of either log
        sqlite_audit.record("cli:op", "image.add", f"img{i}", None, {"n": i})

    assert redis_keys.restore(sqlite_keys.export()) == 2
    assert redis_keys.verify(token) == key
    assert [k.revoked for k in redis_keys.list()] == [k.revoked for k in sqlite_keys.list()]
    redis_accounts.restore(sqlite_accounts.export())
    assert redis_accounts.authenticate("alice", "correct horse battery") is not None
    assert redis_accounts.export()["alice"].get("sessions") is None  # sessions do not travel
    redis_audit.replay(list(sqlite_audit.events()))
    got = [(e.at, e.actor, e.action, e.target, e.details) for e in redis_audit.events()]
    want = [(e.at, e.actor, e.action, e.target, e.details) for e in sqlite_audit.events()]
    assert got == want and len(got) == 1205
    assert redis_audit.list(1)[0].target == "img1204"
    client.close()


def test_engine_snapshots_where_the_index_takes_none_fail_before_writing(
    source: tuple[Runtime, dict[str, object]],
) -> None:
    runtime, _ = source
    with pytest.raises(IndexUnavailable, match="snapshots"):
        runtime.backups.create(ADMIN, "snap", engine_snapshots=True)
    assert runtime.backups.manifests(ADMIN) == []
