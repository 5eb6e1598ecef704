"""The CLI in remote mode against a running service (real HTTP on loopback), with no
model and no index of its own: what a user does beside `sightline demo` or a server."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from services.auth.principal import Scope
from services.encoder import Encoder
from services.ids import sha256_hex
from services.runtime import Runtime
from services.settings import Settings
from tests.api_fixtures import make_app, runtime_of, settle
from tests.conftest import ADMIN, png_bytes
from tests.test_cli import run
from tests.test_tagging import TAXONOMY


@pytest.fixture
def served(
    tmp_path: Path, tiny_model_dir: Path, encoder: Encoder
) -> Iterator[tuple[str, str, Runtime]]:
    settings = Settings(data_dir=tmp_path / "server", model=str(tiny_model_dir), batch_size=4)
    settings.web.rate_limit = "100000/minute"
    app = make_app(settings, encoder)
    runtime = runtime_of(app)
    _, token = runtime.access.create_key(ADMIN, "cli", [Scope.ADMIN])
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", token, runtime
    server.shutdown()
    settle(app)
    runtime.close()


@pytest.fixture
def remote_env(served: tuple[str, str, Runtime], tmp_path: Path) -> dict[str, str]:
    url, token, _ = served
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    # No model and an empty data folder here: everything must come from the service.
    env.update(
        SIGHTLINE_URL=url,
        SIGHTLINE_API_KEY=token,
        SIGHTLINE_MODEL="no-such-org/no-such-model",
        SIGHTLINE_DATA_DIR=str(tmp_path / "client"),
        HF_HUB_OFFLINE="1",
    )
    return env


def test_remote_ingest_search_similar_tag_taxonomy_info(
    served: tuple[str, str, Runtime], remote_env: dict[str, str], tmp_path: Path
) -> None:
    _, _, runtime = served
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        (folder / f"p{i}.png").write_bytes(png_bytes(i, size=(64, 48)))
    (folder / "notes.txt").write_text("not an image")  # skipped by name, never uploaded
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")  # uploaded, refused by content
    (tmp_path / "meta.csv").write_text("filename,colour\np0.png,red\np1.png,blue\n")

    uploaded = run(
        remote_env, "ingest", str(folder), "-m", str(tmp_path / "meta.csv"), "--json", check=False
    )
    receipt = json.loads(uploaded.stdout)
    assert receipt["accepted"] == 6 and uploaded.returncode == 1  # the broken .jpg is refused
    assert [r["filename"] for r in receipt["refused"]] == [str(folder / "broken.jpg")]
    assert "skipped 1 non-image file(s): notes.txt" in uploaded.stderr
    assert runtime.wait_idle(timeout_s=60)
    job = json.loads(run(remote_env, "job", receipt["jobs"][0], "--json").stdout)
    assert job["state"] == "done" and job["counts"]["done"] == 6, job

    info = json.loads(run(remote_env, "info", "--json").stdout)
    assert info["collections"]["images"] == 6
    assert info["model_id"] == runtime.encoder.identity.model_id

    found = json.loads(run(remote_env, "search", "red", "-k", "3", "--json").stdout)
    want = runtime.search.text(ADMIN, "red", k=3)
    assert [h["image_id"] for h in found] == [h.image_id for h in want]
    red = json.loads(run(remote_env, "search", "x", "-w", "colour=red", "--json").stdout)
    assert [h["payload"]["colour"] for h in red] == ["red"]

    ref = found[0]["image_id"]
    similar = json.loads(run(remote_env, "similar", ref, "-k", "2", "--json").stdout)
    assert [h["image_id"] for h in similar] == [
        h.image_id for h in runtime.search.similar(ADMIN, ref, k=2)
    ]
    by_file = json.loads(run(remote_env, "similar", str(folder / "p3.png"), "--json").stdout)
    want_file = runtime.search.by_image(ADMIN, (folder / "p3.png").read_bytes(), k=10)
    assert [h["image_id"] for h in by_file] == [h.image_id for h in want_file]

    (tmp_path / "taxonomy.yaml").write_text(TAXONOMY)
    run(remote_env, "taxonomy", "load", str(tmp_path / "taxonomy.yaml"), "--no-retag")
    assert runtime.tagging.taxonomy(ADMIN) is not None
    shown = run(remote_env, "taxonomy", "show").stdout
    assert runtime.tagging.taxonomy(ADMIN).version in shown  # type: ignore[union-attr]
    tags = json.loads(
        run(remote_env, "tag", str(folder / "p2.png"), "--labels", "a,b,c", "--json").stdout
    )
    assert {x["label"] for x in tags["dimensions"][0]["labels"]} == {"a", "b", "c"}


def test_remote_errors_are_the_services_in_one_line(
    remote_env: dict[str, str],
) -> None:
    bad_key = run({**remote_env, "SIGHTLINE_API_KEY": "sk_wrong"}, "search", "x", check=False)
    assert bad_key.returncode == 2 and "401" in bad_key.stderr
    assert len(bad_key.stderr.strip().splitlines()) == 1
    missing = run(remote_env, "similar", "0" * 64, check=False)
    assert missing.returncode == 2 and "404" in missing.stderr
    half = {k: v for k, v in remote_env.items() if k != "SIGHTLINE_API_KEY"}
    only_url = run(half, "search", "x", check=False)
    assert only_url.returncode != 0 and "SIGHTLINE_API_KEY" in only_url.stderr


def test_a_key_sent_in_clear_to_another_host_is_warned_about() -> None:
    from cli.remote import _cleartext_to_another_host as cleartext

    assert cleartext("http://sightline.example.com:8000") and cleartext("http://10.0.0.5")
    for url in ("https://sightline.example.com", "http://127.0.0.1:8000", "http://[::1]:80"):
        assert not cleartext(url), url
    assert not cleartext("http://localhost:8000")


def test_a_locked_embedded_index_points_to_remote_mode(
    served: tuple[str, str, Runtime], tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The local CLI beside a running service on the same data folder: one line saying
    the index is in use and how to talk to the service instead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    env.update(
        SIGHTLINE_MODEL=str(tiny_model_dir),
        SIGHTLINE_DATA_DIR=str(tmp_path / "server"),
        HF_HUB_OFFLINE="1",
    )
    locked = run(env, "search", "x", check=False)
    assert locked.returncode == 2, locked.stderr
    lines = [line for line in locked.stderr.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "in use by another process" in lines[0]
    assert "SIGHTLINE_URL" in lines[0] and "SIGHTLINE_API_KEY" in lines[0]


def _moderation_round_trip(env: dict[str, str], folder: Path, settle_: object) -> None:
    """Flag a file, see its stored copy quarantined by the scan, check files, reject the
    copy, read the audit log and unflag: the same commands and JSON locally and remotely."""
    flagged_file, other = folder / "p0.png", folder / "p1.png"
    copy_id = sha256_hex(flagged_file.read_bytes())
    added = json.loads(
        run(
            env,
            "moderation",
            "flag",
            str(flagged_file),
            "-c",
            "weapons",
            "--threshold",
            "1.0",
            "--note",
            "known bad",
            "--json",
        ).stdout
    )
    assert added["entry"]["category"] == "weapons" and added["scan_job_id"]
    assert callable(settle_) and settle_()
    queue = json.loads(run(env, "moderation", "queue", "--json").stdout)
    assert [i["image_id"] for i in queue["items"]] == [copy_id] and queue["pending"] == 1
    assert queue["items"][0]["matches"][0]["entry_id"] == added["entry"]["id"]

    hit = run(env, "moderation", "check", str(flagged_file), check=False)
    assert hit.returncode == 1 and hit.stdout.startswith("quarantined (weapons)"), hit.stderr
    assert added["entry"]["id"][:8] in hit.stdout  # the match and its signal are shown
    clear = json.loads(run(env, "moderation", "check", str(other), "--json").stdout)
    assert clear["verdict"] == "clear"
    missing = run(env, "moderation", "check", str(folder / "gone.png"), check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr

    done = run(env, "moderation", "reject", copy_id, "--reason", "a copy")
    assert "ok" in done.stdout
    assert json.loads(run(env, "moderation", "queue", "--json").stdout)["items"] == []
    events = json.loads(run(env, "moderation", "audit", "--target", copy_id, "--json").stdout)
    assert any(
        e["action"].startswith("moderation.reject") or "reject" in e["action"] for e in events
    )

    entries = json.loads(run(env, "moderation", "flagged", "--json").stdout)
    assert [e["id"] for e in entries] == [added["entry"]["id"]]
    run(env, "moderation", "unflag", added["entry"]["id"])
    assert json.loads(run(env, "moderation", "flagged", "--json").stdout) == []


def _photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        (folder / f"p{i}.png").write_bytes(png_bytes(i, size=(64, 48)))
    return folder


def test_moderation_commands_remote(
    served: tuple[str, str, Runtime], remote_env: dict[str, str], tmp_path: Path
) -> None:
    _, _, runtime = served
    folder = _photos(tmp_path)
    run(remote_env, "ingest", str(folder))
    assert runtime.wait_idle(timeout_s=60)
    _moderation_round_trip(remote_env, folder, lambda: runtime.wait_idle(timeout_s=60))


def test_moderation_commands_local(env: dict[str, str], tmp_path: Path) -> None:
    folder = _photos(tmp_path)
    run(env, "ingest", str(folder))
    _moderation_round_trip(env, folder, lambda: True)  # no broker: the CLI waits for its scan
