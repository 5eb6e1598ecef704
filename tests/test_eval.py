"""`sightline eval` and taxonomy commands, checked against an independent computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont
from sentence_transformers import SentenceTransformer

from services.tagging.evaluation import ClassificationReport, confusion_png
from tests.conftest import png_bytes
from tests.test_cli import run

CLASSES = ["apple", "boat", "cat", "door", "egg", "fish"]
PROMPTS = ["a photo of a {label}", "an image of a {label}"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(3):
            (root / name / f"{i}.png").write_bytes(png_bytes(100 * c + i))
    return root


def rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def expected(model: SentenceTransformer, dataset: Path, prompts: list[str]) -> dict:  # type: ignore[type-arg]
    """Top-1/top-5 and per-class precision/recall computed here, from scratch."""
    files = [(f, d) for d in CLASSES for f in sorted((dataset / d).glob("*.png"))]
    images = [rgb(f) for f, _ in files]
    iv = np.asarray(model.encode(images, normalize_embeddings=True), dtype=np.float64)
    labels = []
    for c in CLASSES:
        t = np.asarray(
            model.encode([p.replace("{label}", c) for p in prompts], normalize_embeddings=True),
            dtype=np.float64,
        ).mean(axis=0)
        labels.append(t / np.linalg.norm(t))
    sims = iv @ np.stack(labels).T
    order = np.argsort(-sims, axis=1)
    truth = [CLASSES.index(d) for _, d in files]
    top1 = np.mean([order[i, 0] == t for i, t in enumerate(truth)])
    top5 = np.mean([t in order[i, :5] for i, t in enumerate(truth)])
    per_class = {}
    for k, c in enumerate(CLASSES):
        tp = sum(order[i, 0] == k and t == k for i, t in enumerate(truth))
        predicted = sum(order[i, 0] == k for i in range(len(truth)))
        per_class[c] = (tp / predicted if predicted else 0.0, tp / 3)
    return {"top1": top1, "top5": top5, "per_class": per_class}


def test_eval_classification_equals_independent_computation(
    env: dict[str, str], dataset: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    prompt_sets = ["a photo of a {label}|an image of a {label}", "{label}"]
    args = ["eval", str(dataset), "--out", str(out), "--json"]
    for p in prompt_sets:
        args += ["--prompts", p]
    data = json.loads(run(env, *args).stdout)
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    for report, prompts in zip(data["classification"], [PROMPTS, ["{label}"]], strict=True):
        want = expected(model, dataset, prompts)
        assert report["n"] == 18
        assert report["top1"] == pytest.approx(want["top1"])
        assert report["top5"] == pytest.approx(want["top5"])
        for c, (precision, recall) in want["per_class"].items():
            assert report["per_class"][c]["precision"] == pytest.approx(precision)
            assert report["per_class"][c]["recall"] == pytest.approx(recall)
        assert sum(map(sum, report["confusion"])) == 18
    assert (out / "report.json").is_file() and (out / "confusion-2.png").is_file()
    assert rgb(out / "confusion-1.png").size[0] > 100
    md = (out / "report.md").read_text()
    assert "| top-1 |" in md and md.count("### ") == 2


def test_eval_csv_and_retrieval(
    env: dict[str, str], dataset: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    labelled = tmp_path / "labels.csv"
    rows = [f"{dataset / d / f'{i}.png'},{d}" for d in CLASSES[:3] for i in range(3)]
    labelled.write_text("path,label\n" + "\n".join(rows) + "\n")
    data = json.loads(
        run(env, "eval", str(labelled), "--out", str(tmp_path / "a"), "--json").stdout
    )
    assert data["classification"][0]["n"] == 9

    captions = tmp_path / "captions.csv"
    pairs = [(f"a picture of {d} {i}", dataset / d / f"{i}.png") for d in CLASSES for i in range(2)]
    captions.write_text("caption,path\n" + "\n".join(f"{c},{p}" for c, p in pairs) + "\n")
    data = json.loads(
        run(env, "eval", str(captions), "--out", str(tmp_path / "b"), "--json").stdout
    )
    [report] = data["retrieval"]
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    paths = sorted({p for _, p in pairs})
    iv = model.encode([rgb(p) for p in paths], normalize_embeddings=True)
    tv = model.encode([c for c, _ in pairs], normalize_embeddings=True)
    ranks = []
    for n, (_, p) in enumerate(pairs):
        sims = iv @ tv[n]
        ranks.append(int((sims > sims[paths.index(p)]).sum()))
    for k in (1, 5, 10):
        assert report["recall"][f"recall@{k}"] == pytest.approx(np.mean([r < k for r in ranks]))


def test_taxonomy_cli_load_show_export_and_tag(env: dict[str, str], tmp_path: Path) -> None:
    doc = tmp_path / "taxonomy.yaml"
    doc.write_text("dimensions:\n  - name: colour\n    labels: [red, green, blue]\n")
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(5))
    run(env, "ingest", str(image))
    loaded = json.loads(run(env, "taxonomy", "load", str(doc), "--json").stdout)
    assert loaded["retag"]["state"] == "done" and loaded["retag"]["counts"]["done"] == 2
    shown = json.loads(run(env, "taxonomy", "show", "--json").stdout)
    assert shown["version"] == loaded["version"]
    run(env, "taxonomy", "export", str(tmp_path / "out.yaml"))
    assert "colour" in (tmp_path / "out.yaml").read_text()
    tags = json.loads(run(env, "tag", str(image), "--json").stdout)
    assert tags["taxonomy_version"] == loaded["version"]
    assert [d["name"] for d in tags["dimensions"]] == ["colour"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("dimensions: [{name: colour, labels: [red]}]\n")
    proc = run(env, "taxonomy", "load", str(bad), check=False)
    assert proc.returncode != 0 and "at least two labels" in proc.stderr


def test_confusion_png_names_every_class_in_full_with_axis_titles(tmp_path: Path) -> None:
    """Column names are written upright and whole: a long class name's column carries ink
    over the full length the font gives it (the old chart cut names to four letters)."""
    classes = ["dress", "t-shirt with long sleeves", "bag"]
    report = ClassificationReport("c", 3, 1.0, 1.0, classes, {}, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    confusion_png(report, tmp_path / "c.png", cell=28)
    pixels = np.asarray(Image.open(tmp_path / "c.png").convert("RGB")).astype(int)
    ink = pixels.max(axis=-1) < 128  # black text
    # The diagonal cells are the darkest blue: they locate the grid.
    blue = (pixels[..., 2] > 200) & (pixels[..., 0] < 100)
    rows, cols = np.flatnonzero(blue.any(axis=1)), np.flatnonzero(blue.any(axis=0))
    grid_top, grid_left, cell = rows.min(), cols.min(), 28
    long_column = ink[:grid_top, grid_left + cell : grid_left + 2 * cell]
    inked = np.flatnonzero(long_column.any(axis=1))
    name_len = ImageFont.load_default().getlength(classes[1])
    assert inked.max() - inked.min() >= 0.9 * name_len  # the whole name, upright
    assert ink[:14, grid_left:].any()  # "predicted class" above the columns
    assert ink[grid_top:, :14].any()  # "true class" beside the rows
