"""InodeMap: a directory's number is only handed out at the place the kernel has it; numbers
are never reused."""

from __future__ import annotations

from pathlib import Path

from dhtfs.fs.inodes import InodeMap
from dhtfs.meta.schema import connect

ROOT = 1
D, E, F = b"D" * 16, b"E" * 16, b"F" * 16


def held(inodes: InodeMap, obj: bytes, parent: int, name: bytes) -> int:
    """A lookup reply for a directory: its number, counted as held by the kernel."""
    ino = inodes.dir_ino(obj, parent, name)
    inodes.remember(ino)
    return ino


def test_directory_moved_behind_the_kernel_gets_a_new_number_the_old_one_still_resolves() -> None:
    inodes = InodeMap(connect(":memory:"))
    a, b = held(inodes, E, ROOT, b"a"), held(inodes, F, ROOT, b"b")
    d = held(inodes, D, a, b"D")
    assert held(inodes, D, a, b"D") == d  # the same place: the same number (a revalidation)
    moved = held(inodes, D, b, b"D")  # the same directory found in another directory
    assert moved != d and inodes.obj_of(moved) == inodes.obj_of(d) == D
    assert inodes.kernel_inos(D) == [moved, d]
    assert held(inodes, D, b, b"D") == moved
    renamed_in_place = held(inodes, D, b, b"D2")  # another name in the same directory
    assert renamed_in_place not in (d, moved)
    inodes.forget(d, 2)  # the old inode leaves the kernel (both lookups): gone for good
    assert d not in inodes.kernel_inos(D) and inodes.obj_of(d) is None


def test_the_kernels_own_renames_and_rmdirs_keep_or_retire_numbers() -> None:
    inodes = InodeMap(connect(":memory:"))
    a, b = held(inodes, E, ROOT, b"a"), held(inodes, F, ROOT, b"b")
    d = held(inodes, D, a, b"D")
    inodes.renamed((a, b"D"), (b, b"X"), D, exchange=False)  # the kernel moved its dentry
    assert held(inodes, D, b, b"X") == d
    inodes.renamed((ROOT, b"a"), (ROOT, b"b"), E, exchange=True)
    assert held(inodes, E, ROOT, b"b") == a and held(inodes, F, ROOT, b"a") == b
    inodes.renamed((ROOT, b"b"), (ROOT, b"a"), E, exchange=False)  # F replaced: dead
    assert held(inodes, F, ROOT, b"a") != b  # (come back by a concurrent op: a new inode)
    inodes.removed((b, b"X"))  # rmdir here: the kernel made that inode dead
    assert held(inodes, D, b, b"X") != d


def test_a_forgotten_directory_keeps_its_number_and_numbers_are_never_reused(
    tmp_path: Path,
) -> None:
    db = connect(tmp_path / "ns.db")
    inodes = InodeMap(db)
    d = held(inodes, D, ROOT, b"D")
    inodes.forget(d, 1)
    assert inodes.dir_ino(D, ROOT, b"elsewhere") == d  # the kernel holds nothing: no alias
    db.execute("BEGIN IMMEDIATE")
    e = inodes.ino_of(E)
    db.execute("ROLLBACK")  # the namespace transaction the allocation was in failed
    f = inodes.ino_of(F)
    assert len({d, e, f}) == 3 and inodes.obj_of(e) == E and inodes.obj_of(f) == F
    again = InodeMap(db)  # a remount: numbers go on above every one stored
    assert again.ino_of(D) == d and again.ino_of(b"G" * 16) > f


def test_a_follow_keeps_the_number_once_its_walk_succeeded_and_retires_it_otherwise() -> None:
    inodes = InodeMap(connect(":memory:"))
    a, b = held(inodes, E, ROOT, b"a"), held(inodes, F, ROOT, b"b")
    d = held(inodes, D, a, b"D")
    assert inodes.dir_ino(D, b, b"D", follow=True) == d  # the follower may move the old entry
    assert inodes.dir_ino(D, b, b"D") != d  # nobody else may while that is pending
    inodes.followed(True)
    assert inodes.placed[d] == (b, b"D")

    inodes = InodeMap(connect(":memory:"))
    a, b = held(inodes, E, ROOT, b"a"), held(inodes, F, ROOT, b"b")
    d = held(inodes, D, a, b"D")
    assert inodes.dir_ino(D, b, b"D", follow=True) == d
    inodes.followed(False)  # the walk failed: where the kernel has it is not known
    assert inodes.placed[d] is None

    inodes = InodeMap(connect(":memory:"))
    a, b = held(inodes, E, ROOT, b"a"), held(inodes, F, ROOT, b"b")
    d = held(inodes, D, a, b"D")
    assert inodes.dir_ino(D, b, b"D", follow=True) == d
    inodes.renamed((b, b"D"), (a, b"X"), D, exchange=False)  # moved here during the walk
    inodes.followed(True)
    assert inodes.placed[d] is None


def test_a_files_number_is_the_same_on_every_node_and_never_stored() -> None:
    from dhtfs.fs.inodes import STABLE_BASE, stable_number

    here, there = InodeMap(connect(":memory:")), InodeMap(connect(":memory:"))
    dir_number = held(there, D, ROOT, b"d")  # numbers allocated there first change nothing
    assert here.file_ino(F) == there.file_ino(F) == stable_number(F) >= STABLE_BASE
    assert dir_number < STABLE_BASE and here.obj_of(stable_number(F)) == F
    assert here.db.execute("SELECT count(*) FROM inodes WHERE obj=?", (F,)).fetchone()[0] == 0


def test_a_colliding_file_number_falls_back_to_an_allocated_one_while_the_kernel_holds_it(
    monkeypatch,
) -> None:
    import dhtfs.fs.inodes as inodes_module

    monkeypatch.setattr(inodes_module, "stable_number", lambda obj: inodes_module.STABLE_BASE)
    inodes = InodeMap(connect(":memory:"))
    e = inodes.file_ino(E)
    inodes.remember(e)
    f = inodes.file_ino(F)  # the same hash: F must not get E's number
    assert f != e and f < inodes_module.STABLE_BASE and inodes.collisions == 1
    assert inodes.obj_of(e) == E and inodes.obj_of(f) == F
    inodes.remember(f)
    inodes.forget(e, 1)  # E leaves the kernel: its number is free again, for F next time
    inodes.forget(f, 1)
    assert inodes.file_ino(F) == inodes_module.STABLE_BASE


def test_every_place_a_held_number_was_given_at_is_known_until_the_kernel_forgets_it() -> None:
    inodes = InodeMap(connect(":memory:"))
    d = held(inodes, D, ROOT, b"d")
    f = inodes.file_ino(F)
    for place in ((ROOT, b"f"), (d, b"hard link"), (ROOT, b"f")):
        inodes.remember(f)
        inodes.entered(f, place)
    assert sorted(inodes.held_places()) == sorted([(ROOT, b"d"), (ROOT, b"f"), (d, b"hard link")])
    inodes.forget(f, 3)
    assert inodes.held_places() == [(ROOT, b"d")]
