"""Measure zero-shot tagging and text-to-image retrieval on a team's own labelled images.

Classification uses exactly the production path (label vectors from prompt templates,
``score_vectors``, OCR fusion when asked), so a prompt set or model that wins here wins
in tagging too. Several configurations (model x prompt set) run over the same images and
land in one table.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from services.encoder import Encoder
from services.errors import InvalidMetadata
from services.images import decode_image
from services.settings import ImageLimits
from services.tagging.labels import embed_taxonomy
from services.tagging.scoring import TextReader, score_vectors
from services.tagging.taxonomy import DEFAULT_TEMPLATES, Dimension, Label, OcrFusion, Taxonomy

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Config:
    """One column of the comparison: a model and a prompt set."""

    model: str
    templates: tuple[str, ...] = tuple(DEFAULT_TEMPLATES)
    ocr: bool = False

    @property
    def name(self) -> str:
        """Short label for tables."""
        model = Path(self.model).name or self.model
        prompts = " | ".join(self.templates)
        return f"{model} [{prompts}]" + (" +ocr" if self.ocr else "")


@dataclass
class ClassificationReport:
    """Accuracy, per-class precision/recall and the confusion matrix of one configuration."""

    config: str
    n: int
    top1: float
    top5: float
    classes: list[str]
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]] = field(repr=False)


@dataclass
class RetrievalReport:
    """Text-to-image recall of one configuration."""

    config: str
    n: int
    recall: dict[str, float]


def _read_csv(path: Path, columns: tuple[str, str]) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == list(columns):
        rows = rows[1:]
    out = []
    for n, row in enumerate(rows, 1):
        if len(row) < 2:
            raise InvalidMetadata(f"{path}: row {n} needs {columns[0]},{columns[1]}")
        out.append((row[0].strip(), row[1].strip()))
    return out


def load_classification(dataset: Path) -> list[tuple[Path, str]]:
    """(image path, class) from a folder per class, or a CSV of ``path,label``.

    Raises:
        InvalidMetadata: the dataset is empty or malformed.
    """
    if dataset.is_dir():
        items = [
            (f, d.name)
            for d in sorted(
                p for p in dataset.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
            for f in sorted(d.rglob("*"))
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        ]
    else:
        items = [(dataset.parent / p, label) for p, label in _read_csv(dataset, ("path", "label"))]
    if not items:
        raise InvalidMetadata(f"{dataset}: no labelled images found")
    return items


def load_retrieval(dataset: Path) -> list[tuple[str, Path]]:
    """(caption, image path) pairs from a CSV of ``caption,path``."""
    pairs = [(c, dataset.parent / p) for c, p in _read_csv(dataset, ("caption", "path"))]
    if not pairs:
        raise InvalidMetadata(f"{dataset}: no caption,path rows")
    return pairs


def is_retrieval_csv(dataset: Path) -> bool:
    """A CSV whose header is ``caption,path``."""
    if dataset.suffix.lower() != ".csv" or not dataset.is_file():
        return False
    with dataset.open(newline="") as f:
        header = next(csv.reader(f), [])
    return [c.strip().lower() for c in header[:2]] == ["caption", "path"]


def _images(paths: Sequence[Path], limits: ImageLimits, min_side: int | None) -> list[Image.Image]:
    return [decode_image(p.read_bytes(), limits, min_side=min_side).image for p in paths]


def classify(
    encoder: Encoder,
    items: Sequence[tuple[Path, str]],
    config: Config,
    reader: TextReader | None = None,
    limits: ImageLimits | None = None,
) -> ClassificationReport:
    """Zero-shot accuracy of one configuration on labelled images."""
    limits = limits or ImageLimits()
    classes = sorted({label for _, label in items})
    if len(classes) < 2:
        raise InvalidMetadata("classification needs at least two classes")
    taxonomy = Taxonomy(
        templates=list(config.templates),
        ocr=OcrFusion(enabled=config.ocr),
        dimensions=[Dimension(name="class", labels=[Label(name=c) for c in classes])],
    )
    label_set = embed_taxonomy(encoder, taxonomy)
    vectors = encoder.encode_images(_images([p for p, _ in items], limits, encoder.input_size))
    texts = None
    if config.ocr and reader is not None:
        texts = []
        for path, _ in items:
            image = decode_image(path.read_bytes(), limits).image
            words = [t for t, c in reader.read(image) if c >= taxonomy.ocr.min_confidence]
            texts.append(" ".join(words).lower() or None)
    results = score_vectors(encoder, vectors, label_set, texts)
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    top1 = top5 = 0
    for (_, truth), result in zip(items, results, strict=True):
        ranked = [label for label, _ in result.dimensions[0].scores]
        confusion[index[truth], index[ranked[0]]] += 1
        top1 += ranked[0] == truth
        top5 += truth in ranked[:5]
    per_class = {}
    for c, i in index.items():
        predicted, actual = int(confusion[:, i].sum()), int(confusion[i, :].sum())
        per_class[c] = {
            "precision": float(confusion[i, i] / predicted) if predicted else 0.0,
            "recall": float(confusion[i, i] / actual) if actual else 0.0,
            "support": actual,
        }
    n = len(items)
    return ClassificationReport(
        config.name, n, top1 / n, top5 / n, classes, per_class, confusion.tolist()
    )


def retrieve(
    encoder: Encoder,
    pairs: Sequence[tuple[str, Path]],
    config: Config,
    limits: ImageLimits | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> RetrievalReport:
    """Text-to-image recall@k: is a caption's image among the k nearest images?"""
    limits = limits or ImageLimits()
    paths = sorted({p for _, p in pairs})
    position = {p: i for i, p in enumerate(paths)}
    images = encoder.encode_images(_images(paths, limits, encoder.input_size))
    texts = encoder.encode_texts([c for c, _ in pairs])
    sims = texts @ images.T
    # Rank of the caption's own image: how many images score strictly higher.
    own = sims[np.arange(len(pairs)), [position[p] for _, p in pairs]]
    rank = (sims > own[:, None]).sum(axis=1)
    recall = {f"recall@{k}": float(np.mean(rank < k)) for k in ks}
    return RetrievalReport(config.name, len(pairs), recall)


def confusion_png(report: ClassificationReport, path: Path, cell: int = 28) -> None:
    """A confusion-matrix heat map: rows are true classes, columns predicted.

    Class names are written in full (column names turned upright, so long names need no
    truncation) and both axes carry a title, so the picture reads without the JSON."""
    classes, matrix = report.classes, np.asarray(report.confusion)
    font = ImageFont.load_default()
    longest = max(int(font.getlength(c)) for c in classes) + 8
    title_h = 16
    left = title_h + longest  # "true class" title, then row names
    top = title_h + longest  # "predicted class" title, then upright column names
    width = left + cell * len(classes) + 10
    height = top + cell * len(classes) + 10
    image = Image.new("RGB", (max(width, left + 120), height), "white")
    draw = ImageDraw.Draw(image)
    peak = max(1, int(matrix.max()))
    for i, row in enumerate(matrix):
        draw.text((title_h + 2, top + i * cell + cell // 3), classes[i], fill="black", font=font)
        for j, value in enumerate(row):
            shade = 255 - int(200 * value / peak)
            x, y = left + j * cell, top + i * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(shade, shade, 255))
            draw.text((x + 4, y + cell // 3), str(value), fill="black", font=font)
    for j, c in enumerate(classes):
        label = Image.new("RGB", (longest, cell), "white")
        ImageDraw.Draw(label).text((4, cell // 3), c, fill="black", font=font)
        image.paste(label.rotate(90, expand=True), (left + j * cell, title_h))
    span = cell * len(classes)
    for_columns = "predicted class"
    draw.text(
        (left + max(0, (span - font.getlength(for_columns)) // 2), 2),
        for_columns,
        fill="black",
        font=font,
    )
    axis = Image.new("RGB", (max(span, 80), title_h), "white")
    for_rows = "true class"
    ImageDraw.Draw(axis).text(
        (max(0, (span - font.getlength(for_rows)) // 2), 2), for_rows, fill="black", font=font
    )
    image.paste(axis.rotate(90, expand=True), (0, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def markdown(
    classification: Sequence[ClassificationReport], retrieval: Sequence[RetrievalReport]
) -> str:
    """The comparison table, then per-class figures of each configuration."""
    lines: list[str] = []
    if classification:
        lines += ["| configuration | n | top-1 | top-5 |", "|---|---|---|---|"]
        lines += [f"| {r.config} | {r.n} | {r.top1:.3f} | {r.top5:.3f} |" for r in classification]
        for r in classification:
            lines += ["", f"### {r.config}", "", "| class | precision | recall | support |"]
            lines += ["|---|---|---|---|"]
            lines += [
                f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {int(m['support'])} |"
                for c, m in r.per_class.items()
            ]
    if retrieval:
        ks = list(retrieval[0].recall)
        lines += ["", "| configuration | n | " + " | ".join(ks) + " |"]
        lines += ["|---|---|" + "---|" * len(ks)]
        lines += [
            f"| {r.config} | {r.n} | " + " | ".join(f"{r.recall[k]:.3f}" for k in ks) + " |"
            for r in retrieval
        ]
    return "\n".join(lines) + "\n"


def write_reports(
    out: Path,
    classification: Sequence[ClassificationReport],
    retrieval: Sequence[RetrievalReport],
) -> dict[str, Any]:
    """report.json, report.md and one confusion PNG per configuration under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    pngs = []
    for n, r in enumerate(classification, 1):
        png = out / f"confusion-{n}.png"
        confusion_png(r, png)
        pngs.append(str(png))
    data = {
        "classification": [asdict(r) for r in classification],
        "retrieval": [asdict(r) for r in retrieval],
        "confusion_png": pngs,
    }
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "report.md").write_text(markdown(classification, retrieval))
    return data
