"""API key stores: the same contract on SQLite and on a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.auth.apikeys import KeyStore, RedisKeyStore, Scope, SqliteKeyStore
from services.errors import InvalidInput, NotFound
from tests.servers import RedisServer


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    if request.param == "sqlite":
        yield SqliteKeyStore(tmp_path / "keys.db")
        return
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield RedisKeyStore(server.client())
    server.stop()


def test_key_lifecycle(store: KeyStore) -> None:
    key, token = store.create("catalog-bot", [Scope.SEARCH, Scope.INGEST])
    assert token.startswith(f"sl_{key.id}_") and len(token) > 40
    found = store.verify(token)
    assert found is not None and found.scopes == {Scope.SEARCH, Scope.INGEST}
    assert found.allows(Scope.INGEST) and not found.allows(Scope.ADMIN)
    assert store.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None  # wrong secret
    assert store.verify(f"sl_{key.id}") is None and store.verify("garbage") is None
    admin, admin_token = store.create("ops", [Scope.ADMIN])
    assert store.verify(admin_token).allows(Scope.SEARCH)  # type: ignore[union-attr]
    store.revoke(key.id)
    assert store.verify(token) is None
    listed = {k.id: k for k in store.list()}
    assert listed[key.id].revoked and not listed[admin.id].revoked
    with pytest.raises(NotFound):
        store.revoke("missing")
    with pytest.raises(InvalidInput, match="scope"):
        store.create("nothing", [])
