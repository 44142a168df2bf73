"""Every ``dhtfs.…`` name that docs/*.md, the README and the code's own docstrings and comments
cite exists: a module, or a name defined at the top of one (then a member of it, if a class).
So a module that moves or a function that is renamed cannot leave the architecture document
or a docstring pointing at nothing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CITED = re.compile(r"(?<![\w/.])dhtfs(?:\.[A-Za-z_]\w*)+")
NOT_MODULES = {"dhtfs.lifecycle", "dhtfs.log"}  # a logger's name, the state directory's log file


def module_trees() -> dict[str, ast.Module]:
    trees = {}
    for path in (REPO / "dhtfs").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        trees[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = ast.parse(
            path.read_text())
    return trees


def defined(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """Names bound at the top of ``body`` (defs, classes, assignments, imports)."""
    names: dict[str, ast.AST] = {}
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update({n.id: node for n in ast.walk(target) if isinstance(n, ast.Name)})
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update({(a.asname or a.name).split(".")[0]: node for a in node.names})
    return names


def members(cls: ast.ClassDef) -> set[str]:
    """A class's methods and attributes (``self.x = …`` anywhere in it included)."""
    names = set(defined(cls.body))
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "self" and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return names


def all_members(cls: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> set[str] | None:
    """Members of ``cls`` and of its bases defined in dhtfs; None when a base is defined
    elsewhere (its members cannot be known here)."""
    names = members(cls)
    for base in cls.bases:
        base_name = base.id if isinstance(base, ast.Name) else None
        if base_name not in classes:
            return None
        inherited = all_members(classes[base_name], classes)
        if inherited is None:
            return None
        names |= inherited
    return names


def classes_of(trees: dict[str, ast.Module]) -> dict[str, ast.ClassDef]:
    return {n.name: n for tree in trees.values() for n in ast.walk(tree)
            if isinstance(n, ast.ClassDef)}


def resolves(cited: str, trees: dict[str, ast.Module], classes: dict[str, ast.ClassDef]) -> bool:
    parts = cited.rstrip(".").split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        if module in trees:
            rest = parts[cut:]
            if not rest:
                return True
            top = defined(trees[module].body).get(rest[0])
            if top is None:
                return False
            if len(rest) == 1 or not isinstance(top, ast.ClassDef):
                return True  # deeper parts of a function or constant are prose
            known = all_members(top, classes)
            return known is None or rest[1] in known
    return False


def test_every_cited_dhtfs_name_exists() -> None:
    trees = module_trees()
    classes = classes_of(trees)
    sources = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md",
               *sorted((REPO / "dhtfs").rglob("*.py"))]
    missing = []
    for path in sources:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for cited in CITED.findall(line):
                if cited not in NOT_MODULES and not resolves(cited, trees, classes):
                    missing.append(f"{path.relative_to(REPO)}:{lineno}: {cited}")
    assert len(trees) > 60  # the scan really looked
    assert not resolves("dhtfs.node.chunkstore", trees, classes)  # and can fail: a module gone
    assert not resolves("dhtfs.blocks.node.BlockNode.put_chunk_detailed", trees, classes)
    assert not missing, "\n".join(missing)
