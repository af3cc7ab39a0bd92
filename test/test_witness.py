"""A witness child (README "A witness child"): two data children and a
witness that keeps one SHA-256 digest per 4 KiB block instead of the data.

The witness's files are checked against the layout the README documents:
a 32-byte header ("QFSWITN1", the logical size, zeros), then 32 bytes per
block, the digest of the block zero-padded past the end of file, an entry
of zeros standing for a block of zeros.
"""

import errno
import hashlib
import os
import random
import shutil
import struct
import threading

import pytest

import qfs
from control_util import (KiB, MiB, child_status, control, control_errno,
                          status, wait_child_state, wait_status)

BLOCK = 4 * KiB
HEADER = 32
DIGEST = 32
ZERO_DIGEST = hashlib.sha256(bytes(BLOCK)).digest()

pytestmark = pytest.mark.timeout(180)


def witness_file(path):
    """(logical size, [digest per block]) of a witness's file."""
    raw = qfs.read_file(path)
    if len(raw) < HEADER:
        return 0, []
    assert raw[:8] == b"QFSWITN1", raw[:HEADER]
    size = struct.unpack("<Q", raw[8:16])[0]
    assert raw[16:HEADER] == bytes(16)
    nblocks = (size + BLOCK - 1) // BLOCK
    body = raw[HEADER:]
    assert len(body) <= nblocks * DIGEST, (len(body), size)
    body += bytes(nblocks * DIGEST - len(body))
    out = []
    for k in range(nblocks):
        d = body[k * DIGEST:(k + 1) * DIGEST]
        out.append(ZERO_DIGEST if d == bytes(DIGEST) else d)
    return size, out


def block_digests(data):
    """What the witness must hold for data: each block zero-padded."""
    out = []
    for off in range(0, len(data), BLOCK):
        out.append(hashlib.sha256(
            data[off:off + BLOCK].ljust(BLOCK, b"\0")).digest())
    return len(data), out


def check_witness(m, rel, wdir):
    data = qfs.read_file(m.path(rel))
    assert witness_file(os.path.join(wdir, rel)) == block_digests(data), rel
    return data


def mount_with_witness(quorum, base, start=True, opts=()):
    """Two data children and a witness at threshold 2."""
    children = [base / "d0", base / "d1"]
    wdir = base / "w"
    for d in children + [wdir]:
        d.mkdir()
    m = quorum(children=children, start=start,
               opts=["threshold=2", "witness=%s" % wdir] + list(opts))
    if start:
        # A new witness is filled from the data first, like a new child.
        wait_child_state(m, str(wdir), "ok")
    return m, str(wdir)


def corrupt(path, offset, count):
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))


# -- (1) the kind, the options, status, writes ---------------------------

def test_status_shows_the_witness_and_its_size_on_disk(backing, quorum):
    m, wdir = mount_with_witness(quorum, backing)
    doc = status(m)
    w = child_status(doc, wdir)
    assert w["kind"] == "witness" and w["votes"] is True
    assert w["state"] == "ok"
    assert "size-on-disk" in w and w["size-on-disk"] > 0
    assert child_status(doc, m.children[0])["kind"] == "data"
    assert "size-on-disk" not in child_status(doc, m.children[0])
    assert doc["totals"]["voting"] == 3


def test_writes_truncates_and_holes_keep_the_digests_of_the_data(backing,
                                                                 quorum):
    m, wdir = mount_with_witness(quorum, backing)
    rng = random.Random(7)
    os.mkdir(m.path("dir"))
    model = bytearray()
    path = m.path("dir/img")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        for step in range(120):
            op = rng.random()
            if op < 0.6:
                off = rng.randrange(0, 3 * MiB)
                data = rng.randbytes(rng.randrange(1, 200 * KiB))
                os.pwrite(fd, data, off)
                if off > len(model):
                    model.extend(bytes(off - len(model)))
                model[off:off + len(data)] = data
            elif op < 0.8:
                size = rng.randrange(0, 3 * MiB)
                os.ftruncate(fd, size)
                del model[size:]
                model.extend(bytes(size - len(model)))
            else:
                off = rng.randrange(0, 3 * MiB)
                length = rng.randrange(1, 300 * KiB)
                qfs.fallocate(fd, qfs.FALLOC_FL_PUNCH_HOLE |
                              qfs.FALLOC_FL_KEEP_SIZE, off, length)
                end = min(off + length, len(model))
                if off < end:
                    model[off:end] = bytes(end - off)
            if step % 20 == 19:
                assert os.pread(fd, len(model) + 1, 0) == bytes(model)
                check_witness(m, "dir/img", wdir)
    finally:
        os.close(fd)
    assert qfs.read_file(path) == bytes(model)
    check_witness(m, "dir/img", wdir)
    # A file whose size is not a multiple of 4 KiB, written unaligned.
    qfs.write_file(m.path("odd"), b"x" * 10000)
    with open(m.path("odd"), "r+b") as f:
        f.seek(4000)
        f.write(b"y" * 300)
    assert check_witness(m, "odd", wdir)[3990:4010] == b"x" * 10 + b"y" * 10
    # The names and metadata follow.
    os.rename(m.path("odd"), m.path("dir/odd2"))
    os.chmod(m.path("dir/odd2"), 0o600)
    os.symlink("odd2", m.path("dir/link"))
    st = os.stat(os.path.join(wdir, "dir/odd2"))
    assert st.st_mode & 0o777 == 0o600
    assert os.readlink(os.path.join(wdir, "dir/link")) == "odd2"
    assert not os.path.exists(os.path.join(wdir, "odd"))
    assert os.stat(m.path("dir/odd2")).st_size == 10000


def test_the_witness_takes_under_one_percent_of_the_data(ext4_dir, quorum):
    m, wdir = mount_with_witness(quorum, ext4_dir)
    rng = random.Random(3)
    for k in range(4):
        qfs.write_file(m.path("f%d" % k), rng.randbytes(8 * MiB))
    data = sum(os.stat(m.path("f%d" % k)).st_size for k in range(4))
    files = sum(os.stat(os.path.join(wdir, "f%d" % k)).st_blocks * 512
                for k in range(4))
    assert files < data / 100, (files, data)
    doc = status(m)
    # The whole tree: the files, the directories and the record.
    assert child_status(doc, wdir)["size-on-disk"] < data / 100 + 256 * KiB


def test_a_witness_added_at_runtime_is_filled_with_digests(backing, quorum):
    m = quorum(n=2, threshold=2)
    rng = random.Random(5)
    os.mkdir(m.path("a"))
    qfs.write_file(m.path("a/big"), rng.randbytes(3 * MiB + 123))
    qfs.write_file(m.path("small"), b"hello")
    wdir = backing / "added-w"
    wdir.mkdir()
    control(m, "add %s name=w mode=witness" % wdir)
    wait_child_state(m, "w", "ok")
    for rel in ("a/big", "small"):
        check_witness(m, rel, str(wdir))
    assert child_status(status(m), "w")["kind"] == "witness"


def test_bad_forms_are_refused(tmpfs_dir, quorum, run_daemon):
    m, wdir = mount_with_witness(quorum, tmpfs_dir)
    other = tmpfs_dir / "other"
    other.mkdir()
    assert control_errno(m, "add %s mode=witness mode=witness" % other) == \
        errno.EINVAL
    assert control_errno(m, "add %s mode=witness mode=primary" % other) == \
        errno.EINVAL
    # Removing one data child leaves the other; the last one stays.
    control(m, "remove %s" % m.children[0])
    control(m, "threshold 1")
    assert control_errno(m, "remove %s" % m.children[1]) == errno.EINVAL
    assert "would leave no data child voting" in \
        status(m)["last-control-error"]["reason"]
    assert child_status(status(m), m.children[1])["state"] == "ok"
    # The witness as the only child, and given twice, at mount.
    mnt = tmpfs_dir / "mnt2"
    mnt.mkdir()
    rc, err = run_daemon("-o", "witness=%s" % other, str(mnt))
    assert rc != 0 and "cannot be the only child" in err, err
    d = tmpfs_dir / "d2"
    d.mkdir()
    rc, err = run_daemon("-o", "witness=%s,witness=%s" % (other, other),
                         str(d), str(mnt))
    assert rc != 0 and "witness= is given twice" in err, err


# -- (2) reads: the witness breaks the tie -------------------------------

def test_a_corrupt_data_child_is_outvoted_and_reported(backing, quorum):
    m, wdir = mount_with_witness(quorum, backing)
    rng = random.Random(11)
    data = rng.randbytes(2 * MiB + 1000)
    qfs.write_file(m.path("img"), data)
    corrupt(m.child_file(0, "img"), 5 * BLOCK + 100, 50)
    corrupt(m.child_file(0, "img"), 2 * MiB + 10, 5)  # the partial block
    assert qfs.read_file(m.path("img")) == data
    ev = m.wait_event("QUORUM_REPORT_BAD",
                      lambda d: d["node-name"] == m.children[0])
    assert ev["type"] == "read"
    assert not [d for d in m.events_named("QUORUM_REPORT_BAD")
                if d["node-name"] != m.children[0]]
    assert not m.events_named("QUORUM_FAILURE")
    # The corruption is still there without rewrite-corrupted.
    assert qfs.read_file(m.child_file(0, "img")) != data


def test_one_data_child_and_the_witness_serve_at_threshold_two(tmpfs_dir,
                                                               quorum):
    m, wdir = mount_with_witness(quorum, tmpfs_dir)
    data = random.Random(2).randbytes(300 * KiB)
    qfs.write_file(m.path("img"), data)
    control(m, "remove %s" % m.children[0])
    assert qfs.read_file(m.path("img")) == data
    with open(m.path("img"), "r+b") as f:
        f.seek(1000)
        f.write(b"z" * 5000)
    data = data[:1000] + b"z" * 5000 + data[6000:]
    assert qfs.read_file(m.path("img")) == data
    check_witness(m, "img", wdir)
    # The witness cannot vouch for bytes no data child has.
    corrupt(m.child_file(1, "img"), 0, 10)
    with pytest.raises(OSError) as e:
        qfs.read_file(m.path("img"))
    assert e.value.errno == errno.EIO


def test_rewrite_corrupted_repairs_from_the_other_data_child(backing, quorum):
    m, wdir = mount_with_witness(quorum, backing, opts=["rewrite-corrupted"])
    data = random.Random(4).randbytes(1 * MiB + 5)
    qfs.write_file(m.path("img"), data)
    corrupt(m.child_file(1, "img"), 7 * BLOCK, BLOCK)
    assert qfs.read_file(m.path("img")) == data
    m.wait_event("QUORUM_REPORT_BAD",
                 lambda d: d["node-name"] == m.children[1])
    assert qfs.read_file(m.child_file(1, "img")) == data
    # A witness whose digest is wrong is outvoted and repaired too.
    with open(os.path.join(wdir, "img"), "r+b") as f:
        f.seek(HEADER + 3 * DIGEST)
        f.write(bytes(DIGEST - 1) + b"\1")
    corrupt(m.child_file(0, "img"), 9 * BLOCK, 10)
    assert qfs.read_file(m.path("img")) == data
    m.wait_event("QUORUM_REPORT_BAD", lambda d: d["node-name"] == wdir)
    check_witness(m, "img", wdir)
    assert qfs.read_file(m.child_file(0, "img")) == data


# -- (3) scrub and resync ------------------------------------------------

def run_scrub(m, command):
    first = len(m.events())
    control(m, command)

    def completed():
        evs = m.events()[first:]
        return any(e["event"] == "SCRUB_COMPLETED" for e in evs) and evs

    evs = qfs.wait_for(completed, 60 * qfs.deadline_scale(),
                       "SCRUB_COMPLETED after %r" % command)
    return [e["data"] for e in evs if e["event"] == "SCRUB_MISMATCH"]


def test_scrub_finds_and_repair_fixes_a_corrupt_data_child(backing, quorum):
    m, wdir = mount_with_witness(quorum, backing)
    data = random.Random(8).randbytes(3 * MiB + 777)
    qfs.write_file(m.path("img"), data)
    corrupt(m.child_file(0, "img"), MiB + 3 * BLOCK + 1, 20)
    corrupt(m.child_file(1, "img"), 3 * MiB + 10, 3)
    found = sorted((d["node-name"], d["offset"], d["length"])
                   for d in run_scrub(m, "scrub start rate=0"))
    assert found == [(m.children[0], MiB + 3 * BLOCK, BLOCK),
                     (m.children[1], 3 * MiB, 777)], found
    assert qfs.read_file(m.child_file(0, "img")) != data
    found = run_scrub(m, "scrub repair rate=0")
    assert len(found) == 2 and all(d["repaired"] for d in found), found
    for i in (0, 1):
        assert qfs.read_file(m.child_file(i, "img")) == data
    assert run_scrub(m, "scrub start rate=0") == []
    check_witness(m, "img", wdir)


def test_scrub_repairs_a_witness_whose_digests_or_size_are_wrong(tmpfs_dir,
                                                                 quorum):
    m, wdir = mount_with_witness(quorum, tmpfs_dir)
    data = random.Random(9).randbytes(MiB + 5)
    qfs.write_file(m.path("img"), data)
    qfs.write_file(m.path("small"), b"abc")
    wfile = os.path.join(wdir, "img")
    with open(wfile, "r+b") as f:
        f.seek(HEADER + 100 * DIGEST)
        f.write(b"\x55" * DIGEST)
    with open(os.path.join(wdir, "small"), "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<Q", 9999))
    found = sorted((d["node-name"], d["path"])
                   for d in run_scrub(m, "scrub repair rate=0"))
    assert (wdir, "img") in found and (wdir, "small") in found, found
    check_witness(m, "img", wdir)
    check_witness(m, "small", wdir)
    assert run_scrub(m, "scrub start rate=0") == []


def test_scrub_copies_a_missing_entry_to_the_witness_as_digests(tmpfs_dir,
                                                                quorum):
    m, wdir = mount_with_witness(quorum, tmpfs_dir)
    os.makedirs(m.path("a/b"))
    qfs.write_file(m.path("a/b/f"), random.Random(1).randbytes(70000))
    qfs.write_file(m.path("a/g"), b"g" * 5)
    shutil.rmtree(os.path.join(wdir, "a"))
    found = run_scrub(m, "scrub repair rate=0")
    assert [(d["node-name"], d["path"]) for d in found] == [(wdir, "a")], \
        found
    check_witness(m, "a/b/f", wdir)
    check_witness(m, "a/g", wdir)
    assert run_scrub(m, "scrub start rate=0") == []


# -- (4) kill -9 and remount ---------------------------------------------

def all_ok(doc):
    return all(c["state"] == "ok" and c["votes"] for c in doc["children"])


def names(root):
    out = set()
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".quorumfs"]
        rel = os.path.relpath(dirpath, root)
        for n in dirs + files:
            out.add(os.path.normpath(os.path.join(rel, n)))
    return out


def churn_one(m, rng):
    k = rng.randrange(6)
    path = m.path("f%d" % k)
    op = rng.random()
    if op < 0.1:
        os.rename(path, m.path("f%d" % rng.randrange(6)))
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if op < 0.7:
            os.pwrite(fd, rng.randbytes(rng.randrange(1, 90000)),
                      rng.randrange(0, 2 * MiB))
        elif op < 0.85:
            os.ftruncate(fd, rng.randrange(0, 2 * MiB))
        else:
            qfs.fallocate(fd, qfs.FALLOC_FL_PUNCH_HOLE |
                          qfs.FALLOC_FL_KEEP_SIZE,
                          rng.randrange(0, 2 * MiB), rng.randrange(1, 100000))
    finally:
        os.close(fd)


def churn(m, rng, stop, done):
    """Random writes, truncates, holes, creations and renames, until
    stop is set or the mount goes away; done[0] counts the calls."""
    while not stop.is_set():
        try:
            churn_one(m, rng)
        except FileNotFoundError:
            pass  # a rename of a name not made yet
        except OSError:
            return  # the daemon was killed under the call
        done[0] += 1


def describe(m, wdir):
    """Each copy's names and sizes, for a failure's message."""
    out = []
    for root in m.children + [wdir]:
        for rel in sorted(names(root)):
            p = os.path.join(root, rel)
            size = (witness_file(p)[0] if root == wdir
                    else os.stat(p).st_size)
            out.append("%s %s %d" % (root[-2:], rel, size))
    return "\n".join(out)


@pytest.mark.timeout(300)
def test_kill_9_and_remount_settle_the_witness(backing, quorum):
    m, wdir = mount_with_witness(quorum, backing)
    rng = random.Random(21)
    for rnd in range(6):
        stop, done = threading.Event(), [0]
        t = threading.Thread(target=churn, args=(m, random.Random(rnd),
                                                 stop, done), daemon=True)
        t.start()
        # A seeded point to crash at: after some number of calls.
        calls = rng.randrange(5, 60)
        qfs.wait_for(lambda: done[0] >= calls, 30,
                     "%d calls before the kill" % calls)
        m.kill()
        stop.set()
        t.join(10)
        m.start()
        wait_status(m, all_ok, 60, "every child ok after kill %d" % rnd)
        assert names(m.children[0]) == names(m.children[1]) == \
            names(wdir), describe(m, wdir)
        for rel in sorted(names(m.children[0])):
            try:
                data = qfs.read_file(m.path(rel))
            except OSError as e:
                pytest.fail("%s: %s\n%s" % (rel, e, describe(m, wdir)))
            check_witness(m, rel, wdir)
            assert qfs.read_file(m.child_file(0, rel)) == data, rel
            assert qfs.read_file(m.child_file(1, rel)) == data, rel


def test_the_record_remembers_an_added_witness_across_a_remount(tmpfs_dir,
                                                                 quorum):
    m = quorum(n=2, threshold=2)
    qfs.write_file(m.path("f"), b"data" * 3000)
    wdir = tmpfs_dir / "w-added"
    wdir.mkdir()
    control(m, "add %s name=w mode=witness" % wdir)
    wait_child_state(m, "w", "ok")
    m.unmount()
    # The command line names only the data children; the record the rest.
    m.start()
    doc = wait_status(m, all_ok, 60, "every child ok after the remount")
    assert child_status(doc, "w")["kind"] == "witness"
    with open(m.path("f"), "r+b") as f:
        f.seek(5000)
        f.write(b"new")
    check_witness(m, "f", str(wdir))
