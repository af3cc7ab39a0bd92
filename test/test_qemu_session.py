"""QEMU's own tools on a mount (README "What it is" and
"Behaving like a local filesystem"): the session a user
runs before starting a VM on quorumfs, over children on ext4 with
cache=none (O_DIRECT) wherever QEMU allows it.

After each step every child must hold byte-identical copies of every
image, equal to what the mount shows, and the event log must hold no
QUORUM_* event: healthy children never disagree.
"""

import errno
import os
import random
import subprocess

import pytest

KiB = 1024
MiB = 1024 * KiB


def run(*cmd, timeout=120):
    """Run a QEMU tool; fail with its output unless it exits 0."""
    proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, "%s exited %d:\n%s" % (
        " ".join(str(c) for c in cmd), proc.returncode, proc.stdout)
    return proc.stdout


def tree(root):
    """Relative path -> bytes of every regular file under root, without
    a child's own .quorumfs record."""
    out = {}
    for d, dirs, files in os.walk(root):
        if d == str(root) and ".quorumfs" in dirs:
            dirs.remove(".quorumfs")
        for name in files:
            p = os.path.join(d, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def assert_children_identical_to_mount(m):
    """Every child holds the same files with the same bytes, and so does
    the mount."""
    mount = tree(m.mnt)
    assert mount, "the mount is empty"
    for c in m.children:
        child = tree(c)
        assert sorted(child) == sorted(mount), "files differ on %s" % c
        for rel, data in mount.items():
            assert child[rel] == data, "%s differs on %s" % (rel, c)


def alignment_probe(ev):
    """True for the events of QEMU's O_DIRECT alignment probe: with
    cache=none, opening an image reads 1 byte at offset 0, which every
    child refuses with EINVAL (file-posix raw_probe_alignment), so the
    read fails unanimously. Nothing else may fail on healthy children."""
    d = ev["data"]
    if (d.get("sector-num"), d.get("sectors-count")) != (0, 1):
        return False
    if ev["event"] == "QUORUM_FAILURE":
        return True
    return d.get("type") == "read" and \
        d.get("error") == os.strerror(errno.EINVAL)


def assert_no_quorum_events(m):
    bad = [e for e in m.events() if e["event"].startswith("QUORUM_") and
           not alignment_probe(e)]
    assert bad == [], bad[:5]


@pytest.fixture
def session(ext4_dir, quorum, tmp_path):
    """A threshold=2 mount over three ext4 children, and a 16 MiB image
    of random bytes outside it."""
    m = quorum(n=3, threshold=2, base=ext4_dir)
    src = tmp_path / "some.img"
    src.write_bytes(random.Random("qfs-session").randbytes(16 * MiB))
    return m, src


@pytest.mark.timeout(180)
def test_qemu_img_and_qemu_io_session_leaves_identical_children(session):
    m, src = session
    qcow2 = m.path("vm.qcow2")
    raw = m.path("copy.img")

    run("qemu-img", "create", "-f", "qcow2", qcow2, "1G")
    run("qemu-img", "convert", "-O", "raw", src, raw)
    with open(raw, "rb") as f:
        assert f.read() == src.read_bytes()

    out = run("qemu-io", "-f", "raw", "-t", "none",
              "-c", "write -P 0x5a 0 1M", "-c", "read -P 0x5a 0 1M", raw)
    assert "wrote 1048576/1048576 bytes at offset 0" in out
    assert "read 1048576/1048576 bytes at offset 0" in out
    assert "failed" not in out.lower()

    out = run("qemu-img", "check", qcow2)
    assert "No errors were found on the image." in out

    # Guest-like writes into the qcow2: allocate clusters here and there,
    # overwrite part of them, read them back, flush.
    out = run("qemu-io", "-f", "qcow2", "-t", "none",
              "-c", "write -P 0xa5 0 4M",
              "-c", "write -P 0x3c 100M 1M",
              "-c", "write -P 0x11 1M 64k",
              "-c", "write -z 512M 2M",
              "-c", "read -P 0xa5 0 1M",
              "-c", "read -P 0x11 1M 64k",
              "-c", "read -P 0xa5 1088k 2M",
              "-c", "read -P 0x3c 100M 1M",
              "-c", "read -P 0 512M 2M",
              "-c", "flush", qcow2)
    assert out.count("wrote ") == 4 and out.count("read ") == 5, out
    assert "failed" not in out.lower(), out
    out = run("qemu-img", "check", qcow2)
    assert "No errors were found on the image." in out

    m.unmount()
    assert_no_quorum_events(m)
    m.start()
    assert_children_identical_to_mount(m)
    with open(raw, "rb") as f:
        data = f.read()
    assert data == b"\x5a" * MiB + src.read_bytes()[MiB:]
    out = run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
              qcow2, m.child_file(0, "vm.qcow2"))
    assert "Images are identical." in out


@pytest.mark.timeout(180)
def test_qemu_img_bench_at_queue_depth_16_leaves_identical_children(session):
    m, src = session
    raw = m.path("copy.img")
    qcow2 = m.path("vm.qcow2")
    run("qemu-img", "convert", "-O", "raw", src, raw)
    run("qemu-img", "create", "-f", "qcow2", qcow2, "64M")

    # 2000 requests, 16 in flight at a time, O_DIRECT: reads, then
    # writes that overlap (step 2 KiB with 4 KiB requests).
    out = run("qemu-img", "bench", "-f", "raw", "-t", "none", "-c", "2000",
              "-d", "16", raw)
    assert "Run completed in" in out, out
    out = run("qemu-img", "bench", "-f", "raw", "-t", "none", "-c", "2000",
              "-d", "16", "-w", "--pattern=0x77", "-S", "2048", raw)
    assert "Run completed in" in out, out
    out = run("qemu-img", "bench", "-f", "qcow2", "-t", "none", "-c", "2000",
              "-d", "16", "-w", "--pattern=0x42", "-s", "64k", qcow2)
    assert "Run completed in" in out, out
    out = run("qemu-img", "bench", "-f", "qcow2", "-t", "none", "-c", "2000",
              "-d", "16", "-s", "64k", qcow2)
    assert "Run completed in" in out, out
    assert "No errors were found on the image." in run("qemu-img", "check",
                                                       qcow2)

    # The writes covered [0, 2000 * 2 KiB + 2 KiB) with the pattern.
    written = 2000 * 2 * KiB + 2 * KiB
    with open(raw, "rb") as f:
        data = f.read()
    assert data[:written] == b"\x77" * written
    assert data[written:] == src.read_bytes()[written:]

    m.unmount()
    assert_no_quorum_events(m)
    m.start()
    assert_children_identical_to_mount(m)
