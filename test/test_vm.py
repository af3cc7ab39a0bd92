"""A real guest on the mount: Debian's kernel and a busybox initramfs
(test/vm_util.py) boot in qemu-system-x86_64 from images on a quorumfs
mount over three ext4 children, threshold 2, with cache=none (O_DIRECT
all the way down to the children).

The guest writes known patterns raw to /dev/vda (a raw image) and as
files on an ext2 file system on /dev/vdb (a qcow2 image), verifies them
from the devices, and prints PASS on its serial console. Meanwhile the
test corrupts one child's copies of both images in place, and checks
that the guest still reads correct data, that the corrupted child is
named in QUORUM_REPORT_BAD events, that nothing else is, and that at the
end (after a scrub repair, or through rewrite-corrupted alone) the three
children hold byte-identical images.
"""

import os
import subprocess
import sys

import pytest

import qfs
import vm_util
from control_util import control, wait_status
from vm_util import A_OFF, B_OFF, FILES, KiB, LEN

pytestmark = pytest.mark.skipif(vm_util.missing_tools() is not None,
                                reason=vm_util.missing_tools() or "")

BOOT_TIMEOUT = 90      # boot to the guest's WAITING or PASS mark
DISK = "disk.img"      # raw, /dev/vda
FS = "fs.qcow2"        # qcow2 holding an ext2 file system, /dev/vdb
STRIDE = 64 * KiB      # one corrupted 4 KiB block per STRIDE
BLOCK = 4 * KiB


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    """(kernel, initramfs, accelerator, module names), built once."""
    kernel, version = vm_util.find_kernel()
    initrd = tmp_path_factory.mktemp("guest") / "initramfs.cpio"
    modules = vm_util.build_initramfs(initrd, version)
    return kernel, initrd, vm_util.accelerator(kernel), modules


@pytest.fixture
def vm(request, guest, quorum, tmp_path):
    """Factory: vm(mount, append) -> a started VM booting from the mount's
    disk.img and fs.qcow2 with cache=none. Depends on quorum, so every VM
    is killed before the mounts are torn down, whatever the outcome; a
    failed test gets each VM's serial log on stderr."""
    kernel, initrd, accel, modules = guest
    made = []

    def make(m, append):
        workdir = tmp_path / ("vm%d" % len(made))
        workdir.mkdir()
        v = vm_util.VM(workdir, kernel, initrd,
                       [(m.path(DISK), "raw", "none"),
                        (m.path(FS), "qcow2", "none")],
                       append=append, accel=accel)
        made.append(v)
        return v.start()

    yield make
    call = getattr(request.node, "rep_call", None)
    for v in made:
        v.kill()
        if call is None or not call.passed:
            sys.stderr.write("VM (%s; modules %s):\n%s\n" % (
                accel, " ".join(modules), v.describe()))


def run(*cmd, timeout=60):
    proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, "%s exited %d:\n%s" % (
        " ".join(str(c) for c in cmd), proc.returncode, proc.stdout)
    return proc.stdout


def make_images(m):
    run("qemu-img", "create", "-f", "raw", m.path(DISK), "64M")
    run("qemu-img", "create", "-f", "qcow2", m.path(FS), "64M")


def boot_to_end(v):
    """Wait for the guest's PASS and for QEMU to exit 0 (poweroff)."""
    v.wait_mark("PASS", BOOT_TIMEOUT)
    rc = v.wait_exit(30)
    assert rc == 0, "QEMU exited %d\n%s" % (rc, v.describe())


def pread(path, off, length):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, off)
    finally:
        os.close(fd)


def corrupt(path, start, end, stride=STRIDE):
    """Invert-and-mix one 4 KiB block every stride in [start, end) of a
    child's file, in place: each block then differs from every other
    child's copy, and the file keeps its size. Returns the offsets."""
    size = os.path.getsize(path)
    offsets = []
    fd = os.open(path, os.O_RDWR)
    try:
        for off in range(start, min(end, size), stride):
            old = os.pread(fd, BLOCK, off)
            os.pwrite(fd, bytes(b ^ 0xA5 for b in old), off)
            offsets.append(off)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert offsets, "nothing to corrupt in %s" % path
    return offsets


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def assert_children_identical(m, names=(DISK, FS)):
    for name in names:
        ref = file_bytes(m.child_file(0, name))
        for i in range(1, len(m.children)):
            assert file_bytes(m.child_file(i, name)) == ref, \
                "%s differs between child 0 and child %d" % (name, i)


def assert_raw_patterns(path, with_b):
    a, b = vm_util.patterns()
    assert pread(path, A_OFF, LEN) == a, "pattern A wrong in %s" % path
    if with_b:
        assert pread(path, B_OFF, LEN) == b, "pattern B wrong in %s" % path


def assert_fs_files(qcow2, tmp_path, with_b):
    """The files the guest wrote, read from the qcow2 on the host:
    converted to raw, then dumped with debugfs."""
    a, b = vm_util.patterns()
    raw = tmp_path / "fs.raw"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, raw)
    want = {"data%d.bin" % i: a for i in range(FILES)}
    if with_b:
        want["more.bin"] = b
    for name, data in want.items():
        out = tmp_path / name
        run("debugfs", "-R", "dump /%s %s" % (name, out), raw)
        assert out.read_bytes() == data, "%s in %s is wrong" % (name, qcow2)
        out.unlink()
    raw.unlink()


def quorum_events(m):
    """QUORUM_* events so far. QEMU's 1-byte O_DIRECT alignment probe at
    open fails with EINVAL on every child alike, which blames no child
    and is not reported, so healthy children give none at all."""
    return [ev for ev in m.events() if ev["event"].startswith("QUORUM_")]


def assert_reports_name_only(m, bad, files):
    """Every QUORUM_* event is a read REPORT_BAD of child `bad` that lost
    the vote (no error) on one of the images, and there is one for each
    of files. The throttle keeps one event per child and second, so only
    a file whose bad reads came at least a second apart from the other's
    is sure to be named."""
    evs = quorum_events(m)
    assert evs, "no QUORUM_REPORT_BAD for the corrupted child"
    for ev in evs:
        d = ev["data"]
        assert ev["event"] == "QUORUM_REPORT_BAD", ev
        assert d["node-name"] == m.children[bad], ev
        assert d["type"] == "read" and "error" not in d, ev
        assert d["file"] in (DISK, FS), ev
    seen = {ev["data"]["file"] for ev in evs}
    for f in files:
        assert f in seen, "no report for %s: %s" % (f, evs[:5])


def scrub(m, command, timeout=60):
    """Run a scrub to completion; (SCRUB_COMPLETED data, findings)."""
    first = len(m.events())
    control(m, command)
    wait_status(m, lambda d: d["scrub"]["state"] not in ("idle", "running"),
                timeout, "the scrub to finish")

    def done():
        evs = m.events()[first:]
        return [e for e in evs if e["event"] == "SCRUB_COMPLETED"] and evs

    evs = qfs.wait_for(done, 10, "SCRUB_COMPLETED")
    completed = next(e["data"] for e in evs
                     if e["event"] == "SCRUB_COMPLETED")
    found = [e["data"] for e in evs if e["event"] == "SCRUB_MISMATCH"]
    return completed, found


@pytest.mark.timeout(150)
def test_guest_runs_on_while_a_child_is_corrupted_then_scrub_repairs(
        ext4_dir, quorum, vm, tmp_path):
    m = quorum(n=3, threshold=2, base=ext4_dir)
    make_images(m)
    bad = 1

    v = vm(m, "vmtest.write=1 vmtest.wait=1 vmtest.more=1")
    v.wait_mark("WAITING", BOOT_TIMEOUT)
    # The guest wrote A, synced and verified it, and now waits. What it
    # wrote is on every child, identically.
    assert_children_identical(m)
    for i in range(3):
        assert_raw_patterns(m.child_file(i, DISK), with_b=False)
    assert quorum_events(m) == []

    # Corrupt the bad child under the running guest: pattern A and the
    # place B is about to be written in the raw image, and one block of
    # every cluster of the qcow2 (header, tables, the file system).
    corrupt(m.child_file(bad, DISK), A_OFF, A_OFF + LEN)
    corrupt(m.child_file(bad, DISK), B_OFF, B_OFF + LEN)
    corrupt(m.child_file(bad, FS), 0, 1 << 40)

    v.send("go")
    boot_to_end(v)
    marks = v.marks()
    assert "VERIFIED final" in marks and "WRITTEN B" in " ".join(marks)

    # Through the mount the guest's data is right; the bad child's copy
    # of A is still corrupt (no rewrite-corrupted), B was overwritten by
    # the guest's write, on every child.
    assert_raw_patterns(m.path(DISK), with_b=True)
    assert_fs_files(m.path(FS), tmp_path, with_b=True)
    a, b = vm_util.patterns()
    assert pread(m.child_file(bad, DISK), A_OFF, LEN) != a
    for i in range(3):
        assert pread(m.child_file(i, DISK), B_OFF, LEN) == b

    done, found = scrub(m, "scrub repair rate=0")
    assert done["result"] == "completed", done
    assert done["mismatches"] > 0, done
    assert done["repaired"] == done["mismatches"], done
    assert done["unrecoverable"] == 0, done
    assert {c for c, n in done["children"].items() if n} == \
        {m.children[bad]}, done
    assert {f["node-name"] for f in found} == {m.children[bad]}, found[:5]
    assert {f["kind"] for f in found} == {"data"}, found[:5]
    assert {f["path"] for f in found} <= {DISK, FS}, found[:5]

    m.unmount()  # writes out every event the throttle held back
    assert_reports_name_only(m, bad, ())
    assert_children_identical(m)
    for i in range(3):
        assert_raw_patterns(m.child_file(i, DISK), with_b=True)
    assert_fs_files(m.child_file(0, FS), tmp_path, with_b=True)
    assert "No errors were found" in run("qemu-img", "check",
                                         m.child_file(0, FS))


@pytest.mark.timeout(150)
def test_second_boot_reads_through_corruption_and_rewrites_it(
        ext4_dir, quorum, vm, tmp_path):
    m = quorum(n=3, threshold=2, base=ext4_dir, opts="rewrite-corrupted")
    make_images(m)
    bad = 2

    boot_to_end(vm(m, "vmtest.write=1"))
    assert_children_identical(m)
    assert quorum_events(m) == []

    # Between boots: corrupt pattern A in the bad child's raw image, and
    # the first sector of its qcow2 (the header QEMU reads at open).
    a, _ = vm_util.patterns()
    corrupt(m.child_file(bad, DISK), A_OFF, A_OFF + LEN, stride=16 * KiB)
    corrupt_header = os.open(m.child_file(bad, FS), os.O_RDWR)
    try:
        head = os.pread(corrupt_header, 512, 0)
        os.pwrite(corrupt_header, bytes(x ^ 0x5A for x in head), 0)
        os.fsync(corrupt_header)
    finally:
        os.close(corrupt_header)
    assert pread(m.child_file(bad, DISK), A_OFF, LEN) != a

    # The second boot reads everything it verifies through the vote;
    # rewrite-corrupted writes the winning bytes over the bad child.
    v = vm(m, "")
    boot_to_end(v)
    assert "VERIFIED final" in v.marks()
    m.unmount()
    # The header is read when QEMU opens the image, pattern A seconds
    # later when the guest verifies it: two throttle windows.
    assert_reports_name_only(m, bad, (FS, DISK))
    assert_children_identical(m)
    assert pread(m.child_file(bad, DISK), A_OFF, LEN) == a

    m.start()
    done, found = scrub(m, "scrub start rate=0")
    assert done["result"] == "completed" and done["mismatches"] == 0, \
        (done, found[:5])
    assert_fs_files(m.path(FS), tmp_path, with_b=False)
