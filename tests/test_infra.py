"""Deployment files: compose is valid YAML with what the design needs (no Docker here)."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parent.parent / "infra"


def test_compose_structure() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"qdrant", "redis", "api", "worker-ingest", "worker-jobs"} <= set(services)
    for name in ("api", "worker-ingest", "worker-jobs", "worker-gpu"):
        env = services[name]["environment"]
        assert env["SIGHTLINE_INDEX__BACKEND"] == "server"  # several processes: Qdrant server
        # The broker is password-protected, with the password from the environment.
        assert env["SIGHTLINE_QUEUE__BROKER_URL"].startswith("redis://:${REDIS_PASSWORD")
        assert "images:/data" in services[name]["volumes"]  # the shared image store
        assert services[name]["healthcheck"]["test"]  # workers too, not only the API
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        assert service["deploy"]["resources"]["limits"]["memory"], name
    assert services["worker-ingest"]["command"][-3:] == ["ingest", "--concurrency", "1"]
    assert "--appendonly" in services["redis"]["command"]
    assert "--requirepass" in services["redis"]["command"]
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["environment"]["SIGHTLINE_DEVICE"] == "cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def _compose_errors(path: Path) -> str:
    """Problems the compose-spec JSON schema finds in a compose file ('' if none): with
    ``docker compose config`` where that client is installed, else check-jsonschema's
    vendored copy of the schema (no download)."""
    if (
        shutil.which("docker")
        and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        command = ["docker", "compose", "-f", str(path), "config", "--quiet"]
    else:
        command = [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ]
    env = {**os.environ, "QDRANT__SERVICE__API_KEY": "k", "REDIS_PASSWORD": "p"}
    env["SIGHTLINE_WEB__SECRET_KEY"] = "s"
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    return "" if done.returncode == 0 else done.stdout + done.stderr


def test_compose_file_is_valid_compose(tmp_path: Path) -> None:
    assert _compose_errors(INFRA / "compose.yaml") == ""
    # The check can fail: a misspelt key is refused.
    broken = (
        (INFRA / "compose.yaml").read_text().replace("restart: unless-stopped", "restrat: no", 1)
    )
    (tmp_path / "compose.yaml").write_text(broken)
    assert _compose_errors(tmp_path / "compose.yaml") != ""


def test_image_owns_its_volumes_and_context_leaves_out_local_state() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert "chown sightline /data /models" in dockerfile  # HF_HOME=/models is writable
    assert "libgl1" in dockerfile  # OpenCV (OCR) imports
    ignored = (INFRA.parent / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data", "bench/out"} <= set(ignored)


def test_gunicorn_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    # The config shares the cores among its workers through SIGHTLINE_PROCESSES, but
    # leaves a value set by hand alone (monkeypatch restores it afterwards).
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/metrics")  # kept, restored
    monkeypatch.setenv("SIGHTLINE_WEB_WORKERS", "3")
    monkeypatch.setenv("SIGHTLINE_PROCESSES", "5")
    conf = runpy.run_path(str(INFRA / "gunicorn.conf.py"))
    assert conf["workers"] == 3 and os.environ["SIGHTLINE_PROCESSES"] == "5"
    monkeypatch.delenv("SIGHTLINE_PROCESSES")
    runpy.run_path(str(INFRA / "gunicorn.conf.py"))
    assert os.environ["SIGHTLINE_PROCESSES"] == "3"
    monkeypatch.setenv("SIGHTLINE_PROCESSES", "1")  # restored to unset at teardown
    conf = runpy.run_path(str(INFRA / "gunicorn.conf.py"))
    assert conf["worker_class"] == "gthread" and conf["preload_app"] is False
    assert conf["workers"] >= 1
