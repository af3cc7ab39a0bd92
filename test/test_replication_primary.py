"""The primary side of replication (README "Replication"): a replication
child added with `add PATH mode=primary` is filled, then receives every
change of the tree inside the writer's range claim, never votes and is
never read; `replication start|checkpoint|get-error|stop` drive its stage
with QEMU's rules and texts; in stage RUNNING its failures are latched and
cost the writer nothing, and a hung one costs one io-timeout, once.

Here the replication child is a plain directory, or a faultfs mount over
one; what stands on the other side of it (a secondary's inbound mount) is
not the concern of these tests.
"""

import errno
import mmap
import os
import threading
import time

import pytest

import qfs
from qfs import read_file, write_file
from control_util import (assert_same_tree, child_status, control,
                          refused, status, wait_child_state, wait_status)
from test_docs import documented, keys_of, readme_section

SEC = "sec"
NOT_RUNNING = "Block replication is not running"
RUNNING_OR_DONE = "Block replication is running or done"
IO_ERROR = "I/O error occurred"


def repl(m):
    return child_status(status(m), SEC)["replication"]


def add_replica(m, path, name=SEC):
    control(m, "add %s mode=primary name=%s" % (path, name))
    return wait_child_state(m, name, "ok", timeout=60)


def faulty_replica(faulty, tmpfs_dir):
    """A faultfs mount over an empty directory, to be the replication
    child."""
    backing = tmpfs_dir / "inbound"
    backing.mkdir()
    return faulty(backing)


def streaming(faulty, quorum, tmpfs_dir, opts=()):
    """(faultfs replication child, mount) with disk.img, RUNNING."""
    ffs = faulty_replica(faulty, tmpfs_dir)
    m = quorum(opts=opts)
    write_file(m.path("disk.img"), b"a" * 65536)
    started(m, ffs.mnt)
    return ffs, m


def started(m, path):
    """m with a replication child at path, in step and RUNNING."""
    add_replica(m, path)
    control(m, "replication start primary")
    assert repl(m)["stage"] == "RUNNING"


# --- add and its refusals ------------------------------------------------

def test_add_mode_primary_refuses_what_qemu_refuses_in_its_words(
        quorum, tmp_path):
    m = quorum()
    d = tmp_path / "inbound"
    d.mkdir()
    assert refused(m, "add %s mode=primary top=t" % d, errno.EINVAL) == \
        "The primary side does not support option top-id"
    assert refused(m, "add %s mode=bogus" % d, errno.EINVAL) == \
        "The option mode's value should be primary or secondary"
    assert "a mount of its own" in refused(
        m, "add %s mode=secondary" % d, errno.EINVAL)
    assert refused(m, "replication start primary", errno.ENOENT) == \
        "no replication child"
    assert [c["kind"] for c in status(m)["children"]] == ["data"] * 3


def test_a_replication_child_is_filled_never_votes_and_keeps_no_record(
        quorum, tmp_path):
    m = quorum()
    data = os.urandom(3 * 1024 * 1024)
    write_file(m.path("disk.img"), data)
    os.mkdir(m.path("dir"))
    os.symlink("disk.img", m.path("dir/link"))
    d = tmp_path / "inbound"
    d.mkdir()
    doc = add_replica(m, d)
    c = child_status(doc, SEC)
    assert (c["kind"], c["votes"]) == ("replication", False), c
    assert c["replication"]["stage"] == "NONE"
    assert doc["totals"]["voting"] == 3 and doc["totals"]["children"] == 4
    assert read_file(d / "disk.img") == data
    assert os.readlink(d / "dir/link") == "disk.img"
    assert not os.path.exists(d / ".quorumfs")
    # The threshold counts data children only.
    assert "outside 1..3" in refused(m, "threshold 4", errno.EINVAL)
    m.wait_event("CHILD_ADDED", lambda e: e["node-name"] == SEC)
    m.wait_event("RESYNC_COMPLETED", lambda e: e["node-name"] == SEC)


def test_the_replication_child_is_never_read_nor_scrubbed(quorum, tmp_path):
    m = quorum(opts=["read-pattern=fifo"], threshold=1)
    data = os.urandom(1024 * 1024)
    write_file(m.path("disk.img"), data)
    d = tmp_path / "inbound"
    d.mkdir()
    add_replica(m, d)
    # Its copy goes bad behind the mount's back: nobody may notice.
    with open(d / "disk.img", "r+b") as f:
        f.write(b"\xff" * 65536)
    assert read_file(m.path("disk.img")) == data
    buf = mmap.mmap(-1, len(data))  # page-aligned, for O_DIRECT
    fd = os.open(m.path("disk.img"), os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.preadv(fd, [buf], 0) == len(data) and buf[:] == data
    finally:
        os.close(fd)
        buf.close()
    control(m, "scrub start rate=0")
    doc = wait_status(m, lambda s: s["scrub"]["state"] == "completed", 30,
                      "the scrub to complete")
    assert doc["scrub"]["mismatches"] == 0, doc["scrub"]
    assert not [e for e in m.events_named("QUORUM_REPORT_BAD")
                if e["node-name"] == SEC]


# --- the stage machine ---------------------------------------------------

def test_before_start_the_stage_machine_answers_as_qemu_does(quorum, tmp_path):
    m = quorum()
    d = tmp_path / "inbound"
    d.mkdir()
    add_replica(m, d)
    assert refused(m, "replication get-error", errno.EINVAL) == NOT_RUNNING
    assert refused(m, "replication stop", errno.EINVAL) == NOT_RUNNING
    control(m, "replication checkpoint")  # a primary's is a barrier only
    assert refused(m, "replication start secondary", errno.EINVAL) == \
        "The parameter mode's value is invalid, needs 0, but got 1"
    assert refused(m, "replication start primary failover",
                   errno.EINVAL) == \
        "Parameter 'failover' is only for stopping replication"
    assert refused(m, "replication start primary nobody", errno.ENOENT) == \
        "no replication child is named 'nobody'"
    assert repl(m)["stage"] == "NONE"


def test_start_waits_for_the_child_to_be_in_step(faulty, quorum, tmp_path,
                                                 tmpfs_dir):
    ffs = faulty_replica(faulty, tmpfs_dir)
    m = quorum()
    write_file(m.path("disk.img"), os.urandom(1024 * 1024))
    ffs.set("hang op=write")  # the copy stalls at its first write
    control(m, "add %s mode=primary name=%s" % (ffs.mnt, SEC))
    wait_child_state(m, SEC, "syncing")
    assert refused(m, "replication start primary", errno.EBUSY) == \
        "replication child sec is still syncing"
    ffs.clear()
    wait_child_state(m, SEC, "ok")
    control(m, "replication start primary sec")
    assert repl(m)["stage"] == "RUNNING"
    assert refused(m, "replication start primary", errno.EBUSY) == \
        RUNNING_OR_DONE
    control(m, "replication get-error")
    ev = m.wait_event("REPLICATION_STAGE_CHANGED")
    assert (ev["node-name"], ev["mode"], ev["old"], ev["new"]) == \
        (SEC, "primary", "NONE", "RUNNING"), ev


def test_stop_ends_the_stream_and_later_commands_are_silent(quorum, tmp_path):
    m = quorum()
    d = tmp_path / "inbound"
    d.mkdir()
    started(m, d)
    write_file(m.path("a"), b"sent")
    control(m, "replication stop failover")  # the flag means nothing here
    assert repl(m)["stage"] == "DONE"
    write_file(m.path("a"), b"not sent")
    write_file(m.path("b"), b"not sent")
    assert read_file(d / "a") == b"sent" and not os.path.exists(d / "b")
    for command in ("replication start primary", "replication checkpoint",
                    "replication stop", "replication get-error"):
        control(m, command)
    assert child_status(status(m), SEC)["state"] == "ok"
    m.wait_event("REPLICATION_STAGE_CHANGED",
                 lambda e: (e["old"], e["new"]) == ("RUNNING", "DONE"))


def test_remove_of_a_running_child_stops_its_stream_first(quorum, tmp_path):
    m = quorum()
    d = tmp_path / "inbound"
    d.mkdir()
    started(m, d)
    control(m, "remove %s" % SEC)
    assert child_status(status(m), SEC) is None
    ev = m.wait_event("REPLICATION_STAGE_CHANGED",
                      lambda e: e["new"] == "DONE")
    assert ev["reason"] == "removed"
    m.wait_event("CHILD_REMOVED", lambda e: e["node-name"] == SEC)


# --- what is forwarded ---------------------------------------------------

def namespace_and_metadata_changes(m):
    os.mkdir(m.path("d"))
    write_file(m.path("d/f"), b"f" * 10000)
    os.rename(m.path("d/f"), m.path("d/g"))
    os.symlink("g", m.path("d/s"))
    os.link(m.path("d/g"), m.path("d/h"))
    write_file(m.path("gone"), b"x")
    os.unlink(m.path("gone"))
    os.mkdir(m.path("e"))
    os.rmdir(m.path("e"))
    os.chmod(m.path("d/g"), 0o600)
    os.setxattr(m.path("d/g"), "user.k", b"v")
    os.truncate(m.path("d/h"), 3000)
    fd = os.open(m.path("big"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.posix_fallocate(fd, 0, 1 << 20)
        qfs.fallocate(fd, 0x03, 4096, 65536)  # punch a hole, keep size
        os.fsync(fd)
    finally:
        os.close(fd)
    qfs.renameat2(m.path("d/g"), m.path("big"), 2)  # exchange


@pytest.mark.timeout(120)
def test_every_change_reaches_the_replication_child_in_order(quorum,
                                                             tmp_path):
    m = quorum()
    write_file(m.path("disk.img"), b"\0" * (4 << 20))
    d = tmp_path / "inbound"
    d.mkdir()
    started(m, d)
    namespace_and_metadata_changes(m)
    errors = []

    def writer(k):
        try:
            fd = os.open(m.path("disk.img"), os.O_WRONLY)
            try:
                rnd = __import__("random").Random(k)
                for seq in range(300):
                    off = rnd.randrange(0, (4 << 20) - 65536, 512)
                    os.pwrite(fd, bytes([k * 16 + seq % 16]) *
                              rnd.choice((512, 4096, 65536)), off)
            finally:
                os.close(fd)
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    control(m, "replication checkpoint")
    ref = assert_same_tree(m.children[0], d)
    assert "disk.img" in str(ref)
    r = repl(m)
    assert r["error"] is False and r["errors"] == 0, r
    assert r["forwarded"]["ops"] >= 1200 and \
        r["forwarded"]["bytes"] >= 1200 * 512, r


# --- failures --------------------------------------------------------------

def test_a_failing_secondary_is_latched_and_costs_the_writer_nothing(
        faulty, quorum, tmpfs_dir):
    ffs, m = streaming(faulty, quorum, tmpfs_dir)
    ffs.set("error=EIO op=write")
    fd = os.open(m.path("disk.img"), os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"b" * 4096, 8192) == 4096
        assert os.pwrite(fd, b"c" * 4096, 16384) == 4096
        os.fsync(fd)
    finally:
        os.close(fd)
    assert read_file(m.path("disk.img"))[8192:8196] == b"bbbb"
    assert refused(m, "replication get-error", errno.EIO) == IO_ERROR
    r = repl(m)
    assert r["error"] is True and r["desc"] == IO_ERROR, r
    assert r["first-error"]["op"] == "write", r
    assert r["first-error"]["file"] == "disk.img", r
    assert (r["first-error"]["offset"], r["first-error"]["length"]) == \
        (8192, 4096), r
    assert r["first-error"]["errno"] == errno.EIO and r["errors"] >= 2, r
    ev = m.wait_event("REPLICATION_ERROR")
    assert (ev["node-name"], ev["op"], ev["error"], ev["file"]) == \
        (SEC, "write", "Input/output error", "disk.img"), ev
    assert (ev["sector-num"], ev["sectors-count"]) == (16, 8), ev
    assert not [e for e in m.events_named("QUORUM_REPORT_BAD")
                if e["node-name"] == SEC]
    assert child_status(status(m), SEC)["state"] == "ok"
    # Forwarding goes on: the stream is whole again once the child is.
    ffs.clear()
    write_file(m.path("later"), b"later")
    assert read_file(ffs.path("later")) == b"later"
    control(m, "replication stop")
    control(m, "replication get-error")  # DONE clears the error


@pytest.mark.timeout(120)
def test_a_hung_secondary_costs_one_io_timeout_once(faulty, quorum,
                                                    tmpfs_dir):
    ffs, m = streaming(faulty, quorum, tmpfs_dir, opts=["io-timeout=2"])
    ffs.set("hang op=write")
    took = []
    fd = os.open(m.path("disk.img"), os.O_WRONLY)
    try:
        for i in range(20):
            t = time.monotonic()
            os.pwrite(fd, b"%02d" % i * 2048, 4096 * (i % 8))
            took.append(time.monotonic() - t)
    finally:
        os.close(fd)
    assert 1.5 < took[0] < 2 + 3 * qfs.deadline_scale(), took
    assert max(took[1:]) < 0.5 * qfs.deadline_scale(), took
    c = child_status(status(m), SEC)
    assert c["state"] == "failed", c
    assert c["reason"] == \
        "did not answer a forward of 'disk.img' within 2000 ms", c
    assert refused(m, "replication get-error", errno.EIO) == IO_ERROR
    assert c["replication"]["first-error"]["errno"] == errno.ETIMEDOUT
    ffs.clear()


@pytest.mark.timeout(60)
def test_checkpoint_returns_once_the_forwards_before_it_are_answered(
        faulty, quorum, tmpfs_dir):
    ffs, m = streaming(faulty, quorum, tmpfs_dir)
    ffs.set("hang=1500 op=create")
    done = []

    def create():
        os.close(os.open(m.path("slow"), os.O_CREAT | os.O_WRONLY, 0o644))
        done.append(time.monotonic())

    t = threading.Thread(target=create)
    t.start()
    # The data children have answered; the replication child holds it.
    qfs.wait_for(lambda: os.path.exists(os.path.join(m.children[0], "slow")),
                 10, "the data children to create the file")
    assert not done
    control(m, "replication checkpoint")
    returned = time.monotonic()
    t.join(30)
    assert done and done[0] <= returned + 0.05, (done, returned)
    ffs.clear()
    assert os.path.exists(ffs.path("slow"))


# --- restarts --------------------------------------------------------------

def test_a_restart_refills_the_replication_child_from_the_record(
        quorum, tmp_path):
    m = quorum()
    write_file(m.path("disk.img"), os.urandom(1 << 20))
    d = tmp_path / "inbound"
    d.mkdir()
    started(m, d)
    m.unmount()
    # What happens to it while the primary is down is unknown to us.
    write_file(d / "disk.img", b"stale")
    write_file(d / "stray", b"stray")
    m.start()
    c = wait_child_state(m, SEC, "ok")
    c = child_status(c, SEC)
    assert (c["kind"], c["votes"], c["replication"]["stage"]) == \
        ("replication", False, "NONE"), c
    assert_same_tree(m.children[0], d)
    assert not os.path.exists(d / ".quorumfs")
    m.wait_event("CHILD_STATE_CHANGED",
                 lambda e: e["node-name"] == SEC and e["new"] == "stale" and
                 "refilled after a restart" in e["reason"])


# --- documentation -----------------------------------------------------------

def test_replication_status_and_events_are_in_the_readme(faulty, quorum,
                                                         tmpfs_dir):
    ffs = faulty_replica(faulty, tmpfs_dir)
    m = quorum()
    started(m, ffs.mnt)
    ffs.set("error=EIO op=create")
    write_file(m.path("f"), b"f")
    m.wait_event("REPLICATION_ERROR")
    missing = documented(keys_of(status(m)), readme_section("**Status**"))
    assert not missing, "status keys not in the README: %s" % sorted(missing)
    section = readme_section("## Event log")
    keys = set()
    for e in m.events():
        keys |= keys_of(e["data"])
    names = {e["event"] for e in m.events()}
    assert not documented(names, section), names
    assert not documented(keys, section), sorted(documented(keys, section))
    ffs.clear()
