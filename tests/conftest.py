"""Fixtures built from the real factories: tiny CLIP models on disk, both index adapters."""

from __future__ import annotations

import io
import os

# No test may reach the network: make Hugging Face fail fast instead of trying the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Status charts are sampled by hand in the tests that check them, not by a thread per app.
os.environ.setdefault("SIGHTLINE_WEB__STATUS_SAMPLE_S", "0")

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from qdrant_client import QdrantClient

from demo.tiny_model import build_tiny_clip
from services.auth.principal import Principal, Scope, operator
from services.encoder import Encoder
from services.index.base import VectorIndex, VectorStorage
from services.index.edge import EdgeIndex
from services.index.server import ServerIndex
from services.runtime import Runtime, build_runtime
from services.settings import Settings
from services.tagging.taxonomy import Taxonomy

INDEX_KINDS = ["embedded", "server"]
# Callers for service calls: the local operator (admin) and a search-only key.
ADMIN = operator("test")
SEARCHER = Principal("key:searcher", frozenset({Scope.SEARCH}))
pytest_plugins = ["tests.api_fixtures", "tests.worker_fixtures"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", seed=0)


@pytest.fixture(scope="session")
def slow_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Still tiny on disk, but slow enough (224px, 6 layers) to kill a worker mid-batch."""
    return build_tiny_clip(
        tmp_path_factory.mktemp("slow") / "slow-clip",
        image_size=224,
        patch_size=16,
        vision_hidden=256,
        vision_layers=6,
    )


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model with different weights (same folder name, same size)."""
    return build_tiny_clip(tmp_path_factory.mktemp("other") / "tiny-clip", seed=1)


@pytest.fixture(scope="session")
def encoder(tiny_model_dir: Path) -> Encoder:
    enc = Encoder(str(tiny_model_dir), batch_size=4)
    enc.load()
    return enc


def make_index(kind: str, path: Path, storage: VectorStorage | None = None) -> VectorIndex:
    """An index adapter of the given kind storing under ``path``."""
    if kind == "embedded":
        return EdgeIndex(path / "edge", storage=storage)
    # The server adapter through qdrant-client's local mode: same client API as a server.
    return ServerIndex(QdrantClient(path=str(path / "qdrant-local")), storage=storage)


@pytest.fixture(params=INDEX_KINDS)
def index_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def index(index_kind: str, tmp_path: Path) -> Iterator[VectorIndex]:
    idx = make_index(index_kind, tmp_path)
    yield idx
    idx.close()


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", model=str(tiny_model_dir), batch_size=4)


@pytest.fixture
def runtime(settings: Settings, encoder: Encoder, index: VectorIndex) -> Iterator[Runtime]:
    """The whole service graph over the tiny model and one index adapter, opened."""
    rt = build_runtime(settings, encoder=encoder, index=index)
    rt.open()
    yield rt
    rt.close()


@pytest.fixture
def env(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    """Environment for `sightline` subprocesses: the tiny model, a fresh data folder."""
    return {
        **os.environ,
        "SIGHTLINE_MODEL": str(tiny_model_dir),
        "SIGHTLINE_DATA_DIR": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
    }


def png_bytes(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A distinct random RGB PNG."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int, size: tuple[int, int] = (48, 40), **save_kwargs: object) -> bytes:
    """A distinct random RGB JPEG."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", **save_kwargs)
    return buf.getvalue()


def set_taxonomy(runtime: Runtime, taxonomy: Taxonomy) -> str:
    """Make a taxonomy current without a re-tag job (as the admin); returns its version."""
    return runtime.tagging.replace(ADMIN, taxonomy, retag=False)[0]
