"""Faulty children through a real mount (README "How
requests are decided", "Event log" and "Faults and what they do").

One child at a time is made to misbehave the way disks and operators do:
its copy of a file is deleted, corrupted, replaced by a directory, or
unreadable with O_DIRECT; its file system is full or read-only. With
three children, threshold 2 rides over one bad child (the right data, a
QUORUM_REPORT_BAD naming that child), threshold 3 cannot (the voted
errno and a QUORUM_FAILURE). The event log is the evidence either way.

Errors every child gives alike (EEXIST, ENOTEMPTY, an unaligned
O_DIRECT read) are the request's own fault, not a child's, and raise no
alarm. Symlinks inside a child are shown, never followed, and the
reserved names stay reserved.

QUORUM_REPORT_BAD is throttled per child: the first report of a window
is written at once, later ones replace a single pending line that is
written when the window ends. Assertions therefore wait for events with
deadlines, and "no event" is only concluded after a clean unmount, which
makes the daemon write every pending line and exit.
"""

import errno
import mmap
import os
import stat
import subprocess

import pytest

import qfs
from qfs import read_file, write_file

KiB = 1024
MiB = 1024 * KiB

ENOENT_TEXT = os.strerror(errno.ENOENT)
ENOSPC_TEXT = os.strerror(errno.ENOSPC)
EROFS_TEXT = os.strerror(errno.EROFS)
EINVAL_TEXT = os.strerror(errno.EINVAL)


# --- helpers -----------------------------------------------------------

def pattern(size, seed=1):
    """Deterministic, non-repeating-looking bytes."""
    out = bytearray()
    block = 0
    while len(out) < size:
        out += (b"%08d:%08d|" % (seed, block)) * 16
        block += 1
    return bytes(out[:size])


def seed_children(m, rel, data, skip=()):
    """Write rel directly into every child whose index is not in skip
    (the daemon is not running yet, so it sees them as found). The
    children are made one set first: a first mount refuses children that
    differ."""
    if not os.path.isdir(os.path.join(m.children[0], ".quorumfs")):
        m.enrol()
    for i in range(len(m.children)):
        if i not in skip:
            write_file(m.child_file(i, rel), data)


def flip_bytes(path, offset, count):
    """Invert count bytes of a child's file in place (size unchanged)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))


def pwrite_all(fd, data, off=0):
    """Write data at off, going on after short writes. Returns (bytes
    acknowledged, the OSError that stopped it or None)."""
    done = 0
    view = memoryview(data)
    try:
        while done < len(data):
            done += os.pwrite(fd, view[done:], off + done)
    except OSError as e:
        return done, e
    finally:
        view.release()
    return done, None


def reports_for(m, child):
    return [d for d in m.events_named("QUORUM_REPORT_BAD")
            if d.get("node-name") == child]


def unmount_and_collect(m):
    """Clean unmount: the daemon has exited, so every throttled line has
    been written. Returns every event of the log."""
    m.unmount()
    events = m.events()
    assert "UNMOUNTED" in [e["event"] for e in events]
    return events


def alarms(events):
    return [e for e in events
            if e["event"] in ("QUORUM_REPORT_BAD", "QUORUM_FAILURE")]


def direct_pread(fd, off, length):
    buf = mmap.mmap(-1, max(mmap.PAGESIZE, length))
    try:
        with memoryview(buf) as view:
            n = os.preadv(fd, [view[:length]], off)
        return bytes(buf[:n])
    finally:
        buf.close()


def remount_ro(root):
    # FUSE_RELEASE is asynchronous: the daemon may hold a child file open
    # for writing a moment after close(); until then remount is EBUSY.
    qfs.wait_for(lambda: subprocess.run(
        ["mount", "-o", "remount,ro", str(root)],
        stderr=subprocess.DEVNULL).returncode == 0,
        10 * qfs.deadline_scale(), "%s to turn read-only" % root)


@pytest.fixture
def ext4_4k_dir(tmp_path_factory):
    """A directory on ext4 over a loop device with 4096-byte logical
    sectors: O_DIRECT I/O aligned to 512 but not to 4096 fails there with
    EINVAL, while it works on the 512-byte-sector loop of ext4_dir.
    Request it before `quorum` so it is torn down after the daemon."""
    work = tmp_path_factory.mktemp("ext4-4k")
    image = work / "ext4-4k.img"
    root = work / "root"
    root.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    dev = subprocess.run(["losetup", "--find", "--show", "--sector-size",
                          "4096", str(image)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout.strip()
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["mount", dev, str(root)], check=True)
    except subprocess.CalledProcessError:
        subprocess.run(["losetup", "-d", dev])
        raise
    d = root / "scratch"
    d.mkdir()
    yield d
    res = subprocess.run(["umount", str(root)], stderr=subprocess.PIPE,
                         text=True)
    if res.returncode != 0:
        subprocess.run(["umount", "-l", str(root)])
    # A busy loop device is detached when its last user goes (autoclear).
    subprocess.run(["losetup", "-d", dev], stderr=subprocess.DEVNULL)
    assert res.returncode == 0, "umount %s: %s" % (root, res.stderr)


# --- a child missing the file ------------------------------------------

def test_a_file_missing_on_one_child_reads_right_and_reports_that_child(
        quorum):
    m = quorum(threshold=2, start=False)
    data = pattern(64 * KiB)
    seed_children(m, "f", data, skip=(1,))
    m.start()
    with open(m.path("f"), "rb") as f:
        assert f.read() == data
    bad = m.wait_event("QUORUM_REPORT_BAD",
                       lambda d: d.get("node-name") == m.children[1])
    assert bad["error"] == ENOENT_TEXT
    assert bad["file"] == "f"
    assert not os.path.exists(m.child_file(1, "f")), \
        "a read must not create the file on the child that lacks it"
    events = unmount_and_collect(m)
    for e in alarms(events):
        assert e["event"] == "QUORUM_REPORT_BAD", e
        assert e["data"]["node-name"] == m.children[1], e
        assert e["data"]["error"] == ENOENT_TEXT, e


def test_a_file_missing_on_one_child_fails_with_enoent_at_threshold_3(
        quorum):
    m = quorum(threshold=3, start=False)
    seed_children(m, "f", pattern(64 * KiB), skip=(1,))
    m.start()
    with pytest.raises(OSError) as e:
        read_file(m.path("f"))
    assert e.value.errno == errno.ENOENT, qfs.errno_name(e.value.errno)
    m.wait_event("QUORUM_FAILURE", lambda d: d.get("reference") == "f")


def _delete_while_mounted(m, data):
    with open(m.path("f"), "wb") as f:
        f.write(data)
    os.unlink(m.child_file(1, "f"))


def test_a_file_deleted_from_one_child_while_mounted_is_reported(quorum):
    m = quorum(threshold=2)
    data = pattern(64 * KiB)
    _delete_while_mounted(m, data)

    # The kernel may answer from its entry cache for up to a second; every
    # read meanwhile must still be right. Poll until the daemon has seen
    # the child lacks the file.
    def reported():
        assert read_file(m.path("f")) == data
        return [d for d in reports_for(m, m.children[1])
                if d.get("error") == ENOENT_TEXT]
    qfs.wait_for(reported, 10 * qfs.deadline_scale(),
                 "a report that %s lacks f" % m.children[1])
    assert read_file(m.path("f")) == data


def test_a_file_deleted_from_one_child_while_mounted_fails_at_threshold_3(
        quorum):
    m = quorum(threshold=3)
    _delete_while_mounted(m, pattern(64 * KiB))

    def refused():
        try:
            read_file(m.path("f"))
        except OSError as e:
            return e
        return None
    err = qfs.wait_for(refused, 10 * qfs.deadline_scale(),
                       "the read to fail once the entry cache expired")
    assert err.errno == errno.ENOENT, qfs.errno_name(err.errno)
    m.wait_event("QUORUM_FAILURE", lambda d: d.get("reference") == "f")


def test_a_write_after_a_child_lost_the_file_is_reported_for_that_child(
        quorum):
    # The daemon has seen (by a lookup) that the child no longer has the
    # file; a new write must not count that child's deleted copy as a
    # success, or the mount claims three copies where two exist.
    m = quorum(threshold=2)
    _delete_while_mounted(m, pattern(64 * KiB))

    def lookup_reported():
        os.stat(m.path("f"))
        return [d for d in reports_for(m, m.children[1])
                if d.get("error") == ENOENT_TEXT]
    qfs.wait_for(lookup_reported, 10 * qfs.deadline_scale(),
                 "a report that %s lacks f" % m.children[1])
    fd = os.open(m.path("f"), os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"new data", 0) == 8
        m.wait_event("QUORUM_REPORT_BAD",
                     lambda d: d.get("node-name") == m.children[1] and
                     d.get("type") == "write")
    finally:
        os.close(fd)
    for i in (0, 2):
        assert read_file(m.child_file(i, "f"))[:8] == b"new data"


# --- a corrupted child -------------------------------------------------

def _corrupted(quorum, threshold, opts=()):
    m = quorum(threshold=threshold, opts=opts)
    data = pattern(256 * KiB)
    with open(m.path("f"), "wb") as f:
        f.write(data)
    flip_bytes(m.child_file(1, "f"), 5000, 100)
    return m, data


def test_a_corrupted_child_loses_the_vote_and_is_reported_without_error(
        quorum):
    m, data = _corrupted(quorum, 2)
    fd = os.open(m.path("f"), os.O_RDONLY)
    try:
        assert os.pread(fd, 8192, 4096) == data[4096:4096 + 8192]
    finally:
        os.close(fd)
    bad = m.wait_event("QUORUM_REPORT_BAD",
                       lambda d: d.get("node-name") == m.children[1])
    assert bad["type"] == "read"
    assert "error" not in bad, bad
    assert (bad["sector-num"], bad["sectors-count"]) == (8, 16), bad
    assert bad["file"] == "f"
    events = unmount_and_collect(m)
    assert not [e for e in events if e["event"] == "QUORUM_FAILURE"]
    assert {e["data"]["node-name"] for e in alarms(events)} == \
        {m.children[1]}


def test_a_corrupted_child_fails_the_read_with_eio_at_threshold_3(quorum):
    m, _ = _corrupted(quorum, 3)
    fd = os.open(m.path("f"), os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:
            os.pread(fd, 8192, 4096)
        assert e.value.errno == errno.EIO, qfs.errno_name(e.value.errno)
        # Outside the corrupted bytes the children agree.
        assert os.pread(fd, 4096, 64 * KiB) == \
            pattern(256 * KiB)[64 * KiB:68 * KiB]
    finally:
        os.close(fd)
    fail = m.wait_event("QUORUM_FAILURE", lambda d: d.get("reference") == "f")
    assert (fail["sector-num"], fail["sectors-count"]) == (8, 16), fail


def test_rewrite_corrupted_repairs_the_child_that_lost_the_vote(quorum):
    # Repaired before the read returns, as QEMU does, when the loser's
    # answer came with the majority's; when it came late (the read
    # answered on the majority), as soon as it is in.
    m, data = _corrupted(quorum, 2, opts="rewrite-corrupted")
    fd = os.open(m.path("f"), os.O_RDONLY)
    try:
        assert os.pread(fd, 8192, 4096) == data[4096:4096 + 8192]
    finally:
        os.close(fd)
    qfs.wait_for(lambda: all(read_file(m.child_file(i, "f")) == data
                             for i in range(3)),
                 10, "every copy to equal the voted data")
    m.wait_event("QUORUM_REPORT_BAD",
                 lambda d: d.get("node-name") == m.children[1] and
                 d.get("type") == "read" and "error" not in d)


# --- a child on a full file system -------------------------------------

def _children_on(quorum, tmpfs_dir, scratch_fs, full=(), ro=(),
                 size="1M"):
    """Three children: those in full/ro on their own small tmpfs, the
    others on the roomy tmpfs_dir. Returns (children, roots by index)."""
    children, roots = [], {}
    for i in range(3):
        if i in full or i in ro:
            d = scratch_fs("tmpfs", size=size)
            roots[i] = d.parent
        else:
            d = tmpfs_dir / ("c%d" % i)
            d.mkdir()
        children.append(d)
    return children, roots


def _write_4m_on_one_full_child(tmpfs_dir, scratch_fs, quorum):
    children, _ = _children_on(quorum, tmpfs_dir, scratch_fs, full=(1,))
    m = quorum(children=children, threshold=2)
    data = pattern(4 * MiB, seed=7)
    fd = os.open(m.path("disk.img"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        done, err = pwrite_all(fd, data)
        assert err is None, "write failed after %d bytes: %s" % (done, err)
        os.fsync(fd)  # the full child's fsync has nothing to fail on
    finally:
        os.close(fd)
    return m, data


def test_a_write_with_one_full_child_succeeds_and_reports_enospc(
        tmpfs_dir, scratch_fs, quorum):
    m, data = _write_4m_on_one_full_child(tmpfs_dir, scratch_fs, quorum)
    bad = m.wait_event("QUORUM_REPORT_BAD",
                       lambda d: d.get("node-name") == m.children[1] and
                       d.get("type") == "write")
    assert bad["error"] == ENOSPC_TEXT
    assert bad["file"] == "disk.img"
    for i in (0, 2):
        assert read_file(m.child_file(i, "disk.img")) == data, i
    assert os.path.getsize(m.child_file(1, "disk.img")) < len(data)
    assert read_file(m.path("disk.img")) == data
    events = unmount_and_collect(m)
    assert not [e for e in events if e["event"] == "QUORUM_FAILURE"]
    assert {e["data"]["node-name"] for e in alarms(events)} == \
        {m.children[1]}


def test_data_acknowledged_with_a_full_child_is_all_on_the_healthy_two(
        tmpfs_dir, scratch_fs, quorum):
    m, data = _write_4m_on_one_full_child(tmpfs_dir, scratch_fs, quorum)
    m.unmount()
    healthy = quorum(children=[m.children[0], m.children[2]], threshold=2)
    assert read_file(healthy.path("disk.img")) == data
    assert os.path.getsize(healthy.path("disk.img")) == len(data)


@pytest.mark.parametrize("full", [(1, 2), (0, 1, 2)],
                         ids=["two-of-three-full", "every-child-full"])
def test_a_write_with_too_few_children_with_space_fails_with_enospc(
        tmpfs_dir, scratch_fs, quorum, full):
    children, _ = _children_on(quorum, tmpfs_dir, scratch_fs, full=full)
    m = quorum(children=children, threshold=2)
    fd = os.open(m.path("disk.img"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        done, err = pwrite_all(fd, pattern(4 * MiB, seed=3))
    finally:
        os.close(fd)
    assert err is not None, "4 MiB fit on 1 MiB file systems"
    assert err.errno == errno.ENOSPC, qfs.errno_name(err.errno)
    assert done < 4 * MiB
    m.wait_event("QUORUM_FAILURE", lambda d: d.get("reference") == "disk.img")
    for i in full:
        m.wait_event("QUORUM_REPORT_BAD",
                     lambda d, c=m.children[i]: d.get("node-name") == c and
                     d.get("error") == ENOSPC_TEXT)


# --- a read-only child -------------------------------------------------

def test_a_write_with_one_read_only_child_succeeds_and_reports_erofs(
        tmpfs_dir, scratch_fs, quorum):
    children, roots = _children_on(quorum, tmpfs_dir, scratch_fs, ro=(2,),
                                   size="16M")
    m = quorum(children=children, threshold=2)
    old = pattern(64 * KiB)
    write_file(m.path("disk.img"), old)
    remount_ro(roots[2])
    new = pattern(64 * KiB, seed=2)
    fd = os.open(m.path("disk.img"), os.O_RDWR)
    try:
        done, err = pwrite_all(fd, new)
        assert err is None, err
    finally:
        os.close(fd)
    bad = m.wait_event("QUORUM_REPORT_BAD",
                       lambda d: d.get("node-name") == m.children[2] and
                       d.get("type") == "write")
    assert bad["error"] == EROFS_TEXT
    for i in (0, 1):
        assert read_file(m.child_file(i, "disk.img")) == new
    assert read_file(m.child_file(2, "disk.img")) == old


def test_a_write_with_two_read_only_children_fails_with_erofs(
        tmpfs_dir, scratch_fs, quorum):
    children, roots = _children_on(quorum, tmpfs_dir, scratch_fs,
                                   ro=(1, 2), size="16M")
    m = quorum(children=children, threshold=2)
    write_file(m.path("disk.img"), pattern(64 * KiB))
    for i in (1, 2):
        remount_ro(roots[i])
    # The open for writing is the first thing the read-only children
    # refuse; the write itself if the open got through.
    with pytest.raises(OSError) as e:
        fd = os.open(m.path("disk.img"), os.O_RDWR)
        try:
            done, err = pwrite_all(fd, pattern(64 * KiB, seed=2))
        finally:
            os.close(fd)
        if err is not None:
            raise err
    assert e.value.errno == errno.EROFS, qfs.errno_name(e.value.errno)
    m.wait_event("QUORUM_FAILURE", lambda d: d.get("reference") == "disk.img")
    assert read_file(m.path("disk.img")) == pattern(64 * KiB)


# --- a child whose copy cannot be read ---------------------------------

def test_a_directory_in_place_of_the_file_on_one_child_loses_the_type_vote(
        quorum):
    m = quorum(threshold=2, start=False)
    data = pattern(64 * KiB)
    seed_children(m, "f", data, skip=(2,))
    os.mkdir(m.child_file(2, "f"))
    m.start()
    assert stat.S_ISREG(os.stat(m.path("f")).st_mode)
    assert read_file(m.path("f")) == data
    bad = m.wait_event("QUORUM_REPORT_BAD",
                       lambda d: d.get("node-name") == m.children[2])
    assert bad.get("error") == ENOENT_TEXT, bad
    assert os.path.isdir(m.child_file(2, "f")), "the child was changed"


def test_a_directory_in_place_of_the_file_fails_the_open_at_threshold_3(
        quorum):
    m = quorum(threshold=3, start=False)
    seed_children(m, "f", pattern(64 * KiB), skip=(2,))
    os.mkdir(m.child_file(2, "f"))
    m.start()
    with pytest.raises(OSError) as e:
        read_file(m.path("f"))
    # Two children have a file, one a directory: no type reaches three
    # votes. Either "no such file" (the odd child lacks it) or "no
    # quorum" is a fair answer; silence in the log is not.
    assert e.value.errno in (errno.ENOENT, errno.EIO), \
        qfs.errno_name(e.value.errno)
    m.wait_event("QUORUM_FAILURE", lambda d: d.get("reference") == "f")


def _o_direct_unreadable(ext4_4k_dir, ext4_dir, quorum, threshold):
    children = [ext4_dir / "c0", ext4_dir / "c1", ext4_4k_dir]
    for c in children[:2]:
        c.mkdir()
    m = quorum(children=children, threshold=threshold)
    data = pattern(64 * KiB)
    write_file(m.path("f"), data)
    return m, data


def test_a_child_refusing_512_byte_o_direct_reads_is_outvoted(
        ext4_4k_dir, ext4_dir, quorum):
    m, data = _o_direct_unreadable(ext4_4k_dir, ext4_dir, quorum, 2)
    fd = os.open(m.path("f"), os.O_RDONLY | os.O_DIRECT)
    try:
        assert direct_pread(fd, 512, 512) == data[512:1024]
    finally:
        os.close(fd)
    bad = m.wait_event("QUORUM_REPORT_BAD",
                       lambda d: d.get("node-name") == m.children[2] and
                       d.get("type") == "read" and
                       d.get("sector-num") == 1)
    assert bad.get("error") == EINVAL_TEXT, bad
    assert bad["sectors-count"] == 1
    events = unmount_and_collect(m)
    assert not [e for e in events if e["event"] == "QUORUM_FAILURE"]


def test_a_child_refusing_512_byte_o_direct_reads_sets_the_errno_below_quorum(
        ext4_4k_dir, ext4_dir, quorum):
    m, data = _o_direct_unreadable(ext4_4k_dir, ext4_dir, quorum, 3)
    fd = os.open(m.path("f"), os.O_RDONLY | os.O_DIRECT)
    try:
        # 4 KiB aligned I/O works on every child.
        assert direct_pread(fd, 4096, 4096) == data[4096:8192]
        with pytest.raises(OSError) as e:
            direct_pread(fd, 512, 512)
    finally:
        os.close(fd)
    assert e.value.errno == errno.EINVAL, qfs.errno_name(e.value.errno)
    fail = m.wait_event("QUORUM_FAILURE", lambda d: d.get("reference") == "f")
    assert (fail["sector-num"], fail["sectors-count"]) == (1, 1), fail


# --- fsync -------------------------------------------------------------

def test_fsync_succeeds_at_threshold_and_reports_the_child_without_the_file(
        quorum):
    m = quorum(threshold=2, start=False)
    seed_children(m, "f", pattern(64 * KiB), skip=(1,))
    m.start()
    fd = os.open(m.path("f"), os.O_RDWR)
    try:
        # No write first: a write the child missed would already have
        # taken it out of the vote, and fsync would not ask it.
        os.fsync(fd)
        # Still open: the flush report can only be fsync's, not close's.
        bad = m.wait_event("QUORUM_REPORT_BAD",
                           lambda d: d.get("node-name") == m.children[1] and
                           d.get("type") == "flush")
    finally:
        os.close(fd)
    assert bad.get("error") == ENOENT_TEXT, bad
    assert (bad["sector-num"], bad["sectors-count"]) == (0, 0), bad
    # A flush it failed is a flush it missed: it stops voting until its
    # resync brings it back.
    m.wait_event("CHILD_STATE_CHANGED",
                 lambda d: d.get("node-name") == m.children[1] and
                 d.get("new") == "stale")
    m.wait_event("CHILD_STATE_CHANGED",
                 lambda d: d.get("node-name") == m.children[1] and
                 d.get("new") == "ok")
    events = unmount_and_collect(m)
    # QEMU never raises QUORUM_FAILURE for a flush.
    assert not [e for e in events if e["event"] == "QUORUM_FAILURE"]


# --- unanimous request errors are not alarms ---------------------------

def test_errors_every_child_gives_alike_raise_no_alarm(backing, quorum):
    m = quorum(threshold=2)
    os.mkdir(m.path("d"))
    with pytest.raises(FileExistsError):
        os.mkdir(m.path("d"))
    write_file(m.path("d/inside"), b"x")
    with pytest.raises(OSError) as e:
        os.rmdir(m.path("d"))
    assert e.value.errno == errno.ENOTEMPTY, qfs.errno_name(e.value.errno)
    with pytest.raises(FileNotFoundError):
        os.stat(m.path("nothing-here"))
    with pytest.raises(FileNotFoundError):
        os.unlink(m.path("nothing-here"))
    write_file(m.path("img"), pattern(64 * KiB))
    # QEMU's alignment probe: a 1-byte O_DIRECT read. ext4 refuses it with
    # EINVAL on every child; tmpfs serves it.
    fd = os.open(m.path("img"), os.O_RDONLY | os.O_DIRECT)
    try:
        try:
            assert direct_pread(fd, 0, 1) == pattern(1)
        except OSError as err:
            assert err.errno == errno.EINVAL, qfs.errno_name(err.errno)
    finally:
        os.close(fd)
    events = unmount_and_collect(m)
    assert alarms(events) == []


# --- security and bad input --------------------------------------------

def test_a_symlink_in_the_children_pointing_outside_is_shown_not_followed(
        quorum):
    m = quorum(start=False)
    for c in m.children:
        os.symlink("/etc", os.path.join(c, "escape"))
    m.start()
    assert os.readlink(m.path("escape")) == "/etc"
    st = os.stat(m.path("escape"), follow_symlinks=False)
    assert stat.S_ISLNK(st.st_mode)
    assert st.st_size == len("/etc")
    assert "escape" in os.listdir(m.mnt)
    with pytest.raises(OSError) as e:
        os.open(m.path("escape"), os.O_RDONLY | os.O_NOFOLLOW)
    assert e.value.errno == errno.ELOOP, qfs.errno_name(e.value.errno)


@pytest.mark.parametrize("name", [".control", ".quorumfs"])
def test_a_reserved_name_cannot_be_created_at_the_mount_root(quorum, name):
    m = quorum()
    with pytest.raises(OSError):
        os.close(os.open(m.path(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                         0o644))
    with pytest.raises(OSError):
        os.mkdir(m.path(name))
    assert name not in os.listdir(m.mnt) or name == ".control"
    for c in m.children:
        p = os.path.join(c, name)
        if name == ".control":
            assert not os.path.lexists(p), p
        else:
            # Only the daemon's own metadata directory may be there.
            assert not os.path.lexists(p) or (
                os.path.isdir(p) and not os.path.islink(p)), p


def test_a_childs_own_metadata_directory_is_hidden_from_the_mount(quorum):
    m = quorum(start=False)
    for c in m.children:
        os.mkdir(os.path.join(c, ".quorumfs"))
        write_file(os.path.join(c, ".quorumfs", "identity"), b"set")
    m.start()
    assert ".quorumfs" not in os.listdir(m.mnt)
    assert ".quorumfs" not in [e.name for e in os.scandir(m.mnt)]
    assert not os.path.lexists(m.path(".quorumfs"))
    assert not os.path.lexists(m.path(".quorumfs/identity"))
