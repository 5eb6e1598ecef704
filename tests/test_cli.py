"""The ``sightline`` command, run as a user would: a subprocess over a folder of images."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sentence_transformers import SentenceTransformer

from tests.brute import top_k
from tests.conftest import jpeg_bytes, png_bytes


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("catalog")
    (root / "shoes").mkdir()
    for i in range(10):
        (root / ("shoes" if i < 4 else ".") / f"img{i}.png").write_bytes(png_bytes(i))
    (root / "meta.csv").write_text(
        "filename,title,price,in_stock\n"
        "img5.png,Red dress,19.5,true\nshoes/img1.png,Blue shoe,30,false\n"
    )
    return root


def test_ingest_search_similar_match_brute_force(env, catalog, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    images = sorted(p for p in catalog.rglob("*.png"))
    proc = run(env, "ingest", str(catalog), "--metadata", str(catalog / "meta.csv"), "--json")
    first = json.loads(proc.stdout)
    # meta.csv inside the folder is skipped and said so (exit 0); the 10 images are indexed.
    assert first["summary"] == {"indexed": 10, "updated": 0, "skipped": 0, "failed": 0}
    assert "skipped 1 non-image file(s): meta.csv" in proc.stderr
    assert not any(r["file"].endswith("meta.csv") for r in first["results"])
    # Named on the command line, it is tried, and refused with a reason.
    named = run(env, "ingest", str(catalog / "meta.csv"), "--json", check=False)
    [refused] = json.loads(named.stdout)["results"]
    assert named.returncode == 1 and "not a recognised image" in refused["reason"]
    # Errors under --json are JSON too.
    bad = run(env, "search", "x", "--where", "price<<1", "--json", check=False)
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["code"] == "invalid_filter"
    missing = run(env, "similar", "missing.jpg", "--json", check=False)
    assert (
        missing.returncode == 2 and "no such file" in json.loads(missing.stdout)["error"]["message"]
    )

    again = json.loads(run(env, "ingest", str(catalog), "--json", check=False).stdout)
    info = json.loads(run(env, "info", "--json").stdout)
    assert again["summary"]["indexed"] == 0 and again["summary"]["skipped"] == 10
    assert info["collections"]["images"] == 10

    ref = SentenceTransformer(str(tiny_model_dir), device="cpu")
    vectors = np.asarray(
        ref.encode([Image.open(p).convert("RGB") for p in images], normalize_embeddings=True)
    )
    import hashlib

    ids = [hashlib.sha256(p.read_bytes()).hexdigest() for p in images]
    q = ref.encode(["a red dress"], normalize_embeddings=True)[0]
    hits = json.loads(run(env, "search", "a red dress", "-k", "5", "--json").stdout)
    assert [h["image_id"] for h in hits] == [w[0] for w in top_k(q, ids, vectors, 5)]

    hits = json.loads(run(env, "similar", ids[2], "-k", "4", "--json").stdout)
    assert [h["image_id"] for h in hits] == [
        w[0] for w in top_k(vectors[2], ids, vectors, 4, lambda i: i != 2)
    ]
    # The 12 characters the results table prints are enough, as with git's short ids.
    short = json.loads(run(env, "similar", ids[2][:12], "-k", "4", "--json").stdout)
    assert short == hits
    # A stored image's neighbours and the review queue read what is stored: they need no
    # model (here one that cannot load), where a text search does.
    no_model = {**env, "SIGHTLINE_MODEL": str(catalog / "no-such-model")}
    assert json.loads(run(no_model, "similar", ids[2], "-k", "4", "--json").stdout) == hits
    assert json.loads(run(no_model, "moderation", "queue", "--json").stdout)["items"] == []
    needs_model = run(no_model, "search", "a red dress", check=False)
    assert needs_model.returncode != 0 and "cannot load model" in needs_model.stderr
    missing = run(env, "similar", "no-such-photo.jpg", check=False)
    assert missing.returncode == 2 and "no such file: no-such-photo.jpg" in missing.stderr
    unknown = run(
        env, "similar", "f" * 8 if not ids[2].startswith("f" * 8) else "0" * 8, check=False
    )
    assert unknown.returncode == 2 and "no stored image id starts with" in unknown.stderr
    too_short = run(env, "similar", ids[2][:4], check=False)
    assert too_short.returncode == 2 and "at least 6 hex digits" in too_short.stderr

    titled = json.loads(run(env, "search", "x", "--where", "price>=20", "--json").stdout)
    assert [h["payload"]["title"] for h in titled] == ["Blue shoe"]
    # Typed values: a decimal matches the number, true/false the booleans the CSV gave.
    exact = json.loads(run(env, "search", "x", "--where", "price=19.5", "--json").stdout)
    assert [h["payload"]["title"] for h in exact] == ["Red dress"]
    stocked = json.loads(run(env, "search", "x", "--where", "in_stock=true", "--json").stdout)
    assert [(h["payload"]["title"], h["payload"]["in_stock"]) for h in stocked] == [
        ("Red dress", True)
    ]
    out = json.loads(run(env, "search", "x", "--where", "in_stock=false", "--json").stdout)
    assert [h["payload"]["title"] for h in out] == ["Blue shoe"]
    text = json.loads(run(env, "search", "x", "--where", 'in_stock="true"', "--json").stdout)
    assert text == []  # the string "true" is not the boolean

    human = run(env, "search", "a red dress", "-k", "3").stdout
    assert "score" in human and len(human.strip().splitlines()) == 4


def test_bad_files_are_refused_with_messages(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad"
    bad.mkdir()
    good = jpeg_bytes(1, size=(300, 300))
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (bad / "notes.jpg").write_text("a text file renamed to .jpg\n")
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    (bad / "huge.png").write_bytes(buf.getvalue())
    proc = run(env, "ingest", str(bad), check=False)
    assert proc.returncode == 1
    out = proc.stdout
    assert "truncated.jpg: corrupt or truncated JPEG image" in out
    assert "notes.jpg: not a recognised image" in out
    assert "huge.png: image refused as a decompression bomb" in out
    assert "indexed 0, updated 0, skipped 0, failed 3" in out
    info = json.loads(run(env, "info", "--json").stdout)
    assert info["collections"]["images"] == 0


def test_other_model_is_refused(env, other_model_dir) -> None:  # type: ignore[no-untyped-def]
    run(env, "info")
    proc = run({**env, "SIGHTLINE_MODEL": str(other_model_dir)}, "search", "anything", check=False)
    assert proc.returncode == 2
    assert "was built with model" in proc.stderr and "Re-embed" in proc.stderr


def test_configuration_errors_are_readable(env) -> None:  # type: ignore[no-untyped-def]
    proc = run({**env, "SIGHTLINE_BATCH_SIZE": "0"}, "info", check=False)
    assert proc.returncode == 2
    assert "SIGHTLINE_BATCH_SIZE" in proc.stderr and "greater than or equal to 1" in proc.stderr
    proc = run({**env, "SIGHTLINE_MODEL": "nobody/nothing"}, "info", check=False)
    assert proc.returncode == 2 and "SIGHTLINE_MODEL" in proc.stderr
