"""A child that hangs inside a call must cost a caller at most one
io-timeout, never wedge the mount (README "Hung children").

One child of three is a faultfs mount that stalls chosen operations. Each
test runs its probes at once, each in a process of its own with a deadline
(a call stuck in a FUSE request cannot be interrupted from a thread), and
times every one: the call the hung child holds, and what an operator or
another program does meanwhile (listing, looking up and creating in the
same directory, reading the status and removing the child through the
control socket). Afterwards the hang ends and the mount unmounts cleanly
(the fixture checks it).
"""

import errno
import os
import subprocess
import sys
import time

import pytest

import qfs
from control_util import (child_status, control, socket_request, status,
                          wait_child_state, wait_status)
from qfs import write_file

IO_TIMEOUT = 2
# What a probe may take beyond io-timeout: the kernel's directory lock is
# released once the held call is answered, then the probe runs.
MARGIN = 4


def deadline():
    return (IO_TIMEOUT + MARGIN) * qfs.deadline_scale()


class Probe:
    """python code run in a process of its own, timed; argv[1] is the
    mount."""

    def __init__(self, name, m, code):
        self.name = name
        self.start = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", code, m.path()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self, limit):
        """Wait up to limit seconds; (seconds taken, stdout)."""
        try:
            out, err = self.proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            pytest.fail("%s took over %.1fs" % (self.name, limit))
        took = time.monotonic() - self.start
        assert self.proc.returncode == 0, "%s failed: %s" % (self.name, err)
        return took, out


@pytest.fixture
def hung_set(faulty, tmpfs_dir, scratch_fs, quorum):
    """Two tmpfs children and a faultfs one, threshold 2, io-timeout 2:
    (mount, faultfs)."""
    ffs = faulty(scratch_fs("tmpfs"))
    children = [tmpfs_dir / "c0", tmpfs_dir / "c1"]
    for c in children:
        c.mkdir()
    m = quorum(children=children + [ffs.mnt], threshold=2,
               opts=["io-timeout=%d" % IO_TIMEOUT])
    return m, ffs


def test_the_control_socket_answers_status_and_commands(quorum):
    m = quorum()
    path = status(m)["control-socket"]
    assert path and os.path.exists(path)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    doc = socket_request(path, "status")
    assert doc["mountpoint"] == m.path().rstrip("/")
    assert socket_request(path, "threshold 3") == {"ok": True}
    assert status(m)["threshold"] == 3
    reply = socket_request(path, "threshold 9")
    assert reply["ok"] is False and reply["errno"] == errno.EINVAL
    assert "outside" in reply["reason"]


def test_no_control_socket_when_asked_for_none(quorum):
    m = quorum(opts=["control-socket=none"])
    assert status(m)["control-socket"] is None


def test_a_child_hung_in_create_costs_one_io_timeout_and_spares_the_rest(
        hung_set):
    m, ffs = hung_set
    write_file(m.path("present"), b"here")
    path = status(m)["control-socket"]
    ffs.set("hang op=create")
    held = Probe("the held create", m, """
import sys
open(sys.argv[1] + "/created", "w").write("z")
""")
    # The others start while the create is held by the hung child.
    time.sleep(0.2)
    probes = [
        Probe("ls of the directory", m,
              "import os, sys; assert 'present' in os.listdir(sys.argv[1])"),
        Probe("lookup of a new name", m, """
import os, sys
try:
    os.stat(sys.argv[1] + "/nothing-here")
    raise SystemExit("found")
except FileNotFoundError:
    pass
"""),
        Probe("another create in the same directory", m, """
import sys
open(sys.argv[1] + "/second", "w").write("y")
"""),
        Probe("a status read through .control", m, """
import json, sys
json.load(open(sys.argv[1] + "/.control"))
"""),
    ]
    start = time.monotonic()
    doc = socket_request(path, "status")
    assert time.monotonic() - start < 1.5 * qfs.deadline_scale()
    assert doc["threshold"] == 2
    took, _ = held.finish(deadline())
    assert took < deadline()
    for p in probes:
        took, _ = p.finish(deadline())
        assert took < deadline(), p.name
    assert qfs.read_file(m.path("created")) == b"z"
    doc = wait_child_state(m, str(ffs.mnt), "failed", timeout=10)
    assert "within 2000 ms" in child_status(doc, str(ffs.mnt))["reason"]
    # The operator removes the hung child while the hang lasts.
    start = time.monotonic()
    assert socket_request(path, "remove %s" % ffs.mnt,
                          timeout=deadline()) == {"ok": True}
    assert time.monotonic() - start < deadline()
    assert str(ffs.mnt) not in [c["name"] for c in status(m)["children"]]
    ffs.clear()


def test_a_write_that_grows_a_file_is_bounded_like_an_overwrite(hung_set):
    m, ffs = hung_set
    write_file(m.path("img"), b"\0" * 65536)
    ffs.set("hang op=write")
    writer = Probe("a write past the end", m, """
import os, sys
fd = os.open(sys.argv[1] + "/img", os.O_WRONLY)
os.pwrite(fd, b"g" * 4096, 200 * 1024 * 1024)
os.close(fd)
""")
    took, _ = writer.finish(deadline())
    assert took < deadline()
    doc = wait_child_state(m, str(ffs.mnt), "failed", timeout=10)
    assert "within 2000 ms" in child_status(doc, str(ffs.mnt))["reason"]
    assert os.stat(m.path("img")).st_size == 200 * 1024 * 1024 + 4096
    m.wait_event("CHILD_STATE_CHANGED",
                 lambda d: d["node-name"] == str(ffs.mnt) and
                 d["new"] == "failed")
    ffs.clear()


@pytest.mark.parametrize("call", ["truncate", "fallocate"])
def test_truncate_and_fallocate_are_bounded_too(hung_set, call):
    m, ffs = hung_set
    write_file(m.path("img"), b"\0" * 65536)
    ffs.set("hang op=truncate,fallocate,write")
    code = {
        "truncate": "import os, sys; os.truncate(sys.argv[1] + '/img', 1 << 30)",
        "fallocate": """
import os, sys
fd = os.open(sys.argv[1] + "/img", os.O_WRONLY)
os.posix_fallocate(fd, 0, 8 << 20)
os.close(fd)
"""}[call]
    took, _ = Probe(call, m, code).finish(deadline())
    assert took < deadline()
    wait_child_state(m, str(ffs.mnt), "failed", timeout=10)
    ffs.clear()


def test_timed_out_requests_are_reaped_when_they_end_without_traffic(
        hung_set):
    m, ffs = hung_set
    write_file(m.path("img"), b"\0" * 65536)
    ffs.set("hang op=write path=/img")
    Probe("a held write", m, """
import os, sys
fd = os.open(sys.argv[1] + "/img", os.O_WRONLY)
os.pwrite(fd, b"w" * 4096, 0)
os.close(fd)
""").finish(deadline())
    doc = wait_child_state(m, str(ffs.mnt), "failed", timeout=10)
    assert child_status(doc, str(ffs.mnt))["timed-out-requests"] >= 1
    ffs.clear()
    # No I/O on the mount from here on: the request still ends.
    wait_status(m, lambda d: child_status(
        d, str(ffs.mnt))["timed-out-requests"] == 0, 10,
        "the timed-out write to end")
    control(m, "resync %s" % ffs.mnt)
    wait_child_state(m, str(ffs.mnt), "ok", timeout=30)


def in_pwrite(pid):
    """Whether process pid is inside pwrite64(2) (x86-64: call 18)."""
    try:
        with open("/proc/%d/syscall" % pid) as f:
            return f.read().split()[0] == "18"
    except (OSError, IndexError):
        return False


def test_status_answers_while_a_hung_child_holds_the_intent_log(hung_set):
    """A write to a new region appends to every child's intent log under
    the record's lock; a child hung in that append must not hold a
    status read for its io-timeout."""
    m, ffs = hung_set
    write_file(m.path("img"), b"\0" * 65536)
    path = status(m)["control-socket"]
    ffs.set("hang op=write path=/.quorumfs/intent")
    writer = Probe("a write to a new region", m, """
import os, sys
fd = os.open(sys.argv[1] + "/img", os.O_WRONLY)
os.pwrite(fd, b"r" * 4096, 300 * 1024 * 1024)
os.close(fd)
""")
    qfs.wait_for(lambda: in_pwrite(writer.proc.pid), 5,
                 "the writer to wait in its pwrite")
    start = time.monotonic()
    doc = socket_request(path, "status")
    assert time.monotonic() - start < 0.5 * qfs.deadline_scale()
    assert doc["set"]["members"] == 3
    took, _ = writer.finish(deadline())
    assert took < deadline()
    ffs.clear()


@pytest.mark.timeout(90)
def test_a_voter_hung_on_its_intent_log_does_not_hold_a_resync(
        faulty, scratch_fs, quorum):
    """A child back after missing a mount learns what it missed from a
    voter's intent log. A voter whose log read hangs is given up on at
    io-timeout like any request (failed), and the log of another voter
    serves: the returning child is in step, not syncing for ever."""
    ffs = faulty(scratch_fs("tmpfs"))
    c1, c2, away = [scratch_fs("tmpfs") for _ in range(3)]
    opts = ["io-timeout=%d" % IO_TIMEOUT]
    m = quorum(children=[ffs.mnt, c1, c2, away], threshold=2, opts=opts)
    write_file(m.path("vm.img"), b"old" * 10000)
    m.unmount()
    parked = away.with_name(away.name + ".parked")
    away.rename(parked)
    m = quorum(children=[ffs.mnt, c1, c2], threshold=2, opts=opts,
               mountpoint=m.mnt)
    write_file(m.path("vm.img"), b"new" * 10000)
    m.unmount()
    parked.rename(away)
    ffs.set("hang op=read path=/.quorumfs/intent")
    m = quorum(children=[ffs.mnt, c1, c2, away], threshold=2, opts=opts,
               mountpoint=m.mnt)
    doc = wait_child_state(m, str(away), "ok",
                           timeout=IO_TIMEOUT + MARGIN + 10)
    assert child_status(doc, str(ffs.mnt))["state"] == "failed", doc
    done = m.wait_event("RESYNC_COMPLETED")
    assert done["node-name"] == str(away) and done["files"] == 1, done
    with open(os.path.join(away, "vm.img"), "rb") as f:
        assert f.read() == b"new" * 10000
    ffs.clear()


@pytest.mark.timeout(90)
def test_heal_info_answers_while_a_voter_hangs_on_its_findings(
        faulty, scratch_fs, quorum):
    """heal-info reads the last scrub's findings from the first voter: one
    whose disk hangs is given up on at io-timeout, and the next voter's
    copy serves."""
    ffs = faulty(scratch_fs("tmpfs"))
    m = quorum(children=[ffs.mnt, scratch_fs("tmpfs"), scratch_fs("tmpfs")],
               threshold=2, opts=["io-timeout=%d" % IO_TIMEOUT])
    control(m, "scrub start rate=0")
    m.wait_event("SCRUB_COMPLETED", timeout=60)
    assert os.path.exists(ffs.backing_path(".quorumfs/findings"))
    ffs.set("hang op=read path=/.quorumfs/findings")
    path = status(m)["control-socket"]
    t0 = time.monotonic()
    doc = socket_request(path, "heal-info", timeout=IO_TIMEOUT + MARGIN)
    took = time.monotonic() - t0
    assert took < IO_TIMEOUT + MARGIN, took
    assert doc["unrecoverable"] is not None, doc
    assert child_status(status(m), str(ffs.mnt))["state"] == "failed"
    ffs.clear()
