"""Deployment files: compose is valid YAML with what the design needs (no Docker here)."""

from __future__ import annotations

import os
import runpy
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from services.errors import ConfigError
from tests.servers import free_port, wait_for

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
    assert "--appendonly yes" in services["redis"]["command"][2]
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
    monkeypatch.setenv("SIGHTLINE_WEB__WORKERS", "3")
    monkeypatch.setenv("SIGHTLINE_PROCESSES", "5")
    conf = runpy.run_path(str(INFRA / "gunicorn.conf.py"))
    assert conf["workers"] == 3 and os.environ["SIGHTLINE_PROCESSES"] == "5"
    monkeypatch.delenv("SIGHTLINE_PROCESSES")
    runpy.run_path(str(INFRA / "gunicorn.conf.py"))
    assert os.environ["SIGHTLINE_PROCESSES"] == "3"
    monkeypatch.setenv("SIGHTLINE_PROCESSES", "1")  # restored to unset at teardown
    conf = runpy.run_path(str(INFRA / "gunicorn.conf.py"))
    assert conf["worker_class"] == "gthread" and conf["preload_app"] is False
    monkeypatch.delenv("SIGHTLINE_WEB__WORKERS")  # the default is a number, not the CPUs
    assert runpy.run_path(str(INFRA / "gunicorn.conf.py"))["workers"] == 2
    monkeypatch.setenv("SIGHTLINE_WEB__WORKERS", "0")
    with pytest.raises(ConfigError, match="SIGHTLINE_WEB__WORKERS"):
        runpy.run_path(str(INFRA / "gunicorn.conf.py"))


K8S = INFRA / "k8s"


def _setting_exists(name: str) -> bool:
    """Whether SIGHTLINE_A__B names a field of Settings (nested with __)."""
    from pydantic import BaseModel

    from services.settings import Settings

    model: type[BaseModel] = Settings
    parts = name.removeprefix("SIGHTLINE_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def _k8s_errors(*paths: Path) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet"]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        check=False,
    )
    return "" if done.returncode == 0 else done.stdout + done.stderr


def test_kubernetes_manifests_validate_against_kubernetes_schemas(tmp_path: Path) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = [K8S / name for name in kustomization["resources"]]
    assert {p.name for p in files} == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert _k8s_errors(*files) == ""
    broken = (K8S / "api.yaml").read_text().replace("replicas: 2", "replicas: two", 1)
    (tmp_path / "api.yaml").write_text(broken)
    assert _k8s_errors(tmp_path / "api.yaml") != ""  # the check can fail


def test_kubernetes_deployment_shape() -> None:
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for path in K8S.glob("*.yaml")
        if path.name != "kustomization.yaml"
        for d in yaml.safe_load_all(path.read_text())
    }
    qdrant = docs[("StatefulSet", "qdrant")]["spec"]
    assert qdrant["replicas"] == 3 and qdrant["volumeClaimTemplates"]
    env = {e["name"]: e.get("value") for e in qdrant["template"]["spec"]["containers"][0]["env"]}
    assert env["QDRANT__CLUSTER__ENABLED"] == "true"
    config = docs[("ConfigMap", "sightline-config")]["data"]
    assert config["SIGHTLINE_INDEX__REPLICATION_FACTOR"] == "2"
    assert config["SIGHTLINE_INDEX__WRITE_CONSISTENCY_FACTOR"] == "2"
    assert config["SIGHTLINE_STORAGE__BACKEND"] == "s3"  # stateless API and worker pods
    unknown = [k for k in config if k.startswith("SIGHTLINE_") and not _setting_exists(k)]
    assert unknown == []
    redis = docs[("StatefulSet", "redis")]["spec"]["template"]["spec"]["containers"][0]
    assert "requirepass" in redis["args"][0] and "--appendonly yes" in redis["args"][0]
    hpa = docs[("HorizontalPodAutoscaler", "api")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "api" and hpa["minReplicas"] >= 2
    for name in ("worker-ingest", "worker-jobs", "api"):
        pod = docs[("Deployment", name)]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["resources"]["limits"]["memory"]
        assert {"configMapRef": {"name": "sightline-config"}} in container["envFrom"]
        assert pod["securityContext"]["runAsUser"] == 10001


def test_kubernetes_disruption_budgets_and_nightly_backup() -> None:
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for path in K8S.glob("*.yaml")
        if path.name != "kustomization.yaml"
        for d in yaml.safe_load_all(path.read_text())
    }
    labels = {
        name: d["spec"]["template"]["metadata"]["labels"]
        for (kind, name), d in docs.items()
        if kind in ("Deployment", "StatefulSet")
    }
    budgets = {n: d["spec"] for (k, n), d in docs.items() if k == "PodDisruptionBudget"}
    for name in ("api", "worker-ingest", "qdrant"):
        assert budgets[name]["selector"]["matchLabels"] == labels[name], name
    assert budgets["qdrant"]["maxUnavailable"] == 1  # a peer may go: every shard has 2 copies
    job = docs[("CronJob", "backup")]["spec"]
    container = job["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["sightline", "backup", "create"]
    assert job["concurrencyPolicy"] == "Forbid"


def test_compose_settings_exist() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        unknown = [k for k in env if k.startswith("SIGHTLINE_") and not _setting_exists(k)]
        assert unknown == [], name


def _start_redis_as_deployed(script: str, tmp_path: Path, password: str) -> subprocess.Popen[bytes]:
    """The deployment's Redis start line, run with the local redis-server on a free port."""
    binary = shutil.which("redis-server")
    assert binary is not None
    port = free_port()
    script = script.replace("exec redis-server", f"exec {binary}").replace(
        "/tmp/auth.conf", str(tmp_path / "auth.conf")
    )
    script += f" --port {port} --bind 127.0.0.1 --save '' --dir {tmp_path}"
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": password, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(["sh", "-c", script], env=env, start_new_session=True)
    proc.port = port  # type: ignore[attr-defined]
    return proc


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_redis_password_is_required_and_not_on_the_command_line(where: str, tmp_path: Path) -> None:
    if where == "compose":
        command = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]["redis"]
        script = command["command"][2].replace("$$", "$")
    else:
        docs = yaml.safe_load_all((K8S / "redis.yaml").read_text())
        sts = next(d for d in docs if d["kind"] == "StatefulSet")
        script = sts["spec"]["template"]["spec"]["containers"][0]["args"][0]
    password = "f00dfeed" * 4
    proc = _start_redis_as_deployed(script, tmp_path, password)
    try:
        port = proc.port  # type: ignore[attr-defined]
        authed = redis.Redis(host="127.0.0.1", port=port, password=password)
        wait_for(lambda: _pings(authed), 10, "redis-server as deployed")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as anonymous:
            anonymous.sendall(b"PING\r\n")  # without the password: refused
            assert anonymous.recv(100).startswith(b"-NOAUTH")
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()  # exec'd: the same pid
        assert b"redis-server" in cmdline and password.encode() not in cmdline
        assert (tmp_path / "auth.conf").stat().st_mode & 0o077 == 0
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    port = client.connection_pool.connection_kwargs["port"]
    try:  # a plain connect first: redis-py retries a refused connection with backoff
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return bool(client.ping())
    except (OSError, redis.ConnectionError):
        return False
