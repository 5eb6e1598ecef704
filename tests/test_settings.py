"""Settings: environment over TOML file over defaults; errors name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.errors import ConfigError, InvalidFilter
from services.filters import parse_filters
from services.index.base import Range
from services.settings import DEFAULT_MODEL, IndexBackend, Settings, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGHTLINE_CONFIG_FILE", raising=False)
    s = load_settings()
    assert s.model == DEFAULT_MODEL
    assert s.index.backend is IndexBackend.EMBEDDED
    assert s.index_path == Path("data/index")


def test_env_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "sightline.toml"
    cfg.write_text('data_dir = "/srv/sightline"\nbatch_size = 8\n[index]\nhnsw_ef = 64\n')
    monkeypatch.setenv("SIGHTLINE_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("SIGHTLINE_BATCH_SIZE", "16")  # environment wins over the file
    monkeypatch.setenv("SIGHTLINE_INDEX__BACKEND", "server")
    monkeypatch.setenv("SIGHTLINE_INDEX__URL", "http://127.0.0.1:6333")
    monkeypatch.setenv("SIGHTLINE_INDEX__API_KEY", "s3cret")
    s = load_settings()
    assert s.data_dir == Path("/srv/sightline") and s.batch_size == 16 and s.index.hnsw_ef == 64
    assert s.index.backend is IndexBackend.SERVER
    assert "s3cret" not in repr(s)  # secrets never printed


def test_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SIGHTLINE_INDEX__BACKEND", "server")
    with pytest.raises(ConfigError, match="SIGHTLINE_INDEX__URL"):
        load_settings()
    monkeypatch.setenv("SIGHTLINE_INDEX__BACKEND", "nowhere")
    with pytest.raises(ConfigError, match="SIGHTLINE_INDEX__BACKEND"):
        load_settings()
    monkeypatch.delenv("SIGHTLINE_INDEX__BACKEND")
    monkeypatch.setenv("SIGHTLINE_CONFIG_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="no such file"):
        load_settings()


def test_filter_expressions() -> None:
    f = parse_filters(
        [
            "category=dress",
            "colour=red|blue",
            "year=2020",
            "price>=10",
            "price<50",
            'sku="007"',
            "state!=hidden",
            "in_stock=true",
            'label="false"',
            "size=8|m|false",
            "gift!=FALSE",
            "sale=True",
        ]
    )
    assert f.equals == {
        "category": "dress",
        "year": 2020,
        "sku": "007",
        "in_stock": True,
        "label": "false",
        "sale": True,
    }
    assert f.any_of == {"colour": ["red", "blue"], "size": [8, "m", False]}
    assert f.not_equals == {"state": "hidden", "gift": False}
    assert f.ranges == {"price": Range(gte=10.0, lt=50.0)}
    for bad in ["price>=cheap", "=x", "colour", "a<"]:
        with pytest.raises(InvalidFilter):
            parse_filters([bad])


def test_replication_settings_reach_the_index_adapters() -> None:
    from services.runtime import vector_storage

    with pytest.raises(ValidationError, match="write_consistency_factor"):
        Settings(index={"replication_factor": 2, "write_consistency_factor": 3})
    settings = Settings(
        index={"replication_factor": 3, "write_consistency_factor": 2, "quantization": "int8"}
    )
    storage = vector_storage(settings)
    assert (storage.replication_factor, storage.write_consistency_factor) == (3, 2)
    assert storage.quantized


def test_broker_password_is_kept_out_of_printed_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHTLINE_QUEUE__BROKER_URL", "redis://:s3cretpw@redis:6379/0")
    settings = load_settings()
    assert "s3cretpw" not in repr(settings) and "s3cretpw" not in str(settings.model_dump())
    assert settings.queue.broker == "redis://:s3cretpw@redis:6379/0"
    assert settings.queue.backend == settings.queue.broker and not settings.embedded
