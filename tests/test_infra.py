"""Deployment files: compose is valid YAML with what the design needs (no Docker here)."""

from __future__ import annotations

import runpy
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parent.parent / "infra"


def test_compose_structure() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"qdrant", "redis", "api", "worker-ingest", "worker-jobs"} <= set(services)
    for name in ("api", "worker-ingest", "worker-jobs"):
        env = services[name]["environment"]
        assert env["SIGHTLINE_INDEX__BACKEND"] == "server"  # several processes: Qdrant server
        assert env["SIGHTLINE_QUEUE__BROKER_URL"].startswith("redis://")
        assert "images:/data" in services[name]["volumes"]  # the shared image store
    assert services["worker-ingest"]["command"][-3:] == ["ingest", "--concurrency", "1"]
    assert "--appendonly" in services["redis"]["command"]


def test_gunicorn_config_loads() -> None:
    conf = runpy.run_path(str(INFRA / "gunicorn.conf.py"))
    assert conf["worker_class"] == "gthread" and conf["preload_app"] is False
    assert conf["workers"] >= 1
