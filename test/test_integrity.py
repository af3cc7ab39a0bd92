"""Random-operation data integrity against an in-memory model (README
"How requests are decided" and "Behaving like a local filesystem").

A seeded stream of OPS operations on one file through the mount: writes
at random offsets and sizes, truncates that grow and shrink, punched
holes, zeroed ranges, extending fallocate, and reads that must return
exactly what a bytearray model holds. With O_DIRECT every offset and size
is a multiple of 4 KiB and every buffer is page-aligned. Children on tmpfs
and on ext4. At the end the mount, the model and every child hold the
same bytes, and SEEK_DATA/SEEK_HOLE report every nonzero byte as data.

The seed is printed; QFS_SEED repeats a run.
"""

import errno
import os
import random

import pytest

import qfs
from qemu_util import aligned_buffer

OPS = 3000
KiB = 1024
MiB = 1024 * KiB
MAX_SIZE = 8 * MiB
ALIGN = 4 * KiB

PUNCH = qfs.FALLOC_FL_PUNCH_HOLE | qfs.FALLOC_FL_KEEP_SIZE
ZERO = qfs.FALLOC_FL_ZERO_RANGE
KEEP = qfs.FALLOC_FL_KEEP_SIZE


def fallocate_supported(directory, mode):
    """Whether the file system under directory takes this fallocate mode;
    the mount must answer as its children would."""
    path = os.path.join(str(directory), ".fallocate-probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        qfs.fallocate(fd, mode, 0, ALIGN)
        return True
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            return False
        raise
    finally:
        os.close(fd)
        os.unlink(path)


class File:
    """The file on the mount, and what it must hold."""

    def __init__(self, path, direct, rng):
        self.direct = direct
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT |
                          (os.O_DIRECT if direct else 0), 0o644)
        self.buf = aligned_buffer(MiB) if direct else None
        self.model = bytearray()
        self.rng = rng

    def close(self):
        os.close(self.fd)
        if self.buf is not None:
            self.buf.close()

    # -- operations: each changes the file and the model alike --

    def pwrite(self, off, data):
        if self.direct:
            self.buf[:len(data)] = data
            with memoryview(self.buf) as view:
                n = os.pwritev(self.fd, [view[:len(data)]], off)
        else:
            n = os.pwrite(self.fd, data, off)
        assert n == len(data)
        if off > len(self.model):
            self.model.extend(bytes(off - len(self.model)))
        self.model[off:off + len(data)] = data

    def truncate(self, size):
        os.ftruncate(self.fd, size)
        if size < len(self.model):
            del self.model[size:]
        else:
            self.model.extend(bytes(size - len(self.model)))

    def fallocate(self, mode, off, length):
        qfs.fallocate(self.fd, mode, off, length)
        end = off + length
        if not mode & KEEP and end > len(self.model):
            self.model.extend(bytes(end - len(self.model)))
        if mode & (qfs.FALLOC_FL_PUNCH_HOLE | ZERO):
            stop = min(end, len(self.model))
            if stop > off:
                self.model[off:stop] = bytes(stop - off)

    def pread(self, off, length):
        if self.direct:
            with memoryview(self.buf) as view:
                n = os.preadv(self.fd, [view[:length]], off)
            return bytes(self.buf[:n])
        return os.pread(self.fd, length, off)

    def check_read(self, off, length):
        got = self.pread(off, length)
        want = bytes(self.model[off:off + length])
        if got != want:
            first = next((i for i, (a, b) in enumerate(zip(got, want))
                          if a != b), min(len(got), len(want)))
            raise AssertionError(
                "read %d+%d: got %d bytes, model has %d; first difference "
                "at offset %d" % (off, length, len(got), len(want),
                                  off + first))

    def check_size(self):
        assert os.fstat(self.fd).st_size == len(self.model), \
            "size %d, model %d" % (os.fstat(self.fd).st_size,
                                   len(self.model))


def random_extent(rng, direct, limit=MAX_SIZE):
    """(offset, length) inside [0, limit): sizes from a byte to 256 KiB,
    mostly small; multiples of ALIGN with O_DIRECT."""
    if direct:
        length = ALIGN * rng.choice((1, 1, 2, 3, 8, 16, 64))
        off = ALIGN * rng.randrange((limit - length) // ALIGN + 1)
        return off, length
    length = rng.choice((1, 7, 511, 512, 4096, 4097, 65536, 262144,
                         rng.randrange(1, 300000)))
    if rng.random() < 0.5:
        off = rng.randrange(limit - length + 1)
    else:
        off = ALIGN * rng.randrange((limit - length) // ALIGN + 1)
    return off, length


def near_end(rng, f, direct):
    """An offset near the current end of file, where growth happens."""
    off = max(0, len(f.model) + rng.randrange(-65536, 65536))
    if direct:
        off -= off % ALIGN
    return min(off, MAX_SIZE - 256 * KiB)


def random_op(rng, f, direct, zero_range_ok):
    """Do one random operation; returns a description for the history."""
    roll = rng.random()
    if roll < 0.35:
        off, length = random_extent(rng, direct)
        if rng.random() < 0.3:
            off = near_end(rng, f, direct)
        f.pwrite(off, rng.randbytes(length))
        return "pwrite(%d, %d)" % (off, length)
    if roll < 0.65:
        off, length = random_extent(rng, direct)
        if rng.random() < 0.3:
            off = near_end(rng, f, direct)
        f.check_read(off, length)
        return "pread(%d, %d)" % (off, length)
    if roll < 0.72:
        size = rng.choice((rng.randrange(MAX_SIZE),
                           max(0, len(f.model) + rng.randrange(-8192, 8192))))
        if direct and rng.random() < 0.5:
            size -= size % ALIGN
        f.truncate(size)
        return "ftruncate(%d)" % size
    if roll < 0.81:
        off, length = random_extent(rng, direct)
        f.fallocate(PUNCH, off, length)
        return "punch_hole(%d, %d)" % (off, length)
    if roll < 0.90:
        off, length = random_extent(rng, direct)
        mode = ZERO | (KEEP if rng.random() < 0.5 else 0)
        if not zero_range_ok:
            with pytest.raises(OSError) as e:
                f.fallocate(mode, off, length)
            assert e.value.errno == errno.EOPNOTSUPP
            return "zero_range(%d, %d) -> EOPNOTSUPP" % (off, length)
        f.fallocate(mode, off, length)
        return "zero_range(%#x, %d, %d)" % (mode, off, length)
    if roll < 0.96:
        off = near_end(rng, f, direct)
        length = rng.randrange(1, 256 * KiB)
        f.fallocate(0, off, length)
        return "fallocate(%d, %d)" % (off, length)
    f.check_size()
    return "fstat"


def data_extents(fd, size):
    """[(start, end)) of every data region SEEK_DATA/SEEK_HOLE report."""
    out = []
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, qfs.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        end = os.lseek(fd, start, qfs.SEEK_HOLE)
        assert end > start, "SEEK_HOLE(%d) = %d" % (start, end)
        out.append((start, end))
        off = end
    return out


def covered(extents, start, end):
    """Whether [start, end) lies inside the union of extents (sorted)."""
    for a, b in extents:
        if a <= start < b:
            start = b
            if start >= end:
                return True
        elif a > start:
            return False
    return start >= end


def nonzero_runs(data, block=ALIGN):
    """[start, end) from the first to the last nonzero byte of every
    block of data that is not all zero."""
    zero = bytes(block)
    for off in range(0, len(data), block):
        chunk = data[off:off + block]
        if chunk == zero[:len(chunk)]:
            continue
        lead = len(chunk) - len(chunk.lstrip(b"\0"))
        tail = len(chunk.rstrip(b"\0"))
        yield off + lead, off + tail


@pytest.mark.timeout(300)
@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "o_direct"])
def test_random_operations_match_the_model_on_mount_and_children(
        direct, backing, quorum):
    seed = int(os.environ.get("QFS_SEED", random.randrange(1 << 32)))
    print("integrity seed %d (QFS_SEED=%d to repeat)" % (seed, seed))
    rng = random.Random(seed)
    zero_range_ok = fallocate_supported(backing, ZERO)
    m = quorum(n=3, threshold=2)
    rel = "model.img"
    f = File(m.path(rel), direct, rng)
    history = []
    try:
        for i in range(OPS):
            try:
                history.append(random_op(rng, f, direct, zero_range_ok))
            except (AssertionError, OSError) as e:
                raise AssertionError(
                    "seed %d, op %d failed: %s\nlast operations:\n  %s" % (
                        seed, i, e, "\n  ".join(history[-15:] + ["<this>"])))
        f.check_size()
        for off in range(0, len(f.model) + ALIGN, MiB):
            f.check_read(off, MiB)

        size = len(f.model)
        mount_data = data_extents(f.fd, size)
        for start, end in nonzero_runs(bytes(f.model)):
            assert covered(mount_data, start, end), \
                "seed %d: bytes %d..%d are nonzero but SEEK_DATA/SEEK_HOLE " \
                "report no data there: %s" % (seed, start, end, mount_data)
        # A range is a hole only where every child has one.
        for i in range(len(m.children)):
            fd = os.open(m.child_file(i, rel), os.O_RDONLY)
            try:
                for start, end in data_extents(fd, size):
                    assert covered(mount_data, start, end), \
                        "seed %d: child %d has data at %d..%d, the mount " \
                        "a hole" % (seed, i, start, end)
            finally:
                os.close(fd)
    finally:
        f.close()

    with open(m.path(rel), "rb") as fh:
        assert fh.read() == f.model, "seed %d: mount differs" % seed
    m.unmount()
    for i in range(len(m.children)):
        with open(m.child_file(i, rel), "rb") as fh:
            assert fh.read() == f.model, "seed %d: child %d differs" % (
                seed, i)
    unexpected = [e for e in m.events() if e["event"].startswith("QUORUM_")
                  and not (not zero_range_ok and refused_zero_range(e))]
    assert unexpected == [], unexpected[:5]


def refused_zero_range(ev):
    """The events of a zero-range fallocate every child refused: each
    child's failure, and the quorum's."""
    d = ev["data"]
    if ev["event"] == "QUORUM_FAILURE":
        return True
    return d.get("type") == "write" and \
        d.get("error") == os.strerror(errno.EOPNOTSUPP)
