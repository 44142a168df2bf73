"""The module map's one hard rule: ``dhtfs.node`` (and the simulator) never import ``dhtfs.fs``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dhtfs"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_node_and_sim_never_import_fs() -> None:
    offenders = []
    for folder in ("node", "sim"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            bad = {
                m for m in imported_modules(path) if m == "dhtfs.fs" or m.startswith("dhtfs.fs.")
            }
            if bad:
                offenders.append(f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}")
    assert (PACKAGE / "node" / "chunkstore.py").exists()  # the scan really looked somewhere
    assert not offenders, "\n".join(offenders)
