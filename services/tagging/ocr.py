"""Text in images, read with RapidOCR (ONNX models that ship inside its PyPI wheel).

The engine is heavy to build (three ONNX sessions), so it is built on first use, once per
process, and shared; nothing is downloaded.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from PIL import Image


class RapidOcrReader:
    """OCR for the tagger's text fusion and the evaluation command."""

    def __init__(self) -> None:
        self._engine: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._engine is None:
                from rapidocr_onnxruntime import RapidOCR  # heavy: import on first use

                self._engine = RapidOCR()
            return self._engine

    def read(self, image: Image.Image) -> list[tuple[str, float]]:
        """Every text line found, with the recogniser's confidence, top to bottom."""
        engine = self._get()
        result, _ = engine(np.asarray(image.convert("RGB")))
        lines = sorted(
            result or [], key=lambda r: (min(p[1] for p in r[0]), min(p[0] for p in r[0]))
        )
        return [(str(text), float(conf)) for _, text, conf in lines]
