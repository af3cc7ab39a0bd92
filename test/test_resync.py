"""Resync of a new or re-synced child through .control (README "Runtime control",
Adding a child).

A child added with `add PATH` receives every write at once but does not
vote until a background copy of the voted tree has filled it; `resync
NAME` sends a member through the same copy. What the copy must get right
is everything an image directory holds: sparse files (holes stay holes),
hard links, symlinks, device nodes and FIFOs, modes, owners, xattrs and
times; and, because VMs keep running, live writes during the copy must
land on the new child and never be overwritten by older copied data.

The proof is a whole-tree comparison of the new child with the old ones,
done on the children directly: the data map by SEEK_DATA/SEEK_HOLE, the
data's hash, metadata and hard-link groups (control_util.tree_state).
Writers record what they wrote, so the mount itself is also checked
against what was acknowledged.
"""

import os
import stat

import pytest

import qfs
from qfs import read_file, write_file
from control_util import (KiB, MiB, AlignedBuffer, Writer, assert_same_tree,
                          block, check_status_shape, child_status, control,
                          control_errno, pwrite_full, status, tree_mtimes,
                          tree_state, wait_child_state, wait_status,
                          wait_writes, walk)

BIG_SIZE = 300 * MiB
BIG_STRIDE = 4 * MiB       # one data region every BIG_STRIDE ...
BIG_REGION = 512 * KiB     # ... of this size
BIG_SLOT = 64 * KiB        # random O_DIRECT writes, aligned to their size
MEDIUM_SIZE = 16 * MiB
FIXED_TIME = (1_600_000_000, 123_456_789)
NEWER_TIME = (1_650_000_000, 987_654_321)


def kind_of(backing):
    """"tmpfs" or "ext4": the kind of file system `backing` lies on."""
    return backing.parent.name.split("-")[0]


def build_static_tree(m):
    """Everything a resync must copy, made through the mount. Returns the
    relative paths whose times are fixed (and must be copied exactly)."""
    p = m.path
    os.makedirs(p("static/deep/er/est"))
    os.mkdir(p("static/empty"))
    os.mkdir(p("static/setgid"))
    os.chmod(p("static/setgid"), 0o2750)
    write_file(p("static/plain"), block("plain", 0, 0, 100 * KiB))
    write_file(p("static/empty-file"), b"")
    write_file(p("static/one-byte"), b"x")
    write_file(p("static/deep/er/est/leaf"), block("leaf", 0, 0, 3000))
    # A file whose tail is a hole, and one with a hole in the middle.
    with open(p("static/tail-hole"), "wb") as f:
        f.write(block("tail", 0, 0, 8 * KiB))
        f.truncate(5 * MiB)
    with open(p("static/mid-hole"), "wb") as f:
        f.write(block("mid", 0, 0, 4 * KiB))
        f.seek(3 * MiB)
        f.write(block("mid", 1, 3 * MiB, 4 * KiB))
    write_file(p("static/private"), b"secret", mode=0o600)
    write_file(p("static/suid"), b"#!/bin/true\n")
    os.chown(p("static/suid"), 1234, 5678)
    os.chmod(p("static/suid"), 0o4711)
    write_file(p("static/owned"), b"owned by someone else")
    os.chown(p("static/owned"), 1234, 5678)
    os.symlink("plain", p("static/link-rel"))
    os.symlink("/nowhere/at/all", p("static/link-dangling"))
    os.symlink("deep/er", p("static/link-dir"))
    os.chown(p("static/link-rel"), 1234, 5678, follow_symlinks=False)
    os.mknod(p("static/null"), stat.S_IFCHR | 0o640, os.makedev(1, 3))
    os.mknod(p("static/blk"), stat.S_IFBLK | 0o600, os.makedev(7, 200))
    os.mkfifo(p("static/fifo"), 0o620)
    # Hard links in one directory (across directories: see
    # test_hard_links_across_directories_are_resynced_as_links).
    write_file(p("static/linked"), block("linked", 0, 0, 40 * KiB))
    os.link(p("static/linked"), p("static/linked-too"))
    os.setxattr(p("static/plain"), "user.color", b"blue")
    os.setxattr(p("static/plain"), "trusted.origin", b"\x00\x01binary\xff")
    os.setxattr(p("static/deep"), "user.dir", b"a directory's xattr")
    os.setxattr(p("static/owned"), "user.empty", b"")
    # The root's own mode and owner are copied too (its xattrs: see
    # test_the_roots_own_metadata_is_copied).
    os.chmod(m.mnt, 0o751)
    os.chown(m.mnt, 0, 4321)
    fixed = [r for r, _, _ in _walk_mount(m, "static")] + ["static", ""]
    # Deepest first, so that setting a child's time does not move its
    # directory's (it would not anyway, but be explicit).
    for rel in sorted(fixed, key=lambda r: -r.count("/")):
        qfs.utimensat(p(rel), FIXED_TIME, FIXED_TIME, follow=False)
    return fixed


def _walk_mount(m, rel):
    for r, full, st in walk(m.path(rel)):
        yield os.path.join(rel, r), full, st


def make_big_file(m, rel="big.img"):
    """A sparse BIG_SIZE file with BIG_REGION of data every BIG_STRIDE.
    Returns the O_DIRECT slots the random writer uses: half inside data
    regions, half in holes."""
    with open(m.path(rel), "wb") as f:
        f.truncate(BIG_SIZE)
        for off in range(0, BIG_SIZE, BIG_STRIDE):
            f.seek(off)
            f.write(block("big0", 0, off, BIG_REGION))
    in_data = [off + k * BIG_SLOT for off in range(0, BIG_SIZE, BIG_STRIDE)
               for k in (1, 5)]
    in_holes = [off + BIG_REGION + k * BIG_SLOT
                for off in range(0, BIG_SIZE, BIG_STRIDE) for k in (3, 20)]
    return in_data + in_holes


def big_writer(m, slots, rel="big.img"):
    def setup(w):
        w.state["fd"] = os.open(m.path(rel), os.O_WRONLY | os.O_DIRECT)
        w.state["buf"] = AlignedBuffer(BIG_SLOT)
        w.state["last"] = {}

    def step(w, seq):
        off = w.rng.choice(slots)
        view = w.state["buf"].fill(block("big", seq, off, BIG_SLOT))
        try:
            n = os.pwrite(w.state["fd"], view, off)
        finally:
            view.release()
        assert n == BIG_SLOT, "short O_DIRECT write: %d" % n
        w.state["last"][off] = seq

    def teardown(w):
        os.close(w.state["fd"])
        w.state["buf"].close()

    return Writer("big", step, setup, teardown)


def medium_writer(m, rel="medium.img"):
    def setup(w):
        w.state["fd"] = os.open(m.path(rel), os.O_WRONLY)
        w.state["last"] = {}

    def step(w, seq):
        off = w.rng.randrange(MEDIUM_SIZE // (4 * KiB)) * 4 * KiB
        pwrite_full(w.state["fd"], block("med", seq, off, 4 * KiB), off)
        w.state["last"][off] = seq

    def teardown(w):
        os.close(w.state["fd"])

    return Writer("medium", step, setup, teardown)


def append_writer(m, rel="journal.log"):
    def setup(w):
        w.state["fd"] = os.open(m.path(rel), os.O_WRONLY | os.O_APPEND)

    def step(w, seq):
        rec = block("app", seq, 0, 1000)
        assert os.write(w.state["fd"], rec) == len(rec)

    def teardown(w):
        os.close(w.state["fd"])

    return Writer("append", step, setup, teardown)


def creator(m, rel="incoming", keep=None):
    """Creates small files, and unlinks the oldest beyond `keep`."""
    def setup(w):
        w.state["alive"] = {}
        w.state["order"] = []

    def step(w, seq):
        name = "%s/f%06d" % (rel, seq)
        data = block("new", seq, 0, 8 * KiB + seq % 5000)
        with open(m.path(name), "wb") as f:
            f.write(data)
        w.state["alive"][name] = data
        w.state["order"].append(name)
        if keep is not None and len(w.state["order"]) > keep:
            old = w.state["order"].pop(0)
            os.unlink(m.path(old))
            del w.state["alive"][old]

    return Writer("creator", step, setup)


def check_writers_model(m, big, medium, app):
    """The mount holds exactly what the writers were acknowledged."""
    fd = os.open(m.path("big.img"), os.O_RDONLY)
    try:
        for off, seq in big.state["last"].items():
            got = os.pread(fd, BIG_SLOT, off)
            assert got == block("big", seq, off, BIG_SLOT), \
                "big.img at %d is not write #%d" % (off, seq)
        untouched = [off for off in range(0, BIG_SIZE, BIG_STRIDE)]
        for off in untouched:
            got = os.pread(fd, BIG_SLOT, off)
            assert got == block("big0", 0, off, BIG_REGION)[:BIG_SLOT], off
    finally:
        os.close(fd)
    fd = os.open(m.path("medium.img"), os.O_RDONLY)
    try:
        for off, seq in medium.state["last"].items():
            assert os.pread(fd, 4 * KiB, off) == block("med", seq, off,
                                                        4 * KiB), off
    finally:
        os.close(fd)
    expect = b"".join(block("app", s, 0, 1000) for s in range(app.count))
    got = read_file(m.path("journal.log"))
    assert len(got) == len(expect), (len(got), len(expect))
    assert got == expect, "the journal lost or reordered records"


# --- 1. add during sustained writes -----------------------------------

@pytest.mark.timeout(170)
def test_a_child_added_during_sustained_writes_ends_identical_to_the_others(
        backing, scratch_fs, quorum):
    m = quorum(n=3, threshold=2)
    # The new disk: the same kind of file system, a separate instance.
    newdir = scratch_fs(kind_of(backing), size="512M")
    slots = make_big_file(m)
    write_file(m.path("medium.img"), block("med0", 0, 0, MEDIUM_SIZE))
    write_file(m.path("journal.log"), b"")
    os.mkdir(m.path("incoming"))
    fixed = build_static_tree(m)

    writers = [big_writer(m, slots), medium_writer(m), append_writer(m)]
    big, medium, app = writers
    for w in writers:
        w.start()
    try:
        wait_writes(writers, 20, 30, "the writers to get going")
        assert all(not w.errors for w in writers), \
            [e for w in writers for e in w.errors]

        at_add = [w.count for w in writers]
        control(m, "add %s name=fresh" % newdir)
        seen = []

        def done(doc):
            c = child_status(doc, "fresh")
            assert c is not None, "the added child is not in the status"
            seen.append((c["state"], c["resync"]["percent"],
                         c["resync"]["bytes-done"],
                         c["resync"]["bytes-total"]))
            assert c["state"] in ("syncing", "ok"), c
            return c["state"] == "ok"

        final = wait_status(m, done, 120, "the new child's resync")
        during = [w.count - c for w, c in zip(writers, at_add)]
        # The new child votes now: writes must keep working with it.
        wait_writes(writers, 30, 30, "writes after the resync")
    finally:
        for w in writers:
            w.stop()
    errors = [e for w in writers for e in w.errors]
    assert not errors, "a writer saw an error:\n" + "\n".join(errors)
    # The copy really ran alongside the writers.
    assert all(n >= 10 for n in during), \
        "too few writes while the child was syncing: %r" % during

    # The new child is the others' twin: data maps, contents, metadata,
    # links, symlinks, devices, xattrs.
    ref = tree_state(m.children[0])
    for c in m.children[1:] + [str(newdir)]:
        assert_same_tree(m.children[0], c)
    tree, links = ref
    assert tree["static/null"][0] == "chr" and \
        tree["static/null"][4] == os.makedev(1, 3)
    assert frozenset({"static/linked", "static/linked-too"}) in links
    assert len(tree["big.img"][5]) >= BIG_SIZE // BIG_STRIDE, \
        "big.img lost its data regions"
    new_big = os.stat(os.path.join(newdir, "big.img"))
    assert new_big.st_blocks * 512 < BIG_SIZE // 2, \
        "the new child's big.img is not sparse"

    # Times of everything not written since it was made are copied.
    want = tree_mtimes(m.children[0], fixed)
    assert set(want.values()) == {FIXED_TIME[0] * 10**9 + FIXED_TIME[1]}
    assert tree_mtimes(str(newdir), fixed) == want

    check_writers_model(m, big, medium, app)

    # Status walked syncing -> ok, and was seen mid-way.
    states = [s for s, _, _, _ in seen]
    assert states[-1] == "ok"
    assert all(s == "ok" for s in states[states.index("ok"):]), states
    assert any(s == "syncing" and pct < 100 for s, pct, _, _ in seen), \
        "never saw the new child syncing below 100%%: %r" % seen[:5]
    check_status_shape(final)
    c = child_status(final, "fresh")
    assert c["path"] == str(newdir) and c["votes"] is True
    assert final["totals"]["children"] == 4
    assert final["totals"]["voting"] == 4
    assert final["threshold"] == 2
    assert final["totals"]["write-errors"] == 0, final

    # The event trail.
    added = m.wait_event("CHILD_ADDED", lambda d: d["node-name"] == "fresh")
    assert added["path"] == str(newdir)
    m.wait_event("RESYNC_PROGRESS", lambda d: d["node-name"] == "fresh")
    m.wait_event("RESYNC_COMPLETED", lambda d: d["node-name"] == "fresh")
    progress = [e for e in m.events() if e["event"] == "RESYNC_PROGRESS"
                and e["data"]["node-name"] == "fresh"]
    span = (progress[-1]["timestamp"]["seconds"] -
            progress[0]["timestamp"]["seconds"])
    assert len(progress) <= span + 4, \
        "RESYNC_PROGRESS more often than about once a second: %d in %ds" % (
            len(progress), span)
    done_bytes = [e["data"]["bytes-done"] for e in progress]
    assert done_bytes == sorted(done_bytes), done_bytes
    changed = m.wait_event(
        "CHILD_STATE_CHANGED",
        lambda d: d["node-name"] == "fresh" and d["new"] == "ok")
    assert changed["old"] == "syncing", changed
    assert changed["path"] == str(newdir)
    assert not [d for d in m.events_named("CHILD_STATE_CHANGED")
                if d["node-name"] == "fresh" and d["new"] == "failed"]
    assert not m.events_named("QUORUM_FAILURE")


def churner(m, op, rel="incoming"):
    """Changes the namespace of one directory the way a directory of VM
    snapshots is rotated: `create` makes and fills new files, `rename`
    moves existing files to new names, `unlink` deletes them (and makes
    new ones so there is always something to delete). The model of what
    the directory holds is in state["alive"]."""
    def setup(w):
        w.state["alive"] = {}
        for name in sorted(os.listdir(m.path(rel))):
            w.state["alive"]["%s/%s" % (rel, name)] = read_file(
                m.path("%s/%s" % (rel, name)))

    def create(w, seq):
        name = "%s/f%06d" % (rel, seq)
        data = block("new", seq, 0, 8 * KiB + seq * 37 % 5000)
        # Created first, filled after: the copy may place the name in
        # between.
        with open(m.path(name), "wb") as f:
            f.write(data[:4 * KiB])
            f.flush()
            f.write(data[4 * KiB:])
        w.state["alive"][name] = data

    def step(w, seq):
        alive = w.state["alive"]
        if op == "create" or (op == "unlink" and seq % 2):
            create(w, seq)
        elif op == "rename":
            old = w.rng.choice(sorted(alive))
            new = "%s/r%06d" % (rel, seq)
            os.rename(m.path(old), m.path(new))
            alive[new] = alive.pop(old)
        else:
            names = sorted(alive)
            # The oldest names (the copy's first) or any.
            old = names[0] if seq % 4 == 0 else w.rng.choice(names)
            os.unlink(m.path(old))
            del alive[old]

    return Writer("churn-" + op, step, setup)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("op", ["create", "rename", "unlink"])
def test_files_changing_names_during_a_resync_end_identical_on_the_new_child(
        tmpfs_dir, scratch_fs, quorum, op):
    # Live namespace changes reach the new child as soon as their
    # directory exists there; they race the copy of the very same names.
    m = quorum(n=3, threshold=2)
    newdir = scratch_fs("tmpfs")
    os.mkdir(m.path("bulk"))
    for i in range(40):
        write_file(m.path("bulk/b%03d" % i), block("bulk", i, 0, 512 * KiB))
    os.mkdir(m.path("incoming"))
    for i in range(300):
        write_file(m.path("incoming/s%06d" % i),
                   block("seed", i, 0, 32 * KiB + i))
    churn = churner(m, op)
    churn.start()
    try:
        wait_writes([churn], 20, 30, "the churn to get going")
        control(m, "add %s name=fresh" % newdir)
        doc = wait_status(
            m, lambda d: child_status(d, "fresh")["state"] != "syncing",
            40, "the resync to end")
        wait_writes([churn], 20, 30, "more churn after the resync")
    finally:
        churn.stop()
    assert not churn.errors, churn.errors
    c = child_status(doc, "fresh")
    assert c["state"] == "ok", "the resync failed: %s" % c["reason"]
    alive = churn.state["alive"]
    assert sorted(os.listdir(m.path("incoming"))) == sorted(
        n.split("/")[1] for n in alive)
    for other in m.children[1:] + [str(newdir)]:
        assert_same_tree(m.children[0], other)
    for name, data in alive.items():
        assert read_file(os.path.join(newdir, name)) == data, name


@pytest.mark.timeout(90)
@pytest.mark.parametrize("op", ["unlink", "rename"])
def test_a_file_deleted_or_renamed_while_it_is_copied_does_not_fail_the_resync(
        tmpfs_dir, scratch_fs, quorum, op):
    # A VM image deleted (or moved) while the new child is being filled:
    # the copy of that file is moot, the resync must go on.
    m = quorum(n=3, threshold=2)
    newdir = scratch_fs("tmpfs", size="1G")
    size = 192 * MiB
    with open(m.path("victim.img"), "wb") as f:
        for off in range(0, size, 4 * MiB):
            f.write(block("victim", 0, off, 4 * MiB))
    write_file(m.path("zz-after"), b"copied after the victim")
    control(m, "add %s name=fresh" % newdir)

    def mid_copy(doc):
        rs = child_status(doc, "fresh")["resync"]
        assert child_status(doc, "fresh")["state"] == "syncing", \
            "the copy ended before the test could catch it mid-way"
        return 8 * MiB <= rs["bytes-done"] < size - 64 * MiB

    wait_status(m, mid_copy, 30, "the copy to be inside victim.img")
    if op == "unlink":
        os.unlink(m.path("victim.img"))
    else:
        os.rename(m.path("victim.img"), m.path("moved.img"))
    doc = wait_status(
        m, lambda d: child_status(d, "fresh")["state"] != "syncing", 60,
        "the resync to end")
    c = child_status(doc, "fresh")
    assert c["state"] == "ok", "the resync failed: %s" % c["reason"]
    for other in m.children[1:] + [str(newdir)]:
        assert_same_tree(m.children[0], other)
    assert not os.path.exists(os.path.join(newdir, "victim.img"))


@pytest.mark.timeout(90)
def test_a_file_renamed_to_a_new_name_before_the_copy_reaches_it_is_copied(
        tmpfs_dir, scratch_fs, quorum):
    # The copy works from a listing taken when it enters a directory. A
    # file renamed, before the copy reached it, to a name that listing
    # lacks is on no list: the copy must still get it to the new child.
    m = quorum(n=3, threshold=2)
    newdir = scratch_fs("tmpfs", size="1G")
    os.mkdir(m.path("d"))
    size = 192 * MiB
    with open(m.path("d/a-big.img"), "wb") as f:
        for off in range(0, size, 4 * MiB):
            f.write(block("big", 0, off, 4 * MiB))
    write_file(m.path("d/z-small"), b"renamed while the copy is busy")
    control(m, "add %s name=fresh" % newdir)

    def mid_copy(doc):
        c = child_status(doc, "fresh")
        assert c["state"] == "syncing", \
            "the copy ended before the test could catch it mid-way"
        return 8 * MiB <= c["resync"]["bytes-done"] < size - 64 * MiB

    wait_status(m, mid_copy, 30, "the copy to be inside d/a-big.img")
    # Whether the copy has already placed d/z-small (the directory's names
    # are placed before any content is copied) or not, the rename must
    # end up on the new child with the file's content.
    os.rename(m.path("d/z-small"), m.path("d/b-renamed"))
    doc = wait_status(
        m, lambda d: child_status(d, "fresh")["state"] != "syncing", 60,
        "the resync to end")
    c = child_status(doc, "fresh")
    assert c["state"] == "ok", "the resync failed: %s" % c["reason"]
    assert os.path.exists(os.path.join(newdir, "d/b-renamed")), \
        "the new child turned ok without d/b-renamed"
    assert read_file(os.path.join(newdir, "d/b-renamed")) == \
        b"renamed while the copy is busy"
    for other in m.children[1:] + [str(newdir)]:
        assert_same_tree(m.children[0], other)


def test_hard_links_across_directories_are_resynced_as_links(
        backing, scratch_fs, quorum):
    m = quorum(n=2, threshold=1)
    newdir = scratch_fs(kind_of(backing))
    for d in ("a", "m", "z"):
        os.mkdir(m.path(d))
    write_file(m.path("m/orig"), block("orig", 0, 0, 100 * KiB))
    for other in ("a/link", "z/link", "top-link"):
        os.link(m.path("m/orig"), m.path(other))
    control(m, "add %s name=fresh" % newdir)
    doc = wait_status(
        m, lambda d: child_status(d, "fresh")["state"] != "syncing", 30,
        "the resync to end")
    c = child_status(doc, "fresh")
    assert c["state"] == "ok", "the resync failed: %s" % c["reason"]
    tree, links = assert_same_tree(m.children[0], str(newdir))
    assert frozenset({"m/orig", "a/link", "z/link", "top-link"}) in links
    assert os.stat(os.path.join(newdir, "a/link")).st_nlink == 4


def test_the_roots_own_metadata_is_copied(tmpfs_dir, scratch_fs, quorum):
    m = quorum(n=2, threshold=1)
    newdir = scratch_fs("tmpfs")
    write_file(m.path("f"), b"f")
    os.chmod(m.mnt, 0o1751)
    os.chown(m.mnt, 1234, 4321)
    os.setxattr(m.mnt, "user.root", b"the top")
    os.setxattr(m.mnt, "trusted.root", b"trusted top")
    qfs.utimensat(m.path(""), FIXED_TIME, FIXED_TIME)
    control(m, "add %s name=fresh" % newdir)
    wait_child_state(m, "fresh", "ok")
    st = os.stat(newdir)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (
        0o1751, 1234, 4321)
    assert st.st_mtime_ns == FIXED_TIME[0] * 10**9 + FIXED_TIME[1]
    assert os.getxattr(newdir, "user.root") == b"the top"
    assert os.getxattr(newdir, "trusted.root") == b"trusted top"
    assert_same_tree(m.children[0], str(newdir))


# --- progress accounting ----------------------------------------------

@pytest.mark.timeout(90)
def test_a_finished_resync_shows_all_bytes_and_files_done(tmpfs_dir,
                                                          scratch_fs, quorum):
    # A sparse image and a hard-linked file: the progress must still end
    # at 100% with done == total, and never go above 100% on the way.
    m = quorum(n=2, threshold=1)
    newdir = scratch_fs("tmpfs")
    with open(m.path("sparse.img"), "wb") as f:
        f.truncate(64 * MiB)
        f.seek(32 * MiB)
        f.write(block("sp", 0, 0, MiB))
    write_file(m.path("dense"), block("dense", 0, 0, 8 * MiB))
    os.link(m.path("dense"), m.path("dense-link"))
    os.mkdir(m.path("dir"))
    control(m, "add %s" % newdir)
    seen = []

    def done(doc):
        c = child_status(doc, str(newdir))
        seen.append(c["resync"])
        return c["state"] == "ok"

    final = wait_status(m, done, 60, "the resync to finish")
    rs = child_status(final, str(newdir))["resync"]
    assert_same_tree(m.children[0], str(newdir))
    completed = m.wait_event("RESYNC_COMPLETED",
                             lambda d: d["node-name"] == str(newdir))
    assert completed["files"] == 4, completed
    last = [d for d in m.events_named("RESYNC_PROGRESS")
            if d["node-name"] == str(newdir)][-1]
    assert last["bytes-done"] == last["bytes-total"], last
    assert last["files-done"] == last["files-total"], last
    assert all(0 <= r["percent"] <= 100 for r in seen), seen
    assert rs["bytes-done"] == rs["bytes-total"], rs
    assert rs["files-done"] == rs["files-total"] == 4, rs
    assert rs["percent"] == 100, rs


# --- 8. resync NAME ---------------------------------------------------

@pytest.mark.timeout(90)
def test_resync_of_a_member_repairs_its_data_and_drops_its_extra_files(
        backing, quorum):
    m = quorum(n=3, threshold=2)
    data = block("img", 0, 0, 4 * MiB)
    write_file(m.path("vm.img"), data)
    os.mkdir(m.path("d"))
    write_file(m.path("d/keep"), b"keep me")
    before = tree_state(m.children[0])
    victim = m.children[1]

    # Damage child 1 behind the daemon's back: flipped bytes, a truncated
    # file, and entries the others never had.
    with open(m.child_file(1, "vm.img"), "r+b") as f:
        f.seek(MiB)
        f.write(b"\xff" * 4096)
    with open(m.child_file(1, "d/keep"), "r+b") as f:
        f.truncate(3)
    write_file(m.child_file(1, "stray"), b"not voted")
    os.makedirs(m.child_file(1, "stray-dir/sub"))
    write_file(m.child_file(1, "stray-dir/sub/f"), b"nor this")
    write_file(m.child_file(1, "d/stray2"), b"nor this")
    os.symlink("vm.img", m.child_file(1, "stray-link"))
    assert tree_state(victim) != before

    doc0 = status(m)
    assert child_status(doc0, victim)["state"] == "ok"
    control(m, "resync %s" % victim)
    wait_child_state(m, victim, "ok", timeout=60)
    assert_same_tree(m.children[0], victim)
    assert not os.path.exists(m.child_file(1, "stray"))
    assert not os.path.exists(m.child_file(1, "stray-dir"))
    assert not os.path.lexists(m.child_file(1, "stray-link"))
    assert read_file(m.child_file(1, "vm.img")) == data
    assert read_file(m.path("vm.img")) == data
    m.wait_event("CHILD_STATE_CHANGED",
                 lambda d: d["node-name"] == victim and
                 d["old"] == "ok" and d["new"] == "syncing")
    m.wait_event("CHILD_STATE_CHANGED",
                 lambda d: d["node-name"] == victim and
                 d["old"] == "syncing" and d["new"] == "ok")
    m.wait_event("RESYNC_COMPLETED", lambda d: d["node-name"] == victim)
    doc = status(m)
    check_status_shape(doc)
    assert [c["name"] for c in doc["children"]] == m.children
    assert doc["totals"]["voting"] == 3


def test_resync_by_a_given_name_and_refusals_that_would_lose_the_quorum(
        tmpfs_dir, scratch_fs, quorum):
    m = quorum(n=2, threshold=2)
    write_file(m.path("f"), block("f", 0, 0, 256 * KiB))
    newdir = scratch_fs("tmpfs")
    # At threshold 2 of 2 voters neither member can leave the vote.
    for c in m.children:
        assert control_errno(m, "resync %s" % c) == 22
    control(m, "add %s name=third" % newdir)
    wait_child_state(m, "third", "ok")
    write_file(os.path.join(newdir, "f"), b"garbage")
    control(m, "resync third")
    wait_child_state(m, "third", "ok")
    assert read_file(os.path.join(newdir, "f")) == read_file(m.path("f"))
    assert control_errno(m, "resync nobody") == 2
    doc = status(m)
    assert [c["state"] for c in doc["children"]] == ["ok"] * 3
    assert doc["last-control-error"]["command"] == "resync nobody"


# --- 9. remove, then add the same directory again ---------------------

@pytest.mark.timeout(120)
def test_a_removed_child_added_again_is_resynced_to_the_current_state(
        backing, quorum):
    m = quorum(n=3, threshold=2)
    write_file(m.path("vm.img"), block("v0", 0, 0, 2 * MiB))
    os.mkdir(m.path("d"))
    write_file(m.path("d/old"), b"old file")
    gone = m.children[2]
    # A handle kept open across the remove and the add: its writes must
    # reach the re-added child once it is back.
    fd = os.open(m.path("vm.img"), os.O_WRONLY)
    try:
        pwrite_full(fd, block("v1", 1, 0, 64 * KiB), 0)
        control(m, "remove %s" % gone)
        m.wait_event("CHILD_REMOVED", lambda d: d["node-name"] == gone)
        snapshot = tree_state(gone)
        # The set moves on without it.
        pwrite_full(fd, block("v2", 2, 0, 64 * KiB), MiB)
        os.unlink(m.path("d/old"))
        write_file(m.path("d/new"), b"new file")
        os.truncate(m.path("vm.img"), 3 * MiB)
        assert tree_state(gone) == snapshot, \
            "the removed child changed after its removal"
        doc = status(m)
        assert gone not in [c["name"] for c in doc["children"]]
        assert doc["totals"]["children"] == 2

        control(m, "add %s" % gone)
        m.wait_event("CHILD_ADDED", lambda d: d["node-name"] == gone and
                     d["path"] == gone)
        wait_child_state(m, gone, "ok", timeout=60)
        assert_same_tree(m.children[0], gone)
        assert not os.path.exists(os.path.join(gone, "d/old"))
        # The old handle writes to all three again.
        pwrite_full(fd, block("v3", 3, 0, 64 * KiB), 2 * MiB)
    finally:
        os.close(fd)
    for i in (1, 2):
        assert_same_tree(m.children[0], m.children[i])
    with open(m.child_file(2, "vm.img"), "rb") as f:
        f.seek(2 * MiB)
        assert f.read(64 * KiB) == block("v3", 3, 0, 64 * KiB)
    doc = status(m)
    check_status_shape(doc)
    assert [(c["name"], c["state"]) for c in doc["children"]] == [
        (m.children[0], "ok"), (m.children[1], "ok"), (gone, "ok")]
    # It counts in the vote again: with child 0 corrupted, child 1 and the
    # re-added child 2 outvote it.
    with open(m.child_file(0, "vm.img"), "r+b") as f:
        f.write(b"\0" * 4096)
    with open(m.path("vm.img"), "rb") as f:
        assert f.read(4096) == block("v1", 1, 0, 64 * KiB)[:4096]
    control(m, "threshold 3")
    with pytest.raises(OSError) as e:
        read_file(m.path("vm.img"))
    assert e.value.errno == 5


# --- a copy cut short -------------------------------------------------

def fill_big(m, rel="big.img", size=192 * MiB):
    with open(m.path(rel), "wb") as f:
        for off in range(0, size, 4 * MiB):
            f.write(block("big", 0, off, 4 * MiB))
    return size


@pytest.mark.timeout(90)
def test_removing_a_child_while_it_syncs_stops_its_copy_for_good(
        tmpfs_dir, scratch_fs, quorum):
    m = quorum(n=3, threshold=2)
    newdir = scratch_fs("tmpfs", size="1G")
    size = fill_big(m)
    control(m, "add %s name=fresh" % newdir)
    wait_status(
        m, lambda d: child_status(d, "fresh")["state"] == "syncing" and
        child_status(d, "fresh")["resync"]["bytes-done"] >= 8 * MiB,
        30, "the copy to be under way")
    control(m, "remove fresh")
    snap = tree_state(str(newdir))
    # The set goes on without it; nothing reaches it any more.
    with open(m.path("big.img"), "r+b") as f:
        for off in range(0, size, 16 * MiB):
            f.seek(off)
            f.write(b"after the remove")
    write_file(m.path("new-file"), b"after the remove")
    assert tree_state(str(newdir)) == snap
    doc = status(m)
    assert [c["name"] for c in doc["children"]] == m.children
    m.wait_event("CHILD_REMOVED", lambda d: d["node-name"] == "fresh")
    assert not [d for d in m.events_named("RESYNC_COMPLETED")
                if d["node-name"] == "fresh"]
    assert not [d for d in m.events_named("CHILD_STATE_CHANGED")
                if d["node-name"] == "fresh"]
    assert_same_tree(m.children[0], m.children[2])


@pytest.mark.timeout(90)
def test_unmounting_during_a_resync_exits_cleanly(tmpfs_dir, scratch_fs,
                                                  quorum):
    m = quorum(n=3, threshold=2)
    newdir = scratch_fs("tmpfs", size="1G")
    fill_big(m)
    control(m, "add %s name=fresh" % newdir)
    assert child_status(status(m), "fresh")["state"] == "syncing"
    m.unmount()
    names = [e["event"] for e in m.events()]
    assert names[-1] == "UNMOUNTED", names[-5:]
    assert "RESYNC_COMPLETED" not in names
