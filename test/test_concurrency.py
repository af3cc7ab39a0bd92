"""Concurrent I/O on one file (README "How requests are decided",
Ordering).

Threads with their own file descriptors write and read overlapping
ranges of one file for DURATION seconds. Every 512-byte sector a write
puts down names its writer, the write's sequence number and its own file
offset, and ends in a checksum, so a reader can tell a whole sector from
a torn one and knows which write it came from.

What must hold:
- every sector read is whole (or still zero);
- with 64 KiB writes aligned to 64 KiB, every 64 KiB block a read sees
  comes from exactly one write, and from one the read may see: not one
  that started after the read ended, nor one that a later write had
  completely replaced before the read began;
- afterwards every child holds the same bytes as the mount: overlapping
  writes reached every child in the same order;
- the event log has no QUORUM_REPORT_BAD or QUORUM_FAILURE: a read never
  votes on a write some children have applied and others not.
"""

import hashlib
import os
import random
import struct
import threading
import time

import pytest

import qfs
from qemu_util import aligned_buffer

DURATION = 10.0
THREADS = 8
SECTOR = 512
KiB = 1024
MiB = 1024 * KiB

_HEADER = struct.Struct("<4sIQQ")  # magic, writer, sequence, file offset
_MAGIC = b"QFSW"
_BODY = SECTOR - 8                 # bytes covered by the checksum
_ZERO = bytes(SECTOR)


def sector(writer, seq, offset):
    head = _HEADER.pack(_MAGIC, writer, seq, offset)
    body = (head + hashlib.sha256(head).digest() * 16)[:_BODY]
    return body + hashlib.blake2b(body, digest_size=8).digest()


def pattern(writer, seq, offset, length):
    """The bytes of write (writer, seq) over [offset, offset + length),
    both multiples of SECTOR."""
    return b"".join(sector(writer, seq, offset + k)
                    for k in range(0, length, SECTOR))


def sector_origin(data, offset):
    """(writer, seq) of a whole sector read at offset, None for zeros;
    raises AssertionError for anything else (a torn or misplaced sector)."""
    if data == _ZERO:
        return None
    magic, writer, seq, where = _HEADER.unpack_from(data)
    body = data[:_BODY]
    assert magic == _MAGIC and where == offset and \
        hashlib.blake2b(body, digest_size=8).digest() == data[_BODY:], \
        "sector at %d is not whole: %r" % (offset, data[:32])
    return writer, seq


def origins(data, offset):
    return [sector_origin(data[k:k + SECTOR], offset + k)
            for k in range(0, len(data), SECTOR)]


class Io:
    """pread/pwrite on one fd, through page-aligned buffers for O_DIRECT
    (the buffers are per thread, so each Io belongs to one thread)."""

    def __init__(self, path, direct, flags=os.O_RDWR):
        self.direct = direct
        self.fd = os.open(path, flags | (os.O_DIRECT if direct else 0))
        self.buf = aligned_buffer(MiB) if direct else None

    def pwrite(self, data, offset):
        if not self.direct:
            return os.pwrite(self.fd, data, offset)
        self.buf[:len(data)] = data
        with memoryview(self.buf) as view:
            return os.pwritev(self.fd, [view[:len(data)]], offset)

    def pread(self, length, offset):
        if not self.direct:
            return os.pread(self.fd, length, offset)
        with memoryview(self.buf) as view:
            n = os.preadv(self.fd, [view[:length]], offset)
        return bytes(self.buf[:n])

    def close(self):
        os.close(self.fd)
        if self.buf is not None:
            self.buf.close()


def run_threads(body, count=THREADS, duration=DURATION):
    """Run body(thread_id, rng, deadline) in count threads; re-raise the
    first failure. Each thread gets its own seeded rng."""
    seed = int(os.environ.get("QFS_SEED", random.randrange(1 << 32)))
    print("concurrency seed %d (QFS_SEED to repeat)" % seed)
    errors = []
    deadline = time.monotonic() + duration

    def wrap(tid):
        try:
            body(tid, random.Random(seed * 1000 + tid), deadline)
        except BaseException as e:  # reported below, in the test's thread
            errors.append((tid, e))

    threads = [threading.Thread(target=wrap, args=(t,), name="io%d" % t)
               for t in range(1, count + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 60)
    assert not any(t.is_alive() for t in threads), "an I/O thread hung"
    if errors:
        tid, e = errors[0]
        raise AssertionError("thread %d: %s" % (tid, e)) from e


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def assert_children_equal_mount(m, rel):
    data = read_all(m.path(rel))
    for i in range(len(m.children)):
        assert read_all(m.child_file(i, rel)) == data, \
            "child %d differs from the mount" % i
    return data


def assert_no_quorum_events(m):
    bad = [e for e in m.events() if e["event"].startswith("QUORUM_")]
    assert bad == [], "unexpected events: %s" % bad[:5]


# --- aligned 64 KiB writes: whole-block atomicity ---------------------------

BLOCK = 64 * KiB
ALIGNED_FILE = 2 * MiB  # 32 blocks: 8 threads collide often


class WriteLog:
    """When each write to each block ran: block -> list of
    (writer, seq, start_ns, end_ns). Appending to a list is atomic."""

    def __init__(self, blocks):
        self.blocks = [[] for _ in range(blocks)]

    def record(self, block, writer, seq, start, end):
        self.blocks[block].append((writer, seq, start, end))

    def check_visible(self, block, origin, start, end):
        """A read of block over [start, end] saw origin ((writer, seq) or
        None). Every write reaching a child is one the read may see:
        begun before the read ended, and not replaced by a write that
        began after it ended and itself ended before the read began."""
        writes = list(self.blocks[block])
        if origin is None:
            done = [w for w in writes if w[3] < start]
            assert not done, "block %d read as zeros after write %s " \
                "completed" % (block, done[0][:2])
            return
        match = [w for w in writes if w[:2] == origin]
        if not match:
            # Its write may still be running: it has not logged yet.
            return
        w = match[0]
        assert w[2] < end, "block %d shows write %s that began after the " \
            "read ended" % (block, origin)
        newer = [x for x in writes if x[2] > w[3] and x[3] < start]
        assert not newer, "block %d shows write %s, which write %s had " \
            "replaced before the read began" % (block, origin, newer[0][:2])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "buffered"])
def test_aligned_overlapping_writes_and_reads_never_tear_a_block(
        direct, ext4_dir, quorum):
    m = quorum(n=3, threshold=2, base=ext4_dir)
    rel = "aligned.img"
    with open(m.path(rel), "wb") as f:
        f.truncate(ALIGNED_FILE)
    nblocks = ALIGNED_FILE // BLOCK
    log = WriteLog(nblocks)
    counts = {"reads": 0, "writes": 0}

    def body(tid, rng, deadline):
        io = Io(m.path(rel), direct)
        seq = 0
        try:
            while time.monotonic() < deadline:
                first = rng.randrange(nblocks)
                if rng.random() < 0.5:
                    seq += 1
                    data = pattern(tid, seq, first * BLOCK, BLOCK)
                    start = time.monotonic_ns()
                    assert io.pwrite(data, first * BLOCK) == BLOCK
                    log.record(first, tid, seq, start, time.monotonic_ns())
                    counts["writes"] += 1
                    continue
                span = min(rng.choice((1, 2)), nblocks - first)
                start = time.monotonic_ns()
                data = io.pread(span * BLOCK, first * BLOCK)
                end = time.monotonic_ns()
                assert len(data) == span * BLOCK
                for b in range(span):
                    part = data[b * BLOCK:(b + 1) * BLOCK]
                    got = set(origins(part, (first + b) * BLOCK))
                    assert len(got) == 1, "block %d mixes writes %s" % (
                        first + b, sorted(got, key=str))
                    log.check_visible(first + b, got.pop(), start, end)
                counts["reads"] += 1
        finally:
            io.close()

    run_threads(body)
    print("aligned: %(reads)d reads, %(writes)d writes" % counts)
    assert counts["reads"] > 100 and counts["writes"] > 100

    # Each block ends with one of its writes that no later one replaced.
    data = assert_children_equal_mount(m, rel)
    end = time.monotonic_ns()
    for b in range(nblocks):
        got = set(origins(data[b * BLOCK:(b + 1) * BLOCK], b * BLOCK))
        assert len(got) == 1, "block %d mixes writes" % b
        log.check_visible(b, got.pop(), end, end)
    m.unmount()
    for i in range(len(m.children)):
        assert read_all(m.child_file(i, rel)) == data
    assert_no_quorum_events(m)


# --- random sector-aligned writes: per-sector integrity ----------------------

RANDOM_FILE = 4 * MiB


@pytest.mark.timeout(120)
@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "buffered"])
def test_random_overlapping_writes_and_reads_keep_every_sector_whole(
        direct, ext4_dir, quorum):
    m = quorum(n=3, threshold=2, base=ext4_dir)
    rel = "random.img"
    with open(m.path(rel), "wb") as f:
        f.truncate(RANDOM_FILE)
    # O_DIRECT needs the children's logical block alignment (512 here);
    # buffered I/O goes by sectors too, so each sector has one writer.
    unit = SECTOR
    counts = {"reads": 0, "writes": 0}

    def extent(rng):
        length = rng.choice((1, 1, 2, 7, 8, 16, 100, 128, 512)) * unit
        return rng.randrange(0, RANDOM_FILE - length + 1, unit), length

    def body(tid, rng, deadline):
        io = Io(m.path(rel), direct)
        seq = 0
        try:
            while time.monotonic() < deadline:
                off, length = extent(rng)
                if rng.random() < 0.5:
                    seq += 1
                    assert io.pwrite(pattern(tid, seq, off, length),
                                     off) == length
                    counts["writes"] += 1
                else:
                    data = io.pread(length, off)
                    assert len(data) == length
                    origins(data, off)
                    counts["reads"] += 1
        finally:
            io.close()

    run_threads(body)
    print("random: %(reads)d reads, %(writes)d writes" % counts)
    assert counts["reads"] > 100 and counts["writes"] > 100

    data = assert_children_equal_mount(m, rel)
    origins(data, 0)
    m.unmount()
    for i in range(len(m.children)):
        assert read_all(m.child_file(i, rel)) == data
    assert_no_quorum_events(m)


# --- writes past end of file, with readers at the end ------------------------

GROWTH_LIMIT = 64 * MiB  # per child, on a 512 MiB ext4 shared by three


@pytest.mark.timeout(120)
@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "buffered"])
def test_concurrent_extending_writes_and_reads_at_eof_raise_no_reports(
        direct, ext4_dir, quorum):
    m = quorum(n=3, threshold=2, base=ext4_dir)
    rel = "growing.img"
    open(m.path(rel), "wb").close()
    lock = threading.Lock()
    end = [0]
    records = []  # (offset, length, writer, seq)
    counts = {"reads": 0, "writes": 0}

    def reserve(length):
        with lock:
            off = end[0]
            end[0] += length
            return off

    def writer(tid, rng, deadline):
        io = Io(m.path(rel), direct)
        seq = 0
        try:
            while time.monotonic() < deadline and end[0] < GROWTH_LIMIT:
                seq += 1
                length = rng.choice((1, 1, 2, 3, 8, 16)) * SECTOR
                off = reserve(length)
                # Reserved ranges are written out of order, so the file
                # grows past holes that another writer fills later.
                assert io.pwrite(pattern(tid, seq, off, length),
                                 off) == length
                records.append((off, length, tid, seq))
                counts["writes"] += 1
        finally:
            io.close()

    def reader(tid, rng, deadline):
        io = Io(m.path(rel), direct, os.O_RDONLY)
        try:
            while time.monotonic() < deadline:
                size = os.fstat(io.fd).st_size
                off = max(0, size - rng.choice((1, 8, 64, 128)) * SECTOR)
                off -= off % SECTOR
                data = io.pread(128 * KiB, off)
                # Up to the end of file seen by the vote, never a part
                # sector: every write is whole sectors.
                assert len(data) % SECTOR == 0, len(data)
                origins(data, off)
                counts["reads"] += 1
        finally:
            io.close()

    def body(tid, rng, deadline):
        (writer if tid <= THREADS // 2 else reader)(tid, rng, deadline)

    run_threads(body)
    print("extending: %(reads)d reads, %(writes)d writes" % counts)
    assert counts["reads"] > 100 and counts["writes"] > 100

    data = assert_children_equal_mount(m, rel)
    assert len(data) == end[0]
    expected = bytearray(end[0])
    for off, length, tid, seq in records:
        expected[off:off + length] = pattern(tid, seq, off, length)
    assert data == expected
    m.unmount()
    for i in range(len(m.children)):
        assert read_all(m.child_file(i, rel)) == data
    assert_no_quorum_events(m)


# --- size changes racing reads and writes -------------------------------------

SIZE_LOW, SIZE_HIGH = 2 * MiB, 4 * MiB


@pytest.mark.timeout(120)
def test_truncates_and_punched_holes_racing_io_keep_children_identical(
        ext4_dir, quorum):
    m = quorum(n=3, threshold=2, base=ext4_dir)
    rel = "resized.img"
    with open(m.path(rel), "wb") as f:
        f.truncate(SIZE_HIGH)
    counts = {"reads": 0, "writes": 0, "resizes": 0}

    def extent(rng):
        length = rng.choice((1, 8, 128)) * SECTOR
        return rng.randrange(0, SIZE_HIGH - length + 1, SECTOR), length

    def body(tid, rng, deadline):
        io = Io(m.path(rel), direct=tid % 2 == 0)
        seq = 0
        try:
            while time.monotonic() < deadline:
                off, length = extent(rng)
                if tid <= 2:
                    # Shrink and grow at sector boundaries, or punch a
                    # hole: every byte past or inside it becomes zero.
                    if rng.random() < 0.5:
                        os.ftruncate(io.fd, rng.randrange(
                            SIZE_LOW, SIZE_HIGH + 1, SECTOR))
                    else:
                        qfs.fallocate(io.fd, qfs.FALLOC_FL_PUNCH_HOLE |
                                      qfs.FALLOC_FL_KEEP_SIZE, off, length)
                    counts["resizes"] += 1
                elif tid <= 5:
                    seq += 1
                    assert io.pwrite(pattern(tid, seq, off, length),
                                     off) == length
                    counts["writes"] += 1
                else:
                    data = io.pread(length, off)
                    assert len(data) % SECTOR == 0, len(data)
                    origins(data, off)
                    counts["reads"] += 1
        finally:
            io.close()

    run_threads(body)
    print("resizing: %(reads)d reads, %(writes)d writes, "
          "%(resizes)d resizes" % counts)
    assert min(counts.values()) > 100

    data = assert_children_equal_mount(m, rel)
    origins(data, 0)
    m.unmount()
    for i in range(len(m.children)):
        assert read_all(m.child_file(i, rel)) == data
    assert_no_quorum_events(m)


# --- O_APPEND writers ---------------------------------------------------------

@pytest.mark.timeout(120)
def test_append_mode_writers_lose_and_tear_no_record(ext4_dir, quorum):
    m = quorum(n=3, threshold=2, base=ext4_dir)
    rel = "journal.log"
    open(m.path(rel), "wb").close()
    written = {}  # (writer, seq) -> length

    def writer(tid, rng, deadline):
        fd = os.open(m.path(rel), os.O_WRONLY | os.O_APPEND)
        seq = 0
        try:
            while time.monotonic() < deadline and seq < 3000:
                seq += 1
                length = rng.choice((1, 2, 5, 16)) * SECTOR
                # The offset field is unknown before the kernel picks it:
                # records carry 0 there and are found by their headers.
                assert os.write(fd, pattern(tid, seq, 0, length)) == length
                written[(tid, seq)] = length
        finally:
            os.close(fd)

    def reader(tid, rng, deadline):
        fd = os.open(m.path(rel), os.O_RDONLY)
        try:
            while time.monotonic() < deadline:
                size = os.fstat(fd).st_size
                os.pread(fd, 64 * KiB, max(0, size - 32 * KiB))
        finally:
            os.close(fd)

    def body(tid, rng, deadline):
        (writer if tid <= 6 else reader)(tid, rng, deadline)

    run_threads(body)
    assert len(written) > 100
    data = assert_children_equal_mount(m, rel)
    assert len(data) == sum(written.values())
    # Walk the records: each is whole and appears exactly once.
    seen = {}
    pos = 0
    while pos < len(data):
        head = data[pos:pos + SECTOR]
        origin = sector_origin(head, 0)
        assert origin is not None, "zeros at %d" % pos
        length = written.get(origin)
        assert length is not None and origin not in seen, \
            "record %s at %d unexpected" % (origin, pos)
        assert data[pos:pos + length] == pattern(*origin, 0, length), \
            "record %s at %d is torn" % (origin, pos)
        seen[origin] = pos
        pos += length
    assert len(seen) == len(written)
    m.unmount()
    assert_no_quorum_events(m)
