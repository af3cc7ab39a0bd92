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
import struct

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
