"""Scrub of names and metadata (README "Scrub").

Before the files of a directory, a scrub compares its names across the
voting children: an entry a child lacks (`missing`), has where the others
do not (`extra`) or has as another kind of file (`type`); and, for the
entries they share, the mode, owner, symlink target and extended
attributes, each voted on its own (`mode`, `owner`, `target`, `xattrs`).
Each is one SCRUB_MISMATCH finding naming the entry and the child; a
`scrub start` changes nothing, a `scrub repair` makes the child what the
winning children have. A name without quorum is a `no-quorum` finding and
is left alone.

The differences are planted in the children directly while the mount is
up, so every finding is known exactly; the proof is the event log and
the children's trees.
"""

import os

import pytest

from qfs import read_file, write_file
from control_util import assert_same_tree, tree_state
from test_scrub import run_scrub


def names_of(found):
    """(path, child, kind, repaired) of each finding, sorted."""
    return sorted(((d["path"], d["node-name"], d["kind"], d["repaired"])
                   for d in found), key=repr)


def build_tree(m):
    """Entries of every kind, written through the mount."""
    os.makedirs(m.path("d/sub"))
    os.makedirs(m.path("tree/a/b"))
    write_file(m.path("f1"), b"one" * 1000)
    write_file(m.path("d/f2"), b"two" * 1000)
    write_file(m.path("d/f3"), b"three" * 1000)
    write_file(m.path("d/sub/file"), b"deep" * 1000)
    write_file(m.path("tree/a/b/leaf"), b"leaf" * 3000)
    write_file(m.path("tree/top"), b"top")
    os.symlink("target", m.path("d/ln"))
    write_file(m.path("x"), b"x")
    os.setxattr(m.path("x"), "user.a", b"1")


def plant(m):
    """One difference of each kind, on varying children; the findings a
    scrub must report, as (path, child index, kind)."""
    c = m.children
    os.unlink(m.child_file(0, "f1"))
    write_file(m.child_file(1, "d/extra"), b"not voted")
    os.unlink(m.child_file(2, "d/f3"))
    os.mkdir(m.child_file(2, "d/f3"))
    os.chmod(m.child_file(0, "d/f2"), 0o600)
    os.chown(m.child_file(1, "d/f2"), 1234, 1234)
    os.unlink(m.child_file(2, "d/ln"))
    os.symlink("elsewhere", m.child_file(2, "d/ln"))
    os.setxattr(m.child_file(0, "x"), "user.a", b"2")
    os.unlink(m.child_file(1, "d/sub/file"))
    for rel in ("tree/a/b/leaf", "tree/top"):
        os.unlink(m.child_file(2, rel))
    for rel in ("tree/a/b", "tree/a", "tree"):
        os.rmdir(m.child_file(2, rel))
    return [("f1", c[0], "missing"), ("d/extra", c[1], "extra"),
            ("d/f3", c[2], "type"), ("d/f2", c[0], "mode"),
            ("d/f2", c[1], "owner"), ("d/ln", c[2], "target"),
            ("x", c[0], "xattrs"), ("d/sub/file", c[1], "missing"),
            ("tree", c[2], "missing")]


@pytest.mark.timeout(90)
def test_every_kind_of_name_difference_is_found_then_repaired(
        backing, quorum):
    m = quorum(n=3)
    build_tree(m)
    expected = plant(m)
    before = [tree_state(c) for c in m.children]

    done, found, _ = run_scrub(m)
    assert names_of(found) == sorted(
        ((p, c, k, False) for p, c, k in expected), key=repr)
    assert done["mismatches"] == len(expected) and done["repaired"] == 0
    assert [tree_state(c) for c in m.children] == before, \
        "scrub start changed a child"

    done, found, _ = run_scrub(m, "scrub repair rate=0")
    assert names_of(found) == sorted(
        ((p, c, k, True) for p, c, k in expected), key=repr)
    assert done["repaired"] == len(expected)
    state = assert_same_tree(m.children[0], m.children[1])
    assert_same_tree(m.children[0], m.children[2])
    assert "d/extra" not in state[0]
    assert read_file(m.path("d/f3")) == b"three" * 1000
    assert read_file(m.path("tree/a/b/leaf")) == b"leaf" * 3000
    assert os.readlink(m.path("d/ln")) == "target"
    assert os.getxattr(m.path("x"), "user.a") == b"1"

    _, found, _ = run_scrub(m)
    assert found == [], "a second scrub still finds %r" % names_of(found)


@pytest.mark.timeout(60)
def test_a_repaired_copy_takes_the_writes_that_follow(tmpfs_dir, quorum):
    # The repair replaces a child's copy; the mount must write to the new
    # one, not to a handle of the copy it removed.
    m = quorum(n=3)
    os.symlink("first", m.path("ln"))
    write_file(m.path("img"), b"a" * 8192)
    os.unlink(m.child_file(1, "ln"))
    os.symlink("second", m.child_file(1, "ln"))
    os.unlink(m.child_file(2, "img"))
    os.mkdir(m.child_file(2, "img"))
    _, found, _ = run_scrub(m, "scrub repair rate=0")
    assert names_of(found) == [("img", m.children[2], "type", True),
                               ("ln", m.children[1], "target", True)]
    with open(m.path("img"), "r+b") as f:
        f.write(b"b" * 4096)
    for i in range(3):
        assert read_file(m.child_file(i, "img")) == \
            b"b" * 4096 + b"a" * 4096, m.children[i]
        assert os.readlink(m.child_file(i, "ln")) == "first"


@pytest.mark.timeout(60)
def test_a_name_without_quorum_is_reported_and_left_alone(tmpfs_dir,
                                                          quorum):
    m = quorum(n=2, threshold=2)
    write_file(m.child_file(0, "lonely"), b"only here")
    done, found, _ = run_scrub(m, "scrub repair rate=0")
    assert names_of(found) == [("lonely", None, "no-quorum", False)]
    assert done["unrecoverable"] == 1 and done["repaired"] == 0
    assert read_file(m.child_file(0, "lonely")) == b"only here"
    assert not os.path.lexists(m.child_file(1, "lonely"))
