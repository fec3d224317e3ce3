"""The ``resilience`` library stands alone: it never imports the project around it.

It may depend on the standard library, Django, DRF, Celery, Redis and its chosen
libraries, and on itself. Never on the domain apps, the project's shared code and
settings, the chaos rig, the benchmarks, the consumer client or the tests: a feature
applies the library by declaration, so the library cannot know any feature. Its own
tests (``resilience/tests``) are not the library and may use the project's test helpers.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "resilience"
FORBIDDEN = {"accounts", "orders", "webhooks", "common", "config", "chaos", "bench", "client"}
FORBIDDEN |= {"tests", "conftest", "fleet"}


def imported_modules(source: str) -> set[str]:
    """Every absolute module an import statement names, nested imports included."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def library_files() -> list[Path]:
    return [
        path
        for path in sorted(LIBRARY.rglob("*.py"))
        if "tests" not in path.relative_to(LIBRARY).parts
    ]


def test_the_checker_sees_top_level_and_nested_imports():
    source = "import orders.models\ndef f():\n    from chaos.scenarios import run\n"
    assert {m.split(".")[0] for m in imported_modules(source)} == {"orders", "chaos"}


def test_the_library_imports_nothing_of_the_project():
    files = library_files()
    assert len(files) > 30  # the walk found the library
    leaks = {
        str(path.relative_to(ROOT)): sorted(
            module
            for module in imported_modules(path.read_text())
            if module.split(".")[0] in FORBIDDEN
        )
        for path in files
    }
    leaks = {path: modules for path, modules in leaks.items() if modules}
    assert not leaks, f"the library imports the project: {leaks}"
