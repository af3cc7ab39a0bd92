"""How FUSE requests reach the daemon (README "FUSE over io_uring"):
/dev/fuse, or the kernel's io_uring queues with -o uring=auto|on|off.

The kernel offers io_uring only when root has written Y to its module
parameter; the tests set it as each needs and put it back."""

import json
import os
import random
import threading

import pytest

import qfs
from qemu_util import aligned_buffer

PARAM = "/sys/module/fuse/parameters/enable_uring"
KiB = 1024
MiB = 1024 * KiB

pytestmark = pytest.mark.timeout(120)


def status(m):
    with open(m.path(".control")) as f:
        return json.load(f)


@pytest.fixture
def kernel_uring():
    """kernel_uring(on): set the kernel's switch; restored at teardown.
    Skips where the kernel has no FUSE over io_uring at all."""
    if not os.path.exists(PARAM):
        pytest.skip("this kernel has no FUSE over io_uring")
    with open(PARAM) as f:
        before = f.read().strip()

    def set_it(on):
        with open(PARAM, "w") as f:
            f.write("Y" if on else "N")

    yield set_it
    with open(PARAM, "w") as f:
        f.write(before)


def possible_cpus():
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    return int(text.split("-")[-1]) + 1


def direct_io(path, ops):
    """ops: (offset, bytes) writes then reads back through O_DIRECT;
    returns what each read saw."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        for off, data in ops:
            buf = aligned_buffer(len(data))
            buf[:] = data
            assert os.pwritev(fd, [buf], off) == len(data)
        seen = []
        for off, data in ops:
            buf = aligned_buffer(len(data))
            assert os.preadv(fd, [buf], off) == len(data)
            seen.append(bytes(buf))
        return seen
    finally:
        os.close(fd)


def random_ops(rng, count, file_size):
    ops = []
    for _ in range(count):
        size = rng.choice([4 * KiB, 64 * KiB, MiB])
        off = rng.randrange(0, file_size - size, 4 * KiB)
        ops.append((off, rng.randbytes(size)))
    return ops


@pytest.mark.parametrize("backing", ["tmpfs", "ext4"], indirect=True)
def test_uring_serves_reads_and_writes(kernel_uring, quorum, backing):
    kernel_uring(True)
    m = quorum(opts="uring=on")
    st = status(m)["transport"]
    assert st["kind"] == "io_uring"
    assert st["queues"] == possible_cpus() and st["slots"] == 8
    rng = random.Random(7)
    ops = random_ops(rng, 40, 16 * MiB)
    path = m.path("img")
    seen = direct_io(path, ops)
    model = bytearray(16 * MiB)
    for off, data in ops:
        model[off:off + len(data)] = data
    for (off, data), got in zip(ops, seen):
        assert got == bytes(model[off:off + len(data)])
    # Buffered I/O and the namespace go through the rings too.
    qfs.write_file(m.path("small"), b"hello")
    assert qfs.read_file(m.path("small")) == b"hello"
    os.rename(m.path("small"), m.path("renamed"))
    assert sorted(os.listdir(m.path())) == ["img", "renamed"]
    # Every data request (none of them is the .control file's) came
    # through a ring.
    req = status(m)["requests"]
    assert req["write"]["count"] >= len(ops)
    assert req["write"]["ring"] == req["write"]["count"]
    assert req["read"]["ring"] == req["read"]["count"] >= len(ops)
    for i in range(3):
        child = qfs.read_file(m.child_file(i, "img"))
        assert child == bytes(model[:len(child)])


def test_uring_many_threads(kernel_uring, quorum):
    """More writers than a queue has slots: requests wait in the kernel's
    queue, none is lost, every child ends identical."""
    kernel_uring(True)
    m = quorum(opts="uring=on")
    path = m.path("img")
    qfs.write_file(path, b"")
    region = 2 * MiB
    errors = []

    def writer(k):
        try:
            rng = random.Random(k)
            ops = [(k * region + off, data)
                   for off, data in random_ops(rng, 12, region)]
            seen = direct_io(path, ops)
            final = {}
            for off, data in ops:
                for b in range(0, len(data), 4 * KiB):
                    final[off + b] = data[b:b + 4 * KiB]
            fd = os.open(path, os.O_RDONLY)
            try:
                for off, block in final.items():
                    assert os.pread(fd, len(block), off) == block
            finally:
                os.close(fd)
            assert len(seen) == len(ops)
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
        assert not t.is_alive(), "a writer hung"
    assert not errors, errors
    mount_bytes = qfs.read_file(path)
    for i in range(3):
        assert qfs.read_file(m.child_file(i, "img")) == mount_bytes


@pytest.mark.parametrize("opts", ["uring=off", ""], ids=["off", "default"])
def test_uring_off_stays_on_dev_fuse(kernel_uring, quorum, opts):
    """off, and the default, keep /dev/fuse where io_uring is offered."""
    kernel_uring(True)
    m = quorum(opts=opts)
    qfs.write_file(m.path("f"), b"x" * 8192)
    assert qfs.read_file(m.path("f")) == b"x" * 8192
    assert status(m)["transport"] == {"kind": "/dev/fuse", "queues": 0,
                                      "slots": 0}
    assert status(m)["requests"]["write"]["ring"] == 0


def test_uring_auto_falls_back_when_kernel_says_no(kernel_uring, quorum):
    kernel_uring(False)
    m = quorum(opts="uring=auto")
    qfs.write_file(m.path("f"), b"y" * 8192)
    assert qfs.read_file(m.path("f")) == b"y" * 8192
    assert status(m)["transport"]["kind"] == "/dev/fuse"
    assert status(m)["requests"]["read"]["ring"] == 0


def test_uring_auto_takes_it_when_offered(kernel_uring, quorum):
    kernel_uring(True)
    m = quorum(opts="uring=auto")
    qfs.write_file(m.path("f"), b"z" * 8192)
    assert status(m)["transport"]["kind"] == "io_uring"
    assert status(m)["requests"]["write"]["ring"] >= 1


def empty_set(tmp_path):
    """Three empty children and a mount point: (children, mnt)."""
    children = []
    for i in range(3):
        c = tmp_path / ("c%d" % i)
        c.mkdir()
        children.append(str(c))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    return children, mnt


def test_uring_on_refused_when_kernel_says_no(kernel_uring, run_daemon,
                                              tmp_path):
    kernel_uring(False)
    children, mnt = empty_set(tmp_path)
    rc, err = run_daemon("-o", "uring=on", *children, str(mnt))
    lines = err.strip().split("\n")
    assert rc == 1 and len(lines) == 1, err
    assert lines[0].startswith("quorumfs: uring=on:"), lines[0]
    assert PARAM in lines[0]
    assert not qfs.is_fuse_mounted(str(mnt))


def test_uring_bad_value_refused(run_daemon, tmp_path):
    children, mnt = empty_set(tmp_path)
    rc, err = run_daemon("-o", "uring=maybe", *children, str(mnt))
    assert rc == 1
    assert err.strip() == ("quorumfs: uring=maybe is invalid: it must be "
                           "auto, on or off")
    assert not qfs.is_fuse_mounted(str(mnt))
    assert all(not os.listdir(c) for c in children)
