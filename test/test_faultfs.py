"""faultfs on its own, before it stands in for a faulty quorumfs child.

First it must be a faithful pass-through: whatever a test does on the
mount happens to the backing directory, and changes made behind its back
show at once. Then each kind of rule must hit exactly the operations,
files and byte ranges it names, and nothing after clear(). Stalls must
end when their time is up, when the rule is removed, when the caller is
killed, and when faultfs is stopped: a test that leaves a process stuck in
a FUSE request cannot clean up after itself.

Operations that may stall run in a subprocess with a deadline. "Stalled"
is observed, not assumed: the caller is seen waiting in the kernel's FUSE
request wait (its wchan).
"""

import errno
import itertools
import mmap
import os
import random
import stat
import subprocess
import sys
import threading
import time

import pytest

import qfs
from qfs import read_file, write_file
from faultfs import FaultFS, faultfs_binary, rule

pytestmark = pytest.mark.timeout(60)

KiB = 1024
MiB = 1024 * KiB


# --- fixtures ----------------------------------------------------------

@pytest.fixture
def mount_faultfs(callers, faulty):
    """Factory: mount_faultfs(backing_dir) -> a started FaultFS (the
    faulty fixture). Set up after callers, so torn down before them:
    callers are reaped after their stalls ended."""
    return faulty


@pytest.fixture
def ffs(mount_faultfs, tmpfs_dir):
    return mount_faultfs(tmpfs_dir)


# --- helpers -----------------------------------------------------------

def pattern(size, seed=1):
    out = bytearray()
    block = 0
    while len(out) < size:
        out += (b"%08d:%08d|" % (seed, block)) * 16
        block += 1
    return bytes(out[:size])


def pread(path, length, offset):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def pwrite(path, data, offset):
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def errno_of(fn, *args):
    """The errno fn(*args) fails with, or None when it succeeds."""
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return None


# One operation in a child process, which may stall without stalling the
# test. Prints "ok N" or "errno N".
IO_SCRIPT = r"""
import os, sys
op, path, off, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
try:
    if op == "read":
        fd = os.open(path, os.O_RDONLY)
        r = len(os.pread(fd, n, off))
    elif op == "write":
        fd = os.open(path, os.O_WRONLY)
        r = os.pwrite(fd, b"w" * n, off)
    elif op == "fsync":
        fd = os.open(path, os.O_WRONLY)
        os.fsync(fd)
        r = 0
    print("ok", r, flush=True)
except OSError as e:
    print("errno", e.errno, flush=True)
"""


class Caller:
    """A subprocess doing one operation on the mount."""

    def __init__(self, op, path, offset=0, length=4 * KiB):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", IO_SCRIPT, op, str(path), str(offset),
             str(length)], stdout=subprocess.PIPE, text=True)

    def blocked_in_fuse(self):
        """True while the process waits for a FUSE reply."""
        try:
            with open("/proc/%d/wchan" % self.proc.pid) as f:
                return f.read().strip() == "request_wait_answer"
        except OSError:
            return False

    def wait_blocked(self, timeout=10):
        qfs.wait_for(lambda: self.blocked_in_fuse() or
                     self.proc.poll() is not None,
                     timeout, "the caller to reach the FUSE request")
        assert self.proc.poll() is None, \
            "the operation finished instead of stalling: %s" % \
            self.proc.stdout.read()

    def result(self, timeout=10):
        """("ok", n) or ("errno", e), failing the test at the deadline."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("the operation did not finish within %.0fs" %
                        timeout)
        kind, value = out.split()
        return kind, int(value)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def callers():
    """Makes Callers and kills the ones still running at teardown."""
    made = []

    def make(*args, **kw):
        c = Caller(*args, **kw)
        made.append(c)
        return c

    yield make
    # All at once: a caller queued on the kernel's inode lock behind a
    # stalled one can only die after that one has.
    for c in made:
        if c.proc.poll() is None:
            c.proc.kill()
    for c in made:
        c.proc.wait(10)


# --- pass-through ------------------------------------------------------

def test_written_data_reads_back_and_lands_in_the_backing_file(
        backing, mount_faultfs):
    ffs = mount_faultfs(backing)
    data = pattern(3 * MiB + 123)
    with open(ffs.path("f"), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        os.fdatasync(f.fileno())
    assert read_file(ffs.path("f")) == data
    assert read_file(ffs.backing_path("f")) == data
    assert pread(ffs.path("f"), 10, 1 * MiB) == data[1 * MiB:1 * MiB + 10]
    assert os.stat(ffs.path("f")).st_size == len(data)


def test_truncate_grows_with_zeros_and_shrinks(ffs):
    write_file(ffs.path("f"), b"abcdef")
    os.truncate(ffs.path("f"), 10)
    assert read_file(ffs.backing_path("f")) == b"abcdef" + b"\0" * 4
    with open(ffs.path("f"), "r+b") as f:
        os.ftruncate(f.fileno(), 2)
    assert read_file(ffs.path("f")) == b"ab"
    assert os.stat(ffs.backing_path("f")).st_size == 2


def test_rename_moves_noreplace_refuses_and_exchange_swaps(ffs):
    write_file(ffs.path("a"), b"A")
    write_file(ffs.path("b"), b"B")
    os.rename(ffs.path("a"), ffs.path("c"))
    assert sorted(os.listdir(ffs.backing)) == ["b", "c"]
    e = errno_of(qfs.renameat2, ffs.path("c"), ffs.path("b"),
                 qfs.RENAME_NOREPLACE)
    assert e == errno.EEXIST
    qfs.renameat2(ffs.path("c"), ffs.path("b"), qfs.RENAME_EXCHANGE)
    assert read_file(ffs.backing_path("b")) == b"A"
    assert read_file(ffs.backing_path("c")) == b"B"


def test_xattrs_are_set_listed_read_and_removed_on_the_backing_file(ffs):
    write_file(ffs.path("f"), b"x")
    os.setxattr(ffs.path("f"), "user.color", b"blue")
    assert os.getxattr(ffs.backing_path("f"), "user.color") == b"blue"
    assert os.getxattr(ffs.path("f"), "user.color") == b"blue"
    assert "user.color" in os.listxattr(ffs.path("f"))
    os.removexattr(ffs.path("f"), "user.color")
    assert os.listxattr(ffs.backing_path("f")) == []
    assert errno_of(os.getxattr, ffs.path("f"), "user.color") == \
        errno.ENODATA


def test_o_direct_aligned_io_works_on_ext4_and_unaligned_gets_einval(
        ext4_dir, mount_faultfs):
    ffs = mount_faultfs(ext4_dir)
    data = pattern(64 * KiB)
    buf = mmap.mmap(-1, len(data))  # page aligned, as O_DIRECT callers use
    buf[:] = data
    fd = os.open(ffs.path("img"), os.O_RDWR | os.O_CREAT | os.O_DIRECT,
                 0o644)
    try:
        assert os.pwritev(fd, [buf], 4 * KiB) == len(data)
        back = mmap.mmap(-1, len(data))
        assert os.preadv(fd, [back], 4 * KiB) == len(data)
        assert back[:] == data
        # ext4 refuses an O_DIRECT read at an unaligned offset; faultfs
        # passes that refusal through unchanged (QEMU probes with it).
        assert errno_of(os.preadv, fd, [back], 1) == errno.EINVAL
    finally:
        os.close(fd)
    assert read_file(ffs.backing_path("img"))[4 * KiB:] == data


def test_fallocate_modes_and_seek_data_hole_pass_through(backing,
                                                         mount_faultfs):
    ffs = mount_faultfs(backing)
    # tmpfs has no zero-range: then faultfs must give its EOPNOTSUPP.
    write_file(ffs.backing_path("probe"), b"p" * 8192)
    fd = os.open(ffs.backing_path("probe"), os.O_RDWR)
    zero_range = errno_of(qfs.fallocate, fd, qfs.FALLOC_FL_ZERO_RANGE, 0,
                          4 * KiB)
    os.close(fd)
    write_file(ffs.path("f"), pattern(1 * MiB))
    fd = os.open(ffs.path("f"), os.O_RDWR)
    try:
        qfs.fallocate(fd, qfs.FALLOC_FL_PUNCH_HOLE | qfs.FALLOC_FL_KEEP_SIZE,
                      256 * KiB, 256 * KiB)
        assert errno_of(qfs.fallocate, fd, qfs.FALLOC_FL_ZERO_RANGE,
                        768 * KiB, 4 * KiB) == zero_range
        qfs.fallocate(fd, 0, 1 * MiB, 1 * MiB)
        assert os.lseek(fd, 0, qfs.SEEK_HOLE) == 256 * KiB
        assert os.lseek(fd, 256 * KiB, qfs.SEEK_DATA) == 512 * KiB
    finally:
        os.close(fd)
    got = read_file(ffs.backing_path("f"))
    assert len(got) == 2 * MiB
    assert got[256 * KiB:512 * KiB] == b"\0" * (256 * KiB)
    if zero_range is None:
        assert got[768 * KiB:772 * KiB] == b"\0" * (4 * KiB)
    assert got[:256 * KiB] == pattern(1 * MiB)[:256 * KiB]


def test_namespace_operations_reach_the_backing_directory(ffs):
    os.mkdir(ffs.path("d"), 0o750)
    assert stat.S_IMODE(os.stat(ffs.backing_path("d")).st_mode) == 0o750
    write_file(ffs.path("d/f"), b"x")
    os.symlink("f", ffs.path("d/s"))
    assert os.readlink(ffs.backing_path("d/s")) == "f"
    assert os.readlink(ffs.path("d/s")) == "f"
    os.link(ffs.path("d/f"), ffs.path("d/h"))
    assert os.stat(ffs.backing_path("d/f")).st_nlink == 2
    os.mkfifo(ffs.path("d/p"))
    assert stat.S_ISFIFO(os.lstat(ffs.backing_path("d/p")).st_mode)
    assert sorted(os.listdir(ffs.path("d"))) == ["f", "h", "p", "s"]
    os.chmod(ffs.path("d/f"), 0o600)
    os.chown(ffs.path("d/f"), 1234, 5678)
    os.utime(ffs.path("d/f"), ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(ffs.backing_path("d/f"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == \
        (0o600, 1234, 5678)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    for name in ("f", "h", "s", "p"):
        os.unlink(ffs.path("d/" + name))
    os.rmdir(ffs.path("d"))
    assert os.listdir(ffs.backing) == []


def test_statfs_reports_the_backing_file_system(ffs):
    mine, theirs = os.statvfs(ffs.mnt), os.statvfs(ffs.backing)
    assert (mine.f_bsize, mine.f_blocks) == (theirs.f_bsize, theirs.f_blocks)


def test_changes_in_the_backing_directory_show_at_once(ffs):
    write_file(ffs.path("f"), b"old")
    assert read_file(ffs.path("f")) == b"old"
    write_file(ffs.backing_path("f"), b"newer")
    write_file(ffs.backing_path("g"), b"g")
    assert read_file(ffs.path("f")) == b"newer"
    assert os.stat(ffs.path("f")).st_size == 5
    assert sorted(os.listdir(ffs.mnt)) == ["f", "g"]
    os.unlink(ffs.backing_path("g"))
    assert not os.path.exists(ffs.path("g"))


def test_an_unlinked_open_file_stays_usable_and_leaves_nothing_behind(ffs):
    with open(ffs.path("f"), "w+b") as f:
        f.write(b"abc")
        f.flush()
        os.unlink(ffs.path("f"))
        f.seek(0)
        assert f.read() == b"abc"
        f.write(b"def")
        f.flush()
        os.fsync(f.fileno())
        assert os.pread(f.fileno(), 6, 0) == b"abcdef"
        assert os.listdir(ffs.backing) == []


# --- rules: errors -----------------------------------------------------

def test_error_rule_fails_only_the_named_op_on_the_named_path(ffs):
    write_file(ffs.path("a"), b"A" * 4096)
    write_file(ffs.path("b"), b"B" * 4096)
    ffs.set(rule("error=EIO", op="read", path="/a"))
    assert errno_of(read_file, ffs.path("a")) == errno.EIO
    assert read_file(ffs.path("b")) == b"B" * 4096
    assert pwrite(ffs.path("a"), b"x", 0) == 1
    assert os.stat(ffs.path("a")).st_size == 4096
    ffs.clear()
    assert read_file(ffs.path("a")) == b"x" + b"A" * 4095


def test_error_rule_with_a_range_fails_only_overlapping_io(ffs):
    write_file(ffs.path("f"), pattern(64 * KiB))
    ffs.set("error=EIO path=/f offset=8K length=4K")
    assert pread(ffs.path("f"), 4 * KiB, 0) == pattern(64 * KiB)[:4 * KiB]
    assert pread(ffs.path("f"), 4 * KiB, 12 * KiB) == \
        pattern(64 * KiB)[12 * KiB:16 * KiB]
    assert errno_of(pread, ffs.path("f"), 1, 12 * KiB - 1) == errno.EIO
    assert errno_of(pread, ffs.path("f"), 16 * KiB, 0) == errno.EIO
    assert errno_of(pwrite, ffs.path("f"), b"x", 8 * KiB) == errno.EIO
    assert read_file(ffs.backing_path("f")) == pattern(64 * KiB)
    # Without op=, a ranged rule covers reads, writes and fallocate only.
    assert os.stat(ffs.path("f")).st_size == 64 * KiB


@pytest.mark.parametrize("name", ["EIO", "ENOSPC", "EROFS", "EDQUOT"])
def test_error_rule_returns_its_errno_unchanged(ffs, name):
    write_file(ffs.path("f"), b"data")
    ffs.set("error=%s op=write path=/f" % name)
    assert errno_of(pwrite, ffs.path("f"), b"more", 4) == \
        getattr(errno, name)
    ffs.clear()
    assert pwrite(ffs.path("f"), b"more", 4) == 4


def test_error_rule_by_number_is_that_errno(ffs):
    write_file(ffs.path("f"), b"data")
    ffs.set("error=%d op=read" % errno.ENOLINK)
    assert errno_of(read_file, ffs.path("f")) == errno.ENOLINK


def test_fsync_error_rule_fails_fsync_but_not_the_write(ffs):
    ffs.set(rule("error=EIO", op="fsync", path="/f"))
    with open(ffs.path("f"), "wb") as f:
        f.write(b"kept")
        f.flush()
        assert errno_of(os.fsync, f.fileno()) == errno.EIO
        assert errno_of(os.fdatasync, f.fileno()) == errno.EIO
    assert read_file(ffs.backing_path("f")) == b"kept"
    ffs.clear()
    with open(ffs.path("f"), "rb") as f:
        os.fsync(f.fileno())


def test_open_error_rule_fails_opening_an_existing_file_only(ffs):
    write_file(ffs.path("f"), b"x")
    ffs.set("error=EACCES op=open")
    assert errno_of(read_file, ffs.path("f")) == errno.EACCES
    write_file(ffs.path("new"), b"created")  # create is its own op
    assert os.stat(ffs.path("f")).st_size == 1
    ffs.clear()
    assert read_file(ffs.path("f")) == b"x"


def test_rename_rule_matches_either_name(ffs):
    write_file(ffs.path("a"), b"A")
    ffs.set("error=EROFS op=rename path=/target")
    assert errno_of(os.rename, ffs.path("a"), ffs.path("target")) == \
        errno.EROFS
    os.rename(ffs.path("a"), ffs.path("other"))
    assert os.listdir(ffs.backing) == ["other"]


def test_path_globs_match_across_directories(ffs):
    os.mkdir(ffs.path("d"))
    write_file(ffs.path("d/x.img"), b"i")
    write_file(ffs.path("d/x.txt"), b"t")
    ffs.set("error=EIO op=read path=*.img")
    assert errno_of(read_file, ffs.path("d/x.img")) == errno.EIO
    assert read_file(ffs.path("d/x.txt")) == b"t"


def test_first_matching_error_rule_wins(ffs):
    write_file(ffs.path("f"), b"x")
    ffs.set("error=ENOSPC op=write", "error=EIO op=write,read")
    assert errno_of(pwrite, ffs.path("f"), b"y", 0) == errno.ENOSPC
    assert errno_of(read_file, ffs.path("f")) == errno.EIO


def test_clear_after_several_rules_returns_to_pass_through(ffs):
    write_file(ffs.path("f"), pattern(8 * KiB))
    ffs.set("error=EIO op=write", "flip", "hang=1 op=read")
    assert ffs.rules() == ["error=EIO op=write", "flip", "hang=1 op=read"]
    ffs.clear()
    assert ffs.rules() == []
    assert read_file(ffs.path("f")) == pattern(8 * KiB)
    assert pwrite(ffs.path("f"), b"z", 0) == 1


# --- rules: flipped bytes ----------------------------------------------

def test_flip_rule_inverts_read_bytes_in_its_range_only(ffs):
    data = pattern(16 * KiB)
    write_file(ffs.path("f"), data)
    write_file(ffs.path("g"), data)
    ffs.set(rule("flip", path="/f", offset=4 * KiB + 1, length=10))
    got = read_file(ffs.path("f"))
    want = bytearray(data)
    for i in range(4 * KiB + 1, 4 * KiB + 11):
        want[i] ^= 0xff
    assert got == bytes(want)
    assert pread(ffs.path("f"), 2, 4 * KiB + 10) == \
        bytes([data[4 * KiB + 10] ^ 0xff, data[4 * KiB + 11]])
    assert read_file(ffs.path("g")) == data
    assert read_file(ffs.backing_path("f")) == data
    ffs.clear()
    assert read_file(ffs.path("f")) == data


def test_flip_rule_is_refused_for_other_ops(ffs):
    with pytest.raises(ValueError, match="flip"):
        ffs.set("flip op=write")


# --- rules: stalls -----------------------------------------------------

def test_timed_hang_delays_the_op_by_its_duration(ffs):
    write_file(ffs.path("f"), pattern(4 * KiB))
    ffs.set("hang=300 op=read path=/f")
    fd = os.open(ffs.path("f"), os.O_RDONLY)
    try:
        start = time.monotonic()  # a deliberate measurement
        data = os.pread(fd, 4 * KiB, 0)
        took = time.monotonic() - start
    finally:
        os.close(fd)
    assert data == pattern(4 * KiB)
    assert 0.3 <= took < 0.3 + 2.0, "the read took %.3fs" % took


def test_timed_hang_then_error_applies_both(ffs):
    write_file(ffs.path("f"), b"x")
    ffs.set("hang=100 op=read", "error=EIO op=read")
    start = time.monotonic()  # a deliberate measurement
    assert errno_of(read_file, ffs.path("f")) == errno.EIO
    assert time.monotonic() - start >= 0.1


def test_indefinite_hang_is_released_by_clear(ffs, callers):
    write_file(ffs.path("f"), pattern(4 * KiB))
    ffs.set("hang op=read path=/f")
    c = callers("read", ffs.path("f"))
    c.wait_blocked()
    # A deliberate measurement: still stalled half a second later.
    time.sleep(0.5)
    assert c.blocked_in_fuse()
    ffs.clear()
    assert c.result() == ("ok", 4 * KiB)


def test_a_hung_write_does_not_block_other_files(ffs, callers):
    write_file(ffs.path("f"), b"f")
    write_file(ffs.path("g"), b"g")
    ffs.set("hang op=write path=/f")
    c = callers("write", ffs.path("f"))
    c.wait_blocked()
    assert pwrite(ffs.path("g"), b"G", 0) == 1
    assert read_file(ffs.path("f")) == b"f"
    ffs.clear()
    assert c.result() == ("ok", 4 * KiB)


def test_a_hang_limited_to_a_range_spares_the_rest_of_the_file(ffs, callers):
    write_file(ffs.path("f"), pattern(64 * KiB))
    ffs.set("hang op=read path=/f offset=32K")
    c = callers("read", ffs.path("f"), offset=40 * KiB)
    c.wait_blocked()
    assert pread(ffs.path("f"), 4 * KiB, 0) == pattern(64 * KiB)[:4 * KiB]
    ffs.clear()
    assert c.result() == ("ok", 4 * KiB)


def test_more_stalled_ops_than_default_workers_leave_faultfs_responsive(
        ffs, callers):
    # libfuse 3.14 starts at most 10 workers by default; faultfs asks
    # for more so that stalled operations cannot starve the rest.
    # One file each: the kernel serializes fsyncs of one file.
    for i in range(16):
        write_file(ffs.path("f%d" % i), b"f")
    write_file(ffs.path("g"), b"g")
    ffs.set("hang op=fsync path=/f*")
    stalled = [callers("fsync", ffs.path("f%d" % i)) for i in range(16)]
    for c in stalled:
        c.wait_blocked()
    assert read_file(ffs.path("g")) == b"g"
    ffs.clear()
    for c in stalled:
        assert c.result() == ("ok", 0)


def test_a_caller_stalled_by_a_hang_can_be_killed(ffs, callers):
    write_file(ffs.path("f"), b"f")
    ffs.set("hang op=read")
    c = callers("read", ffs.path("f"))
    c.wait_blocked()
    # The kernel turns SIGKILL into a FUSE interrupt; faultfs answers it,
    # so the caller does not sit in D state until the rule goes.
    c.proc.kill()
    c.proc.wait(10)
    assert ffs.rules() == ["hang op=read"]


def test_stop_releases_stalled_ops_and_exits_zero(tmpfs_dir, tmp_path,
                                                  callers):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ffs = FaultFS(tmpfs_dir, mnt).start()
    try:
        write_file(ffs.path("f"), b"f")
        ffs.set("hang op=read")
        c = callers("read", ffs.path("f"))
        c.wait_blocked()
        # Checked: clears the rules, unmounts once the released read has
        # closed its file, and requires exit status 0.
        ffs.stop()
    except BaseException:
        ffs.cleanup()
        raise
    assert c.result() == ("ok", 1)
    assert not qfs.is_fuse_mounted(mnt)


def test_cleanup_frees_stalled_callers(tmpfs_dir, tmp_path, callers):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ffs = FaultFS(tmpfs_dir, mnt).start()
    try:
        write_file(ffs.path("f"), b"f")
        ffs.set("hang op=read")
        c = callers("read", ffs.path("f"))
        c.wait_blocked()
    finally:
        ffs.cleanup()  # kills faultfs first: the connection is aborted
    # ECONNABORTED for a request faultfs had read, ENOTCONN for one
    # still queued.
    assert c.result() in [("errno", errno.ECONNABORTED),
                          ("errno", errno.ENOTCONN)]
    assert not qfs.is_fuse_mounted(mnt)


# --- the rules file ----------------------------------------------------

@pytest.mark.parametrize("line", [
    "error=EIO",
    "error=ENOSPC op=write path=/disk.img offset=1M length=64K",
    "error=28 op=read,write",
    "hang",
    "hang=250 op=fsync,flush path=/*.qcow2",
    "flip path=/a offset=0 length=1",
    "flip op=read",
    "error=EDQUOT op=any",
    "powercut",
    "powercut op=fsync path=/vm.img",
    "powercut op=write offset=1M length=4K",
    "  # a comment",
    "",
])
def test_check_rules_accepts_valid_lines(tmp_path, line):
    p = tmp_path / "rules"
    p.write_text(line + "\n")
    res = subprocess.run([faultfs_binary(), "--check-rules", str(p)],
                         stderr=subprocess.PIPE, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("line,reason", [
    ("error=EWHATEVER", "unknown errno"),
    ("error=0", "unknown errno"),
    ("explode", "a rule starts with"),
    ("hang=soon", "hang= needs milliseconds"),
    ("error=EIO op=frobnicate", "unknown op"),
    ("error=EIO op=read op=write", "repeated"),
    ("error=EIO path", "KEY=VALUE"),
    ("error=EIO offset=-1", "bad offset"),
    ("error=EIO length=0", "bad length"),
    ("error=EIO op=open offset=0", "apply to read, write and fallocate"),
    ("flip op=read,write", "flip applies to op=read only"),
    ("error=EIO offset=9223372036854775807 length=2", "too large"),
    ("error=EIO speed=fast", "unknown or repeated key"),
])
def test_check_rules_refuses_bad_lines_with_a_reason(tmp_path, line, reason):
    p = tmp_path / "rules"
    p.write_text("hang=1\n" + line + "\n")
    res = subprocess.run([faultfs_binary(), "--check-rules", str(p)],
                         stderr=subprocess.PIPE, text=True)
    assert res.returncode == 1
    assert "line 2: " in res.stderr and reason in res.stderr, res.stderr


def test_a_powercut_rule_without_the_mode_stops_the_disk_and_loses_nothing(
        ffs):
    # Without -o powercut every change is durable at once.
    write_file(ffs.path("f"), b"unsynced")
    ffs.set("powercut op=getattr path=/")
    assert errno_of(os.stat, ffs.mnt) == errno.EIO
    ffs.clear()
    assert errno_of(os.listdir, ffs.mnt) == errno.EIO
    assert errno_of(write_file, ffs.path("g"), b"g") == errno.EIO
    assert read_file(ffs.backing_path("f")) == b"unsynced"
    assert os.listdir(ffs.backing) == ["f"]
    assert "nothing to undo" in ffs.stderr()


def test_a_refused_rule_set_changes_nothing(ffs):
    write_file(ffs.path("f"), b"x")
    ffs.set("error=EIO op=read")
    with pytest.raises(ValueError, match="unknown errno"):
        ffs.set("error=ENOPE op=read")
    assert ffs.rules() == ["error=EIO op=read"]
    assert errno_of(read_file, ffs.path("f")) == errno.EIO


def test_a_broken_rules_file_keeps_the_rules_in_force(ffs):
    # Written behind the helper's back: faultfs reports it and keeps
    # what it had.
    write_file(ffs.path("f"), b"x")
    ffs.set("error=EIO op=read")
    assert errno_of(read_file, ffs.path("f")) == errno.EIO
    with open(ffs.control + ".tmp", "w") as f:
        f.write("error=EIO op=read\nnonsense here\n")
    os.replace(ffs.control + ".tmp", ffs.control)
    assert errno_of(read_file, ffs.path("f")) == errno.EIO
    qfs.wait_for(lambda: "nonsense" in ffs.stderr(), 10,
                 "faultfs to report the broken rules file")
    assert "line 2" in ffs.stderr()


# --- power cuts (-o powercut) ------------------------------------------
#
# What survives a cut is read from the backing directory, which holds the
# state after the cut once power_cut() returns; then the disk is booted
# again (power_on) where a test also wants to see it through the mount.

GRAVEYARD = ".faultfs-powercut"


@pytest.fixture
def disk(mount_faultfs, backing):
    """faultfs in power-cut mode over tmpfs and over ext4."""
    return mount_faultfs(backing, powercut=True)


@pytest.fixture
def tdisk(mount_faultfs, tmpfs_dir):
    """faultfs in power-cut mode over tmpfs."""
    return mount_faultfs(tmpfs_dir, powercut=True)


def sync_path(path, data_only=False):
    """fsync (or fdatasync) of a file or a directory by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


def write_synced(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def tree(root):
    """{relative path: ("dir",) | ("file", bytes) | ("link", target)} of
    everything under root, the graveyard left out."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirs[:] = [d for d in dirs if d != GRAVEYARD]
        for d in dirs:
            out[os.path.normpath(os.path.join(rel, d))] = ("dir",)
        for f in files:
            p = os.path.join(dirpath, f)
            key = os.path.normpath(os.path.join(rel, f))
            if os.path.islink(p):
                out[key] = ("link", os.readlink(p))
            else:
                out[key] = ("file", read_file(p))
    return out


def durable_file(ffs, rel, data):
    """rel with data, its data and its name durable."""
    write_synced(ffs.path(rel), data)
    sync_path(os.path.dirname(ffs.path(rel)))


def test_power_cut_drops_writes_since_the_last_fsync(disk):
    durable_file(disk, "f", pattern(64 * KiB, seed=1))
    pwrite(disk.path("f"), pattern(8 * KiB, seed=2), 5 * KiB)
    disk.power_cut()
    assert read_file(disk.backing_path("f")) == pattern(64 * KiB, seed=1)


def test_power_cut_keeps_fsyncd_writes_and_drops_the_later_ones(disk):
    durable_file(disk, "f", pattern(64 * KiB, seed=1))
    fd = os.open(disk.path("f"), os.O_WRONLY)
    try:
        os.pwrite(fd, b"A" * 4097, 100)
        os.fsync(fd)
        os.pwrite(fd, b"B" * 10, 50)
        os.pwrite(fd, b"C" * 10, 60 * KiB)
    finally:
        os.close(fd)
    want = bytearray(pattern(64 * KiB, seed=1))
    want[100:100 + 4097] = b"A" * 4097
    disk.power_cut()
    assert read_file(disk.backing_path("f")) == bytes(want)


def test_power_cut_keeps_fdatasyncd_data_and_size(disk):
    durable_file(disk, "f", b"x" * 1000)
    fd = os.open(disk.path("f"), os.O_WRONLY)
    try:
        os.pwrite(fd, b"y" * 5000, 800)
        os.fdatasync(fd)
        os.pwrite(fd, b"z" * 100, 9000)
    finally:
        os.close(fd)
    disk.power_cut()
    assert read_file(disk.backing_path("f")) == b"x" * 800 + b"y" * 5000


@pytest.mark.parametrize("change", ["grow", "shrink", "shrink-then-grow",
                                    "o_trunc", "punch-hole"])
def test_power_cut_rolls_size_and_bytes_back_to_the_last_sync(tdisk,
                                                              change):
    old = pattern(40 * KiB, seed=3)
    durable_file(tdisk, "f", old)
    p = tdisk.path("f")
    if change == "grow":
        pwrite(p, b"tail", 100 * KiB)
    elif change == "shrink":
        os.truncate(p, 5 * KiB + 3)
    elif change == "shrink-then-grow":
        os.truncate(p, 1 * KiB)
        pwrite(p, b"q" * 10, 30 * KiB)
        os.truncate(p, 80 * KiB)
    elif change == "o_trunc":
        write_file(p, b"short")
    else:
        fd = os.open(p, os.O_WRONLY)
        try:
            qfs.fallocate(fd, qfs.FALLOC_FL_PUNCH_HOLE |
                          qfs.FALLOC_FL_KEEP_SIZE, 4 * KiB, 20 * KiB)
        finally:
            os.close(fd)
    assert read_file(p) != old
    tdisk.power_cut()
    assert read_file(tdisk.backing_path("f")) == old


def test_a_file_never_fsyncd_goes_back_to_what_it_held_at_mount(
        mount_faultfs, tmpfs_dir):
    write_file(os.path.join(tmpfs_dir, "f"), b"before the mount")
    ffs = mount_faultfs(tmpfs_dir, powercut=True)
    write_file(ffs.path("f"), b"after")
    ffs.power_cut()
    assert read_file(ffs.backing_path("f")) == b"before the mount"


def test_a_sync_write_is_durable_without_fsync(tdisk):
    durable_file(tdisk, "f", b"-" * 8)
    fd = os.open(tdisk.path("f"), os.O_WRONLY | os.O_DSYNC)
    try:
        os.pwrite(fd, b"dsync", 0)
    finally:
        os.close(fd)
    fd = os.open(tdisk.path("f"), os.O_WRONLY)
    try:
        os.pwritev(fd, [b"rwf"], 5, os.RWF_DSYNC)
        os.pwrite(fd, b"lost", 0)
    finally:
        os.close(fd)
    tdisk.power_cut()
    assert read_file(tdisk.backing_path("f")) == b"dsyncrwf"


def test_power_cut_undoes_a_creation_whose_directory_was_not_fsyncd(disk):
    # fsync of the file makes its data durable, not its name.
    write_synced(disk.path("new"), b"data")
    os.mkdir(disk.path("dir"))
    os.symlink("new", disk.path("sym"))
    os.mknod(disk.path("fifo"), 0o600 | stat.S_IFIFO)
    disk.power_cut()
    assert os.listdir(disk.backing) == []


def test_power_cut_keeps_a_creation_once_its_directory_was_fsyncd(disk):
    write_synced(disk.path("synced"), b"data")
    write_file(disk.path("unsynced-data"), b"lost")
    os.mkdir(disk.path("dir"))
    os.symlink("synced", disk.path("sym"))
    sync_path(disk.mnt)
    write_file(disk.path("late"), b"after the fsync")
    disk.power_cut()
    assert tree(disk.backing) == {
        "synced": ("file", b"data"), "unsynced-data": ("file", b""),
        "dir": ("dir",), "sym": ("link", "synced")}


def test_power_cut_puts_a_renamed_file_back_under_its_old_name(disk):
    durable_file(disk, "a", b"a")
    durable_file(disk, "victim", b"victim")
    os.rename(disk.path("a"), disk.path("b"))
    os.rename(disk.path("b"), disk.path("victim"))
    disk.power_cut()
    assert tree(disk.backing) == {"a": ("file", b"a"),
                                  "victim": ("file", b"victim")}


def test_power_cut_keeps_a_rename_once_its_directory_was_fsyncd(disk):
    # How a file is replaced atomically and durably: the new content in
    # a temporary file, fsync, rename over, fsync of the directory.
    durable_file(disk, "state", b"old")
    write_synced(disk.path("state.tmp"), b"new")
    os.rename(disk.path("state.tmp"), disk.path("state"))
    sync_path(disk.mnt)
    disk.power_cut()
    assert tree(disk.backing) == {"state": ("file", b"new")}


def test_a_rename_over_a_file_without_fsyncs_leaves_the_old_one(disk):
    durable_file(disk, "state", b"old")
    write_synced(disk.path("state.tmp"), b"new")
    os.rename(disk.path("state.tmp"), disk.path("state"))
    disk.power_cut()
    assert tree(disk.backing) == {"state": ("file", b"old")}


def test_an_exchange_is_undone(tdisk):
    durable_file(tdisk, "a", b"a")
    durable_file(tdisk, "b", b"b")
    qfs.renameat2(tdisk.path("a"), tdisk.path("b"), qfs.RENAME_EXCHANGE)
    assert read_file(tdisk.path("a")) == b"b"
    tdisk.power_cut()
    assert tree(tdisk.backing) == {"a": ("file", b"a"), "b": ("file", b"b")}


def test_a_rename_between_directories_needs_both_fsyncd(tdisk):
    for d in ("x", "y"):
        os.mkdir(tdisk.path(d))
    sync_path(tdisk.mnt)
    durable_file(tdisk, "x/f", b"f")
    durable_file(tdisk, "x/g", b"g")
    os.rename(tdisk.path("x/f"), tdisk.path("y/f"))
    os.rename(tdisk.path("x/g"), tdisk.path("y/g"))
    sync_path(tdisk.path("y"))
    sync_path(tdisk.path("x"))
    os.rename(tdisk.path("y/g"), tdisk.path("x/g2"))
    sync_path(tdisk.path("x"))   # not y: this one goes back
    tdisk.power_cut()
    assert tree(tdisk.backing) == {"x": ("dir",), "y": ("dir",),
                                   "y/f": ("file", b"f"),
                                   "y/g": ("file", b"g")}


def test_power_cut_brings_an_unlinked_file_back_with_its_synced_data(disk):
    durable_file(disk, "f", b"synced")
    fd = os.open(disk.path("f"), os.O_WRONLY)
    try:
        os.unlink(disk.path("f"))
        # Still written through the handle after the unlink.
        os.pwrite(fd, b"UNSYNCED", 0)
    finally:
        os.close(fd)
    assert not os.path.exists(disk.path("f"))
    disk.power_cut()
    assert tree(disk.backing) == {"f": ("file", b"synced")}


def test_an_unlink_is_durable_once_its_directory_was_fsyncd(disk):
    durable_file(disk, "f", b"f")
    os.unlink(disk.path("f"))
    sync_path(disk.mnt)
    disk.power_cut()
    assert tree(disk.backing) == {}


def test_power_cut_undoes_mkdir_with_all_it_holds_and_rmdir(disk):
    os.mkdir(disk.path("old"))
    sync_path(disk.mnt)
    durable_file(disk, "old/keep", b"k")
    os.unlink(disk.path("old/keep"))
    os.rmdir(disk.path("old"))
    os.mkdir(disk.path("new"))
    # Durable inside it, but no durable directory names "new".
    durable_file(disk, "new/inner", b"i")
    disk.power_cut()
    assert tree(disk.backing) == {"old": ("dir",),
                                  "old/keep": ("file", b"k")}


def test_power_cut_undoes_link_and_follows_renamed_directories(disk):
    os.mkdir(disk.path("d"))
    sync_path(disk.mnt)
    durable_file(disk, "d/f", b"f")
    os.link(disk.path("d/f"), disk.path("d/hard"))
    os.rename(disk.path("d"), disk.path("e"))
    sync_path(disk.mnt)
    # The link was made in d, now e, which was not fsync'd since.
    disk.power_cut()
    assert tree(disk.backing) == {"e": ("dir",), "e/f": ("file", b"f")}


def test_a_power_cut_with_nothing_pending_changes_nothing(disk):
    os.mkdir(disk.path("d"))
    os.symlink("d/f", disk.path("sym"))
    sync_path(disk.mnt)
    durable_file(disk, "d/f", pattern(100 * KiB))
    durable_file(disk, "g", b"")
    before = tree(disk.backing)
    stats = {k: os.lstat(disk.backing_path(k)).st_ino for k in before}
    disk.power_cut()
    assert tree(disk.backing) == before
    assert {k: os.lstat(disk.backing_path(k)).st_ino
            for k in before} == stats
    assert "0 files back to their last sync, 0 changes of names" in \
        disk.stderr()


def test_after_a_power_cut_the_disk_is_dead_until_booted_again(tdisk):
    durable_file(tdisk, "f", b"durable")
    write_file(tdisk.path("f"), b"volatile")
    tdisk.power_cut()
    assert errno_of(read_file, tdisk.path("f")) == errno.EIO
    assert errno_of(write_file, tdisk.path("g"), b"g") == errno.EIO
    assert errno_of(os.listdir, tdisk.mnt) == errno.EIO
    assert tree(tdisk.backing) == {"f": ("file", b"durable")}
    tdisk.power_on()
    assert read_file(tdisk.path("f")) == b"durable"
    # A fresh journal: what was durable stays so at the next cut.
    write_file(tdisk.path("f"), b"again")
    tdisk.power_cut()
    assert read_file(tdisk.backing_path("f")) == b"durable"


def test_a_powercut_rule_can_cut_at_a_chosen_fsync(tdisk):
    durable_file(tdisk, "f", b"old")
    fd = os.open(tdisk.path("f"), os.O_WRONLY)
    try:
        os.pwrite(fd, b"new", 0)
        tdisk.set("powercut op=fsync path=/f")
        assert errno_of(os.fsync, fd) == errno.EIO
    finally:
        os.close(fd)
    assert read_file(tdisk.backing_path("f")) == b"old"


def test_refusals_of_unlink_rmdir_and_rename_are_the_kernels(tdisk):
    os.makedirs(tdisk.path("full/sub"))
    os.mkdir(tdisk.path("empty"))
    write_file(tdisk.path("f"), b"f")
    os.link(tdisk.path("f"), tdisk.path("f2"))
    assert errno_of(os.unlink, tdisk.path("empty")) == errno.EISDIR
    assert errno_of(os.rmdir, tdisk.path("f")) == errno.ENOTDIR
    assert errno_of(os.rmdir, tdisk.path("full")) == errno.ENOTEMPTY
    assert errno_of(os.rename, tdisk.path("f"),
                    tdisk.path("empty")) == errno.EISDIR
    assert errno_of(os.rename, tdisk.path("empty"),
                    tdisk.path("f")) == errno.ENOTDIR
    assert errno_of(os.rename, tdisk.path("empty"),
                    tdisk.path("full")) == errno.ENOTEMPTY
    assert errno_of(os.rename, tdisk.path("full"),
                    tdisk.path("full/sub")) == errno.EINVAL
    assert errno_of(qfs.renameat2, tdisk.path("f"), tdisk.path("empty"),
                    qfs.RENAME_NOREPLACE) == errno.EEXIST
    os.rename(tdisk.path("f"), tdisk.path("f2"))  # links of one inode
    assert sorted(os.listdir(tdisk.mnt)) == ["empty", "f", "f2", "full"]
    os.rename(tdisk.path("empty"), tdisk.path("full/sub"))
    assert sorted(os.listdir(tdisk.mnt)) == ["f", "f2", "full"]
    assert tree(tdisk.backing)["full/sub"] == ("dir",)


def test_the_graveyard_is_hidden_and_gone_after_a_clean_unmount(
        tmpfs_dir, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ffs = FaultFS(tmpfs_dir, mnt, powercut=True).start()
    try:
        durable_file(ffs, "f", b"f")
        os.unlink(ffs.path("f"))
        assert os.listdir(ffs.mnt) == []
        assert errno_of(os.stat, ffs.path(GRAVEYARD)) == errno.ENOENT
        assert errno_of(os.mkdir, ffs.path(GRAVEYARD)) == errno.ENOENT
        assert sorted(os.listdir(ffs.backing)) == [GRAVEYARD]
        ffs.stop()
    except BaseException:
        ffs.cleanup()
        raise
    # A clean shutdown keeps every change: the unlink too.
    assert os.listdir(tmpfs_dir) == []


def test_concurrent_fsyncd_writers_keep_every_acknowledged_write(tdisk):
    """The cut lands between operations: every write an fsync returned 0
    for survives, every one after it is gone."""
    n, slot = 4, 16 * KiB
    for i in range(n):
        durable_file(tdisk, "w%d" % i, bytes(64 * slot))
    acked = [dict() for _ in range(n)]
    pending = [None] * n
    stop = []

    def writer(i):
        rng = random.Random(i)
        fd = os.open(tdisk.path("w%d" % i), os.O_WRONLY)
        try:
            for seq in itertools.count(1):
                if stop:
                    return
                k = rng.randrange(64)
                pending[i] = (k, pattern(slot, seed=seq * 10 + i))
                os.pwrite(fd, pending[i][1], k * slot)
                os.fsync(fd)
                acked[i][k] = pending[i][1]
                pending[i] = None
        except OSError as e:
            assert e.errno == errno.EIO, e
        finally:
            os.close(fd)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    try:
        qfs.wait_for(lambda: all(len(a) >= 5 for a in acked), 30,
                     "5 fsync'd writes by each writer")
        tdisk.power_cut()
    finally:
        stop.append(True)
        for t in threads:
            t.join(30)
    for i in range(n):
        got = read_file(tdisk.backing_path("w%d" % i))
        for k in range(64):
            have = got[k * slot:(k + 1) * slot]
            ok = [acked[i].get(k, bytes(slot))]
            # The write an fsync had not answered when the cut came: its
            # fsync may have been the one that made it durable.
            if pending[i] is not None and pending[i][0] == k:
                ok.append(pending[i][1])
            assert have in ok, "writer %d, slot %d" % (i, k)
