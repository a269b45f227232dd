"""Imports go one way: supervisor -> workers -> workers.common (the package
docstrings say why)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules_under(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", modules_under("workers"), ids=lambda p: str(p.relative_to(ROOT)))
def test_workers_never_import_the_supervisor(path: Path) -> None:
    bad = {m for m in imported_modules(path) if m == "supervisor" or m.startswith("supervisor.")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules_under("workers/common"), ids=lambda p: str(p.relative_to(ROOT)))
def test_common_imports_only_common(path: Path) -> None:
    bad = {m for m in imported_modules(path)
           if (m == "workers" or m.startswith("workers.")) and not m.startswith("workers.common")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
