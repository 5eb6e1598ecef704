"""The floors of the code base: services at the bottom, then workers and demo, then web,
then cli and bench; the domain core imports no interface, and nothing imports upwards."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INTERFACES = {"flask", "celery", "celery_batches", "werkzeug", "kombu", "web", "workers", "cli"}
# The one piece of workers that web and cli may import: the Celery dispatcher, passed to
# services.runtime.build_runtime when a broker is configured.
DISPATCHER_WIRING = "workers.dispatch"


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path, with_type_checking: bool = True) -> set[str]:
    """Fully qualified modules a file imports (``if TYPE_CHECKING`` blocks optional)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    if not with_type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(n) for n in ast.walk(node))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(folder: str) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, folder
    return files


def _offenders(
    folder: str, forbidden: set[str], allowed: frozenset[str] = frozenset()
) -> dict[str, set[str]]:
    """Files under ``folder`` importing a forbidden top-level package (outside ``allowed``)."""
    out = {}
    for f in _files(folder):
        bad = {
            m
            for m in _imports(f)
            if m.split(".")[0] in forbidden
            and not any(m == a or m.startswith(a + ".") for a in allowed)
        }
        if bad:
            out[str(f.relative_to(ROOT))] = bad
    return out


def test_services_import_no_interfaces() -> None:
    assert _offenders("services", INTERFACES | {"demo", "bench", "tests"}) == {}


def test_web_and_cli_reach_workers_only_for_the_dispatcher() -> None:
    for folder in ("web", "cli"):
        assert (
            _offenders(folder, {"workers", "tests", "bench"}, frozenset({DISPATCHER_WIRING})) == {}
        )


def test_workers_and_demo_sit_below_web() -> None:
    assert _offenders("workers", {"web", "cli", "bench", "tests", "demo"}) == {}
    assert _offenders("demo", {"web", "cli", "bench", "tests", "workers"}) == {}


def test_bench_does_not_import_tests() -> None:
    assert _offenders("bench", {"tests"}) == {}


def test_no_import_cycles_in_services() -> None:
    graph = {
        _module(f): {m for m in _imports(f, with_type_checking=False) if m.startswith("services")}
        for f in _files("services")
    }
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_each_capability_says_what_it_holds() -> None:
    packages = [p for p in sorted((ROOT / "services").iterdir()) if (p / "__init__.py").is_file()]
    names = {p.name for p in packages}
    assert {"ingest", "tagging", "moderation", "auth", "jobs", "search", "index"} <= names
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and "\n" not in doc.strip(), (
            f"{package.name}/__init__.py needs a one-line docstring"
        )


def test_importing_services_loads_no_model() -> None:
    code = (
        "import services.runtime, services.encoder, sys; "
        "print('sentence_transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "False"
