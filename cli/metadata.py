"""Read per-file metadata from a CSV or JSONL file keyed by filename."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from services.errors import InvalidMetadata

_KEY_COLUMNS = ("filename", "path", "file")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")


def _typed(value: str) -> Any:
    """CSV cells are text; numbers without leading zeros become numbers so ranges work, and
    ``true``/``false`` booleans, as the filter syntax reads them."""
    if _NUMBER.fullmatch(value):
        return float(value) if "." in value else int(value)
    if value.lower() in ("true", "false"):  # spreadsheets write TRUE and FALSE
        return value.lower() == "true"
    return value


def load_metadata(path: Path) -> dict[str, dict[str, Any]]:
    """Map of filename (as written in the file) to its metadata.

    Raises:
        InvalidMetadata: unreadable file, missing filename column, or a bad row.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidMetadata(f"cannot read metadata file {path}: {e}") from e
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidMetadata(f"{path}:{n}: not valid JSON: {e}") from e
            if not isinstance(row, dict):
                raise InvalidMetadata(f"{path}:{n}: each line must be a JSON object")
            rows.append(row)
    else:
        reader = csv.DictReader(text.splitlines())
        rows = [
            {k: _typed(v) for k, v in row.items() if k and v not in (None, "")} for row in reader
        ]
    table: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(rows, 1):
        key_col = next((c for c in _KEY_COLUMNS if c in row), None)
        if key_col is None:
            raise InvalidMetadata(f"{path}: row {n} has no 'filename' column")
        name = str(row.pop(key_col))
        table[name] = row
    return table


def metadata_for(table: dict[str, dict[str, Any]], file: Path, root: Path) -> dict[str, Any]:
    """Metadata for a file, matched by its path relative to the root, then by its name."""
    try:
        rel = file.relative_to(root).as_posix()
    except ValueError:
        rel = file.name
    return table.get(rel) or table.get(file.name) or {}
