"""The package table (``dhtfs/__init__.py``, each package's docstring): which package may
import which, no import cycle between modules (function-level imports included), and the size
limits that keep modules and folders readable."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dhtfs"

# package -> the packages it may import (``base`` is implied for everyone but itself)
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "trust": set(),
    "net": {"trust"},
    "store": set(),
    "dht": {"trust", "net"},
    "blocks": {"net", "dht", "store"},
    "oplog": {"trust", "net", "dht"},
    "meta": {"oplog"},
    "fs": {"net", "store", "blocks", "meta"},
    "gateway": {"store", "meta", "fs"},
    "runtime": {"trust", "net", "store", "dht", "blocks", "oplog", "meta", "fs", "gateway"},
    "sim": {"net", "dht", "store", "blocks", "oplog"},
    "commands": {"trust", "net", "store", "dht", "blocks", "oplog", "meta", "fs", "gateway",
                 "runtime"},
    "": {"trust", "net", "store", "dht", "blocks", "oplog", "meta", "fs", "gateway",
         "runtime", "commands"},  # the entry programs: dhtfs.cli, dhtfs.mount, dhtfs.umount
}
MAX_MODULE_LINES = 520
MAX_FOLDER_MODULES = 12


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every dhtfs module ``name`` imports, at any depth of its code."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


def package_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and name in PACKAGES) else ""


PACKAGES = {f"dhtfs.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}


def test_every_package_is_in_the_table() -> None:
    assert {p.split(".")[1] for p in PACKAGES} == set(ALLOWED) - {""}


def test_packages_import_only_what_the_table_allows() -> None:
    offenders = []
    for name in MODULES:
        if name == "dhtfs":
            continue
        own = package_of(name)
        allowed = ALLOWED[own] | {own, "base"}
        for target in sorted(imports_of(name)):
            if target == "dhtfs":
                continue
            if package_of(target) not in allowed:
                offenders.append(f"{name} imports {target}")
    assert len(MODULES) > 60  # the scan really looked
    assert not offenders, "\n".join(offenders)


def test_no_import_cycles() -> None:
    graph = {name: imports_of(name) - {"dhtfs"} for name in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_modules_and_folders_stay_small() -> None:
    long_modules = [f"{n}: {len(p.read_text().splitlines())} lines" for n, p in MODULES.items()
                    if len(p.read_text().splitlines()) > MAX_MODULE_LINES]
    per_folder: dict[Path, int] = defaultdict(int)
    for p in MODULES.values():
        if p.name != "__init__.py":
            per_folder[p.parent] += 1
    big_folders = [f"{f.name}: {n} modules" for f, n in per_folder.items()
                   if n > MAX_FOLDER_MODULES]
    assert not long_modules and not big_folders, "\n".join(long_modules + big_folders)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_package_says_what_it_holds_and_may_import(package: str) -> None:
    init = PACKAGE / package.split(".")[1] / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc and "May import" in doc
