"""The architecture in imports: ferry/ is the shared core, the three processes stay apart.

- ``ferry`` never imports ``indexer``, ``relayer`` or ``gateway`` (only ``ferry/cli.py``
  loads them, lazily, by module name) and never imports arq, strawberry or starlette.
- ``indexer``, ``relayer`` and ``gateway`` never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = {"indexer", "relayer", "gateway"}
FORBIDDEN = {
    "ferry": PROCESSES | {"arq", "strawberry", "starlette"},
    "indexer": {"relayer", "gateway"},
    "relayer": {"indexer", "gateway"},
    "gateway": {"indexer", "relayer"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_the_layering(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    offences = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package]) for path in files
    }
    offences = {k: v for k, v in offences.items() if v}
    assert not offences, f"{package}/ imports what it must not: {offences}"
