"""``dhtfs fsck`` in a mount: the namespace's invariants, and the node's blocks
(``dhtfs.blocks.verify``), behind the control method ``fsck``.

    {"namespace": true} → {"objects", "links", "extents", "referenced" (distinct blocks live
                           files use), "held" (of those, stored here), "problems": [str]}
    anything else       → ``dhtfs.blocks.verify.control`` (block pages, repair)

Checked (each one stated where the namespace keeps it; a problem names the entry):
- the root exists and is a directory;
- every link names an existing object of the link's kind, under an existing directory;
  names are unique per directory; a directory has one link;
- every directory is reachable from the root (no orphaned subtree, no cycle);
- every stored piece list (``dhtfs.meta.extents``) is sorted, non-overlapping, with positive
  lengths, inside its chunk, with a 32-byte block ID, and no piece reaches past its file's
  size (``dhtfs.meta.versions``).

It reads the database on the trio thread (as every namespace call does), after
``write_back``; a namespace of a million entries takes about a second.
"""

from __future__ import annotations

import stat
from collections import defaultdict
from typing import Any

import trio

from dhtfs.blocks import verify
from dhtfs.meta.extents import unpack_pieces
from dhtfs.meta.ops import ROOT_OBJ
from dhtfs.net.network import Message

MAX_PROBLEMS = 100


def _name(parent: bytes, name: bytes) -> str:
    return f"{parent.hex()[:12]}/{name.decode(errors='replace')}"


def namespace_problems(db: Any) -> tuple[list[str], dict[str, int]]:
    """The invariant violations of the namespace in ``db`` (at most ``MAX_PROBLEMS``) and
    counts of what was checked."""
    problems: list[str] = []

    def problem(text: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append(text)

    kinds = dict(db.execute("SELECT obj, kind FROM objects").fetchall())
    if stat.S_IFMT(kinds.get(ROOT_OBJ, 0)) != stat.S_IFDIR:
        problem("the root directory is missing or not a directory")
    links = db.execute("SELECT parent, name, obj, kind FROM links").fetchall()
    children: dict[bytes, list[bytes]] = defaultdict(list)
    dir_links: dict[bytes, int] = defaultdict(int)
    names: set[tuple[bytes, bytes]] = set()
    for parent, name, obj, kind in links:
        where = _name(parent, name)
        if obj not in kinds:
            problem(f"{where}: names object {obj.hex()[:12]}, which does not exist")
        elif stat.S_IFMT(kinds[obj]) != stat.S_IFMT(kind):
            problem(f"{where}: link kind {kind:o} differs from its object's {kinds[obj]:o}")
        if stat.S_IFMT(kinds.get(parent, 0)) != stat.S_IFDIR:
            problem(f"{where}: its parent is not an existing directory")
        if (parent, name) in names:
            problem(f"{where}: the name is used twice in one directory")
        names.add((parent, name))
        if stat.S_IFMT(kind) == stat.S_IFDIR:
            dir_links[obj] += 1
            children[parent].append(obj)
    for obj, n in dir_links.items():
        if n > 1:
            problem(f"directory {obj.hex()[:12]} has {n} links (a directory has one)")
    reached = {ROOT_OBJ}
    todo = [ROOT_OBJ]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in reached:
                reached.add(child)
                todo.append(child)
    for obj in dir_links:
        if obj not in reached:
            problem(f"directory {obj.hex()[:12]} is not reachable from the root")

    sizes = {obj: (size, cs) for obj, size, cs in db.execute(
        "SELECT obj, size, chunk_size FROM objects WHERE obj IN (SELECT obj FROM links)")}
    rows = 0
    for obj, idx, blob in db.execute("SELECT obj, idx, pieces FROM extents"):
        if obj not in sizes:
            continue  # no name left: not a live file
        rows += 1
        size, cs = sizes[obj]
        end = 0
        for pos, length, block, boff in unpack_pieces(blob):
            where = f"file {obj.hex()[:12]} chunk {idx}"
            if pos < end or length <= 0 or boff < 0:
                problem(f"{where}: pieces overlap, are out of order or empty")
            if cs <= 0 or pos + length > cs:
                problem(f"{where}: a piece reaches past the chunk size {cs}")
            if idx * cs + pos + length > size:
                problem(f"{where}: a piece reaches past the file size {size}")
            if not isinstance(block, bytes) or len(block) != 32:
                problem(f"{where}: a piece has a malformed block id")
            end = pos + length
    return problems, {"objects": len(kinds), "links": len(links), "extents": rows}


async def control(fs: Any, node: Any, args: Message) -> Message:
    """The ``fsck`` control method of a mount (see the module docstring)."""
    if not args.get("namespace"):
        return await verify.control(node, fs.store, args)
    ns = fs.namespace
    ns.write_back()
    problems, counts = namespace_problems(ns.db)
    referenced = set(ns.linked_blocks())
    held = await trio.to_thread.run_sync(lambda: sum(1 for b in referenced if fs.store.has(b)))
    return {**counts, "referenced": len(referenced), "held": held, "problems": problems}
