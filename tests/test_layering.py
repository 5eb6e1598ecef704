"""The domain core stays free of the interfaces: no Flask or Celery under services/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"flask", "celery", "web", "workers", "cli", "werkzeug", "kombu"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_services_import_no_interfaces() -> None:
    files = list((ROOT / "services").rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(ROOT)): _imports(f) & FORBIDDEN for f in files}
    assert {f: bad for f, bad in offenders.items() if bad} == {}


def test_importing_services_loads_no_model() -> None:
    import subprocess
    import sys

    code = "import services.container, services.encoder, sys; print('sentence_transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "False"
