"""Reliability: what each fault of a child does to writers, to the event
log, to the child's state, and how the child comes back.

- One faulty child of three (threshold 2), under a writer doing sustained
  writes with periodic fsync and a reader checking every byte it reads:
  EIO on reads, EIO and ENOSPC on writes, flipped bytes on reads, and a
  child that hangs for 30 s (io-timeout=2). The callers see no error and
  no call stalls beyond the timeout; the right QUORUM_REPORT_BAD and
  CHILD_STATE_CHANGED are logged; once the rule is cleared a resync brings
  the child back byte-identical, and nothing acknowledged is lost.
- kill -9 of the daemon under O_DIRECT and buffered writers: every
  fsync'd byte survives the remount, the children end identical and the
  record says clean after the next clean unmount.
- A child that missed a mount starts stale, is never read from, and
  copies only the regions it missed; a corrupt record makes a child stale
  and resynced whole, never a voter on its old data.
- A directory of another set is refused at mount and by `add`, a removed
  child at mount; membership added with `add` is kept by the record.
- When every failing child says ENOSPC, EDQUOT or EROFS the caller gets
  that errno, never EIO.
- A child that hangs while it is being resynced stalls no caller beyond
  the timeout.
- A read answers once a strict majority agrees: with one child of three
  stalled mid-read, the read returns the majority's bytes while the stall
  still holds; the late answer is still checked when it comes, reported
  if it differs (and rewritten under rewrite-corrupted), silently
  accepted if it agrees; and a write to the range waits for that check.

The faults come from faultfs (test/faultfs/) standing in for one child,
and from small tmpfs and ext4 file systems that really fill up. "Never
read from" is proven by content: the stale copy holds bytes that differ
from the others, a read pattern that would return them is in force
(threshold 1, fifo, the stale child listed first), a faultfs rule holds
its resync before it reaches them, and the copy is checked to still hold
them after the reads.
"""

import errno
import json
import os
import random
import re
import threading
import threading
import time

import pytest

import qfs
from qfs import pread_at, read_file, write_file
from control_util import (KiB, MiB, AlignedBuffer, assert_same_tree, block,
                          child_status, control, control_errno, pwrite_full,
                          status, wait_child_state, wait_status)

IO_TIMEOUT = 2   # io-timeout=S of the mounts that hang a child
SLACK = 6        # what a loaded 2-core machine may add to any one call
STALL_LIMIT = IO_TIMEOUT + SLACK

EIO_TEXT = os.strerror(errno.EIO)
ENOSPC_TEXT = os.strerror(errno.ENOSPC)
ETIMEDOUT_TEXT = os.strerror(errno.ETIMEDOUT)
TIMED_OUT = r"(?i)timed out|within \d+ ms"


# --- fixtures ----------------------------------------------------------

# --- helpers -----------------------------------------------------------


def record_of(child):
    """The parsed CHILD/.quorumfs/state."""
    with open(os.path.join(child, ".quorumfs", "state")) as f:
        return json.load(f)


def events_for(m, name, child):
    return [d for d in m.events_named(name) if d.get("node-name") == child]


def states_of(m, child):
    """[(old, new, reason)] of the child's CHILD_STATE_CHANGED events."""
    return [(d["old"], d["new"], d["reason"])
            for d in events_for(m, "CHILD_STATE_CHANGED", child)]


def wait_new_event(m, name, child, seen, timeout=60):
    """Wait for a name event about child beyond the first `seen` ones."""
    qfs.wait_for(lambda: len(events_for(m, name, child)) > seen,
                 timeout * qfs.deadline_scale(),
                 "a new %s for %s" % (name, child))
    return events_for(m, name, child)[seen]


def resync_when_idle(m, name, timeout=30):
    """`resync NAME`, retried while the daemon refuses it with EBUSY (a
    timed-out request of the child's still runs in the kernel)."""
    def attempt():
        try:
            control(m, "resync %s" % name)
        except OSError as e:
            if e.errno == errno.EBUSY:
                return False
            raise
        return True

    qfs.wait_for(attempt, timeout * qfs.deadline_scale(),
                 "resync %s to be accepted" % name, interval=0.1)


def started_stale(m, child):
    """The child is out of the vote from the start and its resync runs
    (held by a faultfs rule, so it cannot have ended). No event is
    required here: see assert_logged_why."""
    wait_child_state(m, child, "syncing", timeout=30)
    not_voting(m, child)


def not_voting(m, child):
    c = child_status(status(m), child)
    assert c["state"] in ("stale", "syncing") and c["votes"] is False, c
    return c


def assert_logged_why(m, child, why):
    """Some CHILD_STATE_CHANGED of child to stale gives `why` (regex)."""
    changes = states_of(m, child)
    assert any(new == "stale" and re.search(why, reason)
               for _, new, reason in changes), (
        "no CHILD_STATE_CHANGED says why %s started stale (%r); the log "
        "has %r" % (child, why, changes))


def all_ok(doc):
    return all(c["state"] == "ok" for c in doc["children"])


class Worker(threading.Thread):
    """Calls step(self) until stopped. Every call that reaches the mount
    goes through timed(), which keeps the longest; the first exception is
    recorded with the time it happened and ends the thread."""

    def __init__(self, name, step, setup=None, teardown=None):
        super().__init__(name=name, daemon=True)
        self.step, self.setup, self.teardown = step, setup, teardown
        self.stop_event = threading.Event()
        self.errors = []
        self.count = 0
        self.longest = (0.0, None)
        self.busy_since = None
        self.rng = random.Random(name)
        self.state = {}

    def timed(self, what, fn, *args):
        t0 = self.busy_since = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.busy_since = None
            dt = time.monotonic() - t0
            if dt > self.longest[0]:
                self.longest = (dt, "%s #%d" % (what, self.count))

    def stalled(self):
        """The longest call so far, counting one still running."""
        since = self.busy_since
        now = time.monotonic() - since if since is not None else 0.0
        return max(self.longest[0], now)

    def run(self):
        try:
            if self.setup:
                self.setup(self)
            while not self.stop_event.is_set():
                self.step(self)
                self.count += 1
        except Exception as e:  # asserted on by the test
            self.errors.append((time.monotonic(), "%s after %d calls: %r" % (
                self.name, self.count, e)))
        finally:
            if self.teardown:
                try:
                    self.teardown(self)
                except Exception as e:
                    self.errors.append((time.monotonic(), "%s teardown: %r"
                                        % (self.name, e)))

    def stop(self, timeout=60):
        self.stop_event.set()
        self.join(timeout * qfs.deadline_scale())
        assert not self.is_alive(), "%s did not stop" % self.name


def wait_progress(workers, more, timeout=60, what="the workers to go on"):
    target = {w: w.count + more for w in workers}
    qfs.wait_for(lambda: all(w.count >= target[w] or not w.is_alive()
                             for w in workers),
                 timeout * qfs.deadline_scale(), what)
    for w in workers:
        assert not w.errors, w.errors


# --- 1. one faulty child of three under load ---------------------------

LIVE = "live.img"
LIVE_SIZE = 8 * MiB
STATIC = "static.img"
STATIC_SIZE = 4 * MiB
SLOT = 64 * KiB
FSYNC_EVERY = 8


def live_writer(m):
    """Random 64 KiB writes over LIVE, fsync every FSYNC_EVERY writes;
    state["last"][off] is the sequence number last written at off."""
    def setup(w):
        w.state["fd"] = os.open(m.path(LIVE), os.O_WRONLY)
        w.state["last"] = {}

    def step(w):
        off = w.rng.randrange(LIVE_SIZE // SLOT) * SLOT
        w.timed("write", pwrite_full, w.state["fd"],
                block("live", w.count, off, SLOT), off)
        w.state["last"][off] = w.count
        if w.count % FSYNC_EVERY == FSYNC_EVERY - 1:
            w.timed("fsync", os.fsync, w.state["fd"])

    def teardown(w):
        os.close(w.state["fd"])

    return Worker("writer", step, setup, teardown)


def static_reader(m, data):
    """Random 64 KiB reads of STATIC, each compared with what it holds."""
    def setup(w):
        w.state["fd"] = os.open(m.path(STATIC), os.O_RDONLY)

    def step(w):
        off = w.rng.randrange(STATIC_SIZE // SLOT) * SLOT
        got = w.timed("read", os.pread, w.state["fd"], SLOT, off)
        if got != data[off:off + SLOT]:
            raise AssertionError("read of %s at %d returned wrong bytes" % (
                STATIC, off))

    def teardown(w):
        os.close(w.state["fd"])

    return Worker("reader", step, setup, teardown)


def live_expected(last):
    out = bytearray()
    for off in range(0, LIVE_SIZE, SLOT):
        out += (block("live", last[off], off, SLOT) if off in last
                else block("init", 0, off, SLOT))
    return bytes(out)


# Each fault: the faultfs rule; the QUORUM_REPORT_BAD it gives (types,
# error text or None for a lost vote, file); the first CHILD_STATE_CHANGED
# (None: the child stays ok) and its reason; the state the child is in
# while the rule holds, and that state's reason.
FAULTS = {
    "read-eio": dict(
        rule="error=EIO op=read", types={"read"}, error=EIO_TEXT,
        file=STATIC, first="failed",
        reason=r"^3 reads in a row failed: Input/output error$",
        held="failed", held_reason=r"reads in a row failed"),
    "write-eio": dict(
        rule="error=EIO op=write", types={"write"}, error=EIO_TEXT,
        file=LIVE, first="stale",
        reason=r"^missed a write of 'live\.img': Input/output error$",
        held="failed", held_reason=r"Input/output error"),
    "write-enospc": dict(
        rule="error=ENOSPC op=write", types={"write"}, error=ENOSPC_TEXT,
        file=LIVE, first="stale",
        reason=r"^missed a write of 'live\.img': No space left on device$",
        held="failed", held_reason=r"No space left on device"),
    "read-flip": dict(
        rule="flip op=read path=/%s" % STATIC, types={"read"}, error=None,
        file=STATIC, first=None, reason=None, held="ok", held_reason=None),
    "hang-30s": dict(
        rule="hang=30000 op=read,write", types={"read", "write"},
        error=ETIMEDOUT_TEXT, file=None, first="failed",
        reason=TIMED_OUT, held="failed", held_reason=TIMED_OUT),
}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("kind", list(FAULTS))
def test_one_faulty_child_of_three_under_sustained_writes(
        kind, faulty, tmpfs_dir, scratch_fs, quorum):
    fault = FAULTS[kind]
    ffs = faulty(scratch_fs("tmpfs"))
    children = [tmpfs_dir / "c0", tmpfs_dir / "c1"]
    for c in children:
        c.mkdir()
    m = quorum(children=children + [ffs.mnt], threshold=2,
               opts=["io-timeout=%d" % IO_TIMEOUT])
    name = ffs.mnt
    static = random.Random(kind).randbytes(STATIC_SIZE)
    write_file(m.path(STATIC), static)
    write_file(m.path(LIVE), b"".join(block("init", 0, off, SLOT)
                                      for off in range(0, LIVE_SIZE, SLOT)))
    writer, reader = live_writer(m), static_reader(m, static)
    workers = (writer, reader)
    for w in workers:
        w.start()
    try:
        wait_progress(workers, 50, what="the load to start")
        assert all_ok(status(m))

        ffs.set(fault["rule"])
        bad = m.wait_event(
            "QUORUM_REPORT_BAD",
            lambda d: d.get("node-name") == name and
            d["type"] in fault["types"], timeout=30)
        assert bad.get("error") == fault["error"], bad
        if fault["file"]:
            assert bad["file"] == fault["file"], bad
        if fault["first"]:
            first = m.wait_event("CHILD_STATE_CHANGED",
                                 lambda d: d["node-name"] == name,
                                 timeout=30)
            assert (first["old"], first["new"]) == ("ok", fault["first"]), \
                first
            assert re.search(fault["reason"], first["reason"]), first
        # The state the child settles in while the fault lasts.
        doc = wait_child_state(m, name, fault["held"], timeout=30)
        c = child_status(doc, name)
        assert c["votes"] is (fault["held"] == "ok"), c
        if fault["held_reason"]:
            assert re.search(fault["held_reason"], c["reason"]), c
        wait_progress(workers, 200,
                      what="the load to go on under the fault")
        c = child_status(status(m), name)
        assert c["state"] == fault["held"], c
        if fault["first"] is None:
            assert states_of(m, name) == [], \
                "a child that only lost votes changed state"
        if fault["error"] == EIO_TEXT:
            assert c["errors"][next(iter(fault["types"]))] >= 1, c

        ffs.clear()
        if fault["held"] != "ok":
            done = len(events_for(m, "RESYNC_COMPLETED", name))
            resync_when_idle(m, name)
            wait_new_event(m, "RESYNC_COMPLETED", name, done, timeout=60)
            wait_child_state(m, name, "ok", timeout=30)
        wait_progress(workers, 100, what="the load to go on after recovery")
    finally:
        for w in workers:
            w.stop()
    for w in workers:
        assert not w.errors, w.errors
        assert w.longest[0] < STALL_LIMIT, \
            "%s stalled %.1fs in %s" % (w.name, *w.longest)

    # Nothing acknowledged was lost, and the child is a copy again.
    assert read_file(m.path(LIVE)) == live_expected(writer.state["last"])
    assert read_file(m.path(STATIC)) == static
    doc = status(m)
    assert all_ok(doc), doc["children"]
    assert not m.events_named("QUORUM_FAILURE")
    ref = assert_same_tree(children[0], children[1])
    assert ref == assert_same_tree(children[0], ffs.backing)
    print("\n%s: %s %d calls, longest %.2fs (%s); %s %d calls, longest "
          "%.2fs (%s); report %s; states %s" % (
              kind, writer.name, writer.count, *writer.longest, reader.name,
              reader.count, *reader.longest,
              {k: bad.get(k) for k in ("type", "error", "file")},
              states_of(m, name)))


# --- 2. kill -9 under fsync'd writes -----------------------------------

KILL_SIZE = 16 * MiB
BLOCK = 4 * KiB


def durable_writer(m, rel, direct):
    """Random 64 KiB writes to rel (O_DIRECT or buffered), fsync every
    FSYNC_EVERY writes. state["hist"][off]: every sequence number written
    (or being written) at off, in order; state["durable"][off]: the index
    in hist of the last one an fsync covered."""
    def setup(w):
        flags = os.O_WRONLY | (os.O_DIRECT if direct else 0)
        w.state.update(fd=os.open(m.path(rel), flags), hist={}, durable={},
                       pending=set(), fsyncs=0,
                       buf=AlignedBuffer(SLOT) if direct else None)

    def step(w):
        s = w.state
        off = w.rng.randrange(KILL_SIZE // SLOT) * SLOT
        data = block(rel, w.count, off, SLOT)
        s["hist"].setdefault(off, []).append(w.count)
        if direct:
            view = s["buf"].fill(data)
            try:
                n = os.pwrite(s["fd"], view, off)
            finally:
                view.release()
            assert n == SLOT, "short O_DIRECT write: %d" % n
        else:
            pwrite_full(s["fd"], data, off)
        s["pending"].add(off)
        if w.count % FSYNC_EVERY == FSYNC_EVERY - 1:
            os.fsync(s["fd"])
            for p in s["pending"]:
                s["durable"][p] = len(s["hist"][p]) - 1
            s["pending"].clear()
            s["fsyncs"] += 1

    def teardown(w):
        os.close(w.state["fd"])
        if w.state["buf"]:
            w.state["buf"].close()

    return Worker(rel, step, setup, teardown)


def check_durable(rel, got, w):
    """Every 4 KiB block holds a version it may hold: for a slot an fsync
    covered, the fsync'd write or a later one; otherwise also the initial
    bytes. Returns the number of fsync'd slots checked."""
    hist, durable = w.state["hist"], w.state["durable"]
    assert len(got) == KILL_SIZE, (rel, len(got))
    for off in range(0, KILL_SIZE, SLOT):
        if off in durable:
            seqs = hist[off][durable[off]:]
            versions = [block(rel, s, off, SLOT) for s in seqs]
        else:
            versions = [block("init", 0, off, SLOT)] + [
                block(rel, s, off, SLOT) for s in hist.get(off, [])]
        for b in range(0, SLOT, BLOCK):
            have = got[off + b:off + b + BLOCK]
            assert any(have == v[b:b + BLOCK] for v in versions), (
                "%s: block at %d holds none of the versions it may hold "
                "(fsync'd: %s)" % (rel, off + b, off in durable))
    return len(durable)


@pytest.mark.timeout(180)
def test_kill_9_under_fsyncd_writes_loses_nothing_fsyncd(ext4_dir, quorum):
    m = quorum(n=3, threshold=2)
    files = {"direct.img": True, "buffered.img": False}
    for rel in files:
        write_file(m.path(rel), b"".join(block("init", 0, off, SLOT)
                                         for off in range(0, KILL_SIZE,
                                                          SLOT)))
    writers = [durable_writer(m, rel, direct) for rel, direct in
               files.items()]
    for w in writers:
        w.start()
    try:
        qfs.wait_for(lambda: all(w.state.get("fsyncs", 0) >= 8 or
                                 not w.is_alive() for w in writers),
                     90 * qfs.deadline_scale(), "8 fsyncs by each writer")
        for w in writers:
            assert not w.errors, w.errors
        killed_at = time.monotonic()
        m.kill()
    finally:
        for w in writers:
            w.stop()
    for w in writers:
        # Only the calls the kill cut off may have failed.
        assert all(t >= killed_at for t, _ in w.errors), w.errors
    for c in m.children:
        assert record_of(c)["clean"] is False, c
    differ = sum(read_file(m.child_file(0, rel)) != read_file(
        m.child_file(i, rel)) for rel in files for i in (1, 2))

    m.start()
    doc = wait_status(m, all_ok, 60, "every child to be ok after the crash")
    assert all(c["votes"] for c in doc["children"])
    checked = 0
    for w in writers:
        checked += check_durable(w.name, read_file(m.path(w.name)), w)
    assert checked > 0
    ref = assert_same_tree(m.children[0], m.children[1])
    assert ref == assert_same_tree(m.children[0], m.children[2])
    assert not m.events_named("QUORUM_FAILURE")

    m.unmount()
    records = [record_of(c) for c in m.children]
    for c, r in zip(m.children, records):
        assert r["clean"] is True, (c, r)
        assert os.path.getsize(os.path.join(c, ".quorumfs", "intent")) == 0
    assert len({(r["set"], r["generation"]) for r in records}) == 1, records
    print("\nkill -9: %s; %d fsync'd slots intact; %d child copies "
          "differed before the remount" % (
              ", ".join("%s %d writes %d fsyncs" % (
                  w.name, w.count, w.state["fsyncs"]) for w in writers),
              checked, differ))


# --- 3. a child that was away ------------------------------------------

DISK = "disk.img"
DISK_SIZE = 640 * MiB            # ten 64 MiB regions of the intent log
REGION = 64 * MiB
MISSED_OFF = 7 * REGION + 20 * MiB   # written while the child was away
MISSED_LEN = 64 * KiB
GATE = "gate.img"                # also written while away, first


def seed(children, rel, size, tag):
    """Put the same size bytes at rel in every child directory, before
    any mount: the old content, the same everywhere."""
    with open(children[0] / rel, "wb") as f:
        for off in range(0, size, MiB):
            f.write(block(tag, 0, off, min(MiB, size - off)))
    for c in children[1:]:
        with open(children[0] / rel, "rb") as src, open(c / rel, "wb") as dst:
            while chunk := src.read(8 * MiB):
                dst.write(chunk)


def write_at(path, data, off):
    fd = os.open(path, os.O_WRONLY)
    try:
        pwrite_full(fd, data, off)
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.mark.timeout(240)
def test_a_child_that_missed_a_mount_is_never_read_and_copies_only_that(
        faulty, scratch_fs, quorum):
    bases = [scratch_fs("tmpfs", size="720M") for _ in range(3)]
    c0, c1, away = [b / "child" for b in bases]
    for c in (c0, c1, away):
        c.mkdir()
    seed([c0, c1, away], DISK, DISK_SIZE, "old")
    seed([c0, c1, away], GATE, MiB, "gate")
    total = DISK_SIZE + MiB
    old = pread_at(c0 / DISK, MISSED_OFF, MISSED_LEN)
    new = block("new", 1, MISSED_OFF, MISSED_LEN)

    m1 = quorum(children=[c0, c1, away], threshold=2)
    assert pread_at(m1.path(DISK), MISSED_OFF, MISSED_LEN) == old
    m1.unmount()

    # The third child is unreachable; the other two go on without it.
    parked = away.with_name("child.parked")
    away.rename(parked)
    m2 = quorum(children=[c0, c1], threshold=2)
    write_at(m2.path(GATE), b"g" * 4 * KiB, 0)
    write_at(m2.path(DISK), new, MISSED_OFF)
    assert len(record_of(c0)["members"]) == 3
    m2.unmount()
    parked.rename(away)
    gen_away = record_of(away)["generation"]
    gen_set = record_of(c0)["generation"]
    assert gen_away < gen_set

    # Back, listed first, behind faultfs. Its copy starts with GATE (the
    # log's order) and stalls there until the rule is cleared, so DISK's
    # missed region cannot have been copied while we read it.
    ffs = faulty(away)
    ffs.set("hang op=write path=/%s" % GATE)
    m3 = quorum(children=[ffs.mnt, c0, c1], threshold=1,
                opts=["read-pattern=fifo"])
    name = ffs.mnt
    started_stale(m3, name)

    for pattern in ("fifo", "quorum"):
        if pattern == "quorum":
            control(m3, "read-pattern quorum")
        for _ in range(20):
            not_voting(m3, name)
            assert pread_at(m3.path(DISK), MISSED_OFF, MISSED_LEN) == new, \
                "a read (%s, threshold 1) returned the stale copy" % pattern
        # The proof held: the stale copy still had its old bytes.
        assert pread_at(ffs.backing_path(DISK), MISSED_OFF,
                        MISSED_LEN) == old
    assert events_for(m3, "QUORUM_REPORT_BAD", name) == [], \
        "the stale child was read"

    ffs.clear()
    done = m3.wait_event("RESYNC_COMPLETED",
                         lambda d: d["node-name"] == name, timeout=120)
    wait_child_state(m3, name, "ok", timeout=30)
    # Only the two missed regions were copied, of 641 MiB.
    assert done["files"] == 2, done
    assert 2 * MISSED_LEN <= done["bytes"] <= 2 * REGION, done
    assert done["bytes"] * 4 < total, done
    assert pread_at(m3.path(DISK), MISSED_OFF, MISSED_LEN) == new
    ref = assert_same_tree(c0, c1)
    assert ref == assert_same_tree(c0, away)
    assert_logged_why(m3, name, "^behind: generation %d, the set is at %d$"
                      % (gen_away, gen_set))


# --- 4. sets and membership --------------------------------------------

def make_set(quorum, base, data):
    """A set of three fresh children under base, mounted once, with one
    file, and unmounted again. Returns its Mount."""
    m = quorum(n=3, threshold=2, base=base)
    write_file(m.path("f"), data)
    m.unmount()
    return m


def test_a_child_of_another_set_is_refused_at_mount(
        tmpfs_dir, quorum, run_daemon, tmp_path):
    a = make_set(quorum, tmpfs_dir, b"set a")
    b = make_set(quorum, tmpfs_dir, b"set b")
    before = read_file(os.path.join(a.children[0], ".quorumfs", "state"))
    mnt = tmp_path / "mnt-mixed"
    mnt.mkdir()
    rc, err = run_daemon("-f", "-o", "threshold=2", b.children[0],
                         b.children[1], a.children[0], mnt)
    lines = err.strip("\n").split("\n")
    assert rc > 0, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("quorumfs: "), err
    assert a.children[0] in lines[0] and "another quorumfs set" in lines[0], \
        lines[0]
    assert not qfs.is_fuse_mounted(mnt)
    assert read_file(os.path.join(a.children[0], ".quorumfs",
                                  "state")) == before


@pytest.mark.timeout(60)
def test_a_child_of_another_set_is_refused_by_add(tmpfs_dir, quorum):
    a = make_set(quorum, tmpfs_dir, b"set a")
    state = os.path.join(a.children[0], ".quorumfs", "state")
    before = read_file(state)
    b = quorum(n=3, threshold=2, base=tmpfs_dir)
    write_file(b.path("f"), b"set b")
    doc = status(b)
    e = control_errno(b, "add %s name=intruder" % a.children[0])
    assert e == errno.EINVAL, qfs.errno_name(e)
    err = b.wait_event("CONTROL_ERROR",
                       lambda d: a.children[0] in d["command"])
    assert "another quorumfs set" in err["reason"], err
    after = status(b)
    assert after["last-control-error"]["reason"] == err["reason"]
    assert after["children"] == doc["children"]
    assert read_file(state) == before
    assert read_file(os.path.join(a.children[0], "f")) == b"set a"


@pytest.mark.timeout(90)
def test_a_child_added_at_runtime_is_mounted_next_time_unnamed(
        tmpfs_dir, quorum):
    m = quorum(n=3, threshold=2, base=tmpfs_dir)
    write_file(m.path("before"), b"before the add" * 1000)
    extra = tmpfs_dir / "extra"
    extra.mkdir()
    control(m, "add %s name=extra" % extra)
    wait_child_state(m, "extra", "ok", timeout=30)
    write_file(m.path("after"), b"after the add" * 1000)
    m.unmount()
    assert len(record_of(m.children[0])["members"]) == 4

    m2 = quorum(children=m.children, threshold=2)
    doc = wait_status(m2, all_ok, 30, "every child to be ok")
    c = child_status(doc, "extra")
    assert c is not None, [x["name"] for x in doc["children"]]
    assert c["path"] == str(extra) and c["votes"] is True, c
    assert len(doc["children"]) == 4
    for rel, data in (("before", b"before the add" * 1000),
                      ("after", b"after the add" * 1000)):
        assert read_file(m2.path(rel)) == data
        assert read_file(extra / rel) == data
    assert events_for(m2, "QUORUM_REPORT_BAD", "extra") == []


@pytest.mark.timeout(60)
def test_a_removed_child_offered_again_is_refused_at_mount(
        tmpfs_dir, quorum, run_daemon, tmp_path):
    m = quorum(n=3, threshold=2, base=tmpfs_dir)
    write_file(m.path("f"), b"data")
    control(m, "remove %s" % m.children[2])
    m.unmount()
    mnt = tmp_path / "mnt-again"
    mnt.mkdir()
    rc, err = run_daemon("-f", *m.children, mnt)
    lines = err.strip("\n").split("\n")
    assert rc > 0 and len(lines) == 1, (rc, err)
    assert m.children[2] in lines[0] and "removed" in lines[0], lines[0]
    assert not qfs.is_fuse_mounted(mnt)


# --- 5. the errno of a write no quorum took ----------------------------

def fill_until_refused(path, chunk=256 * KiB, limit=256 * MiB):
    """Write chunks until a write fails; return (the bytes acknowledged,
    the errno)."""
    acked = bytearray()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while len(acked) < limit:
            data = block("fill", 0, len(acked), chunk)
            try:
                n = os.pwrite(fd, data, len(acked))
            except OSError as e:
                return bytes(acked), e.errno
            acked += data[:n]
    finally:
        os.close(fd)
    pytest.fail("%d bytes written without an error" % len(acked))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind,size", [("tmpfs", "4M"), ("ext4", "16M")])
def test_two_full_children_give_enospc_not_eio(kind, size, tmpfs_dir,
                                               scratch_fs, quorum):
    small = [scratch_fs(kind, size=size) for _ in range(2)]
    big = tmpfs_dir / "big"
    big.mkdir()
    m = quorum(children=[big] + small, threshold=2)
    acked, err = fill_until_refused(m.path("f"))
    assert err == errno.ENOSPC, qfs.errno_name(err)
    assert acked
    # What was acknowledged reads back. (The refused write may have left
    # a prefix on the children that stored part of it before filling
    # up: there is no rollback, as in QEMU.)
    got = read_file(m.path("f"))
    assert got[:len(acked)] == acked, "acknowledged data was lost"
    refused = block("fill", 0, len(acked), 256 * KiB)
    assert refused.startswith(got[len(acked):]), "garbage after the data"
    print("\n%s: %d bytes acknowledged, %d bytes of the refused write "
          "stored" % (kind, len(acked), len(got) - len(acked)))
    # Refused again, the same way, and the mount is still there.
    assert fill_until_refused(m.path("g"))[1] == errno.ENOSPC
    m.wait_event("QUORUM_FAILURE")
    for c in small:
        bad = m.wait_event("QUORUM_REPORT_BAD",
                           lambda d: d.get("node-name") == str(c) and
                           d["type"] == "write")
        assert bad["error"] == ENOSPC_TEXT, bad
    reports = m.events_named("QUORUM_REPORT_BAD")
    assert all(d.get("error") != EIO_TEXT for d in reports), reports
    assert status(m)["children"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("errors", [("EDQUOT", "EDQUOT"), ("EROFS", "EROFS"),
                                    ("ENOSPC", "EDQUOT")],
                         ids=["edquot", "erofs", "enospc-edquot"])
def test_two_children_refusing_a_write_give_their_errno_not_eio(
        errors, faulty, tmpfs_dir, scratch_fs, quorum):
    ffs = [faulty(scratch_fs("tmpfs")) for _ in range(2)]
    c0 = tmpfs_dir / "c0"
    c0.mkdir()
    m = quorum(children=[c0] + [f.mnt for f in ffs], threshold=2)
    fd = os.open(m.path("f"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"a" * SLOT, 0)
        for f, e in zip(ffs, errors):
            f.set("error=%s op=write" % e)
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"b" * SLOT, SLOT)
        got = exc.value.errno
        allowed = {getattr(errno, e) for e in errors}
        assert got in allowed and got != errno.EIO, qfs.errno_name(got)
        print("\n%s: the writer got %s" % ("+".join(errors),
                                            qfs.errno_name(got)))
        for f in ffs:
            f.clear()
    finally:
        os.close(fd)
    m.wait_event("QUORUM_FAILURE", lambda d: d["reference"] == "f")
    for f, e in zip(ffs, errors):
        bad = m.wait_event("QUORUM_REPORT_BAD",
                           lambda d: d.get("node-name") == f.mnt)
        assert bad["error"] == os.strerror(getattr(errno, e)), bad
    # No quorum took the write: nobody is blamed for missing it, and
    # the mount shows what was acknowledged, not the refused write.
    assert all_ok(status(m))
    assert read_file(m.path("f")) == b"a" * SLOT


# --- 6. a corrupt record -----------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("garbage", [b"{not json", b"",
                                     b'{"format": 1, "set": "x"}'],
                         ids=["not-json", "empty", "fields-missing"])
def test_a_child_with_a_corrupt_record_is_resynced_and_never_read(
        garbage, faulty, scratch_fs, quorum):
    base = scratch_fs("tmpfs")
    c0, c1, bad = base / "c0", base / "c1", base / "bad"
    for c in (c0, c1, bad):
        c.mkdir()
    files = {"img%d.img" % i: random.Random(i).randbytes(4 * MiB)
             for i in range(4)}
    m1 = quorum(children=[c0, c1, bad], threshold=2)
    # The copy walks names in order: "0gate" comes first.
    write_file(m1.path("0gate"), b"gate" * 1024)
    for rel, data in files.items():
        write_file(m1.path(rel), data)
    m1.unmount()
    ids = {r["child"] for r in map(record_of, (c0, c1))}
    # The bad child's record is damaged, and so is its data.
    write_file(bad / ".quorumfs" / "state", garbage)
    for rel in files:
        with open(bad / rel, "r+b") as f:
            f.seek(2 * MiB)
            f.write(b"\xee" * MiB)

    ffs = faulty(bad)
    ffs.set("hang op=write path=/0gate")  # the copy stalls at its first file
    m = quorum(children=[ffs.mnt, c0, c1], threshold=1,
               opts=["read-pattern=fifo"])
    name = ffs.mnt
    started_stale(m, name)
    for rel, data in files.items():
        not_voting(m, name)
        assert read_file(m.path(rel)) == data, \
            "a read (fifo, threshold 1) returned the unsynced copy"
        # The proof held: the child's copy was still wrong.
        assert read_file(ffs.backing_path(rel)) != data
    assert events_for(m, "QUORUM_REPORT_BAD", name) == []

    ffs.clear()
    done = m.wait_event("RESYNC_COMPLETED",
                        lambda d: d["node-name"] == name, timeout=60)
    assert done["files"] == len(files) + 1, done  # the whole tree
    wait_child_state(m, name, "ok", timeout=30)
    # Back in step: it takes writes like the others.
    write_file(m.path("img0.img"), files["img0.img"][::-1])
    ref = assert_same_tree(c0, c1)
    assert ref == assert_same_tree(c0, bad)
    m.unmount()
    records = [record_of(c) for c in (c0, c1, bad)]
    assert len({r["set"] for r in records}) == 1, records
    assert all(r["clean"] for r in records), records
    assert records[2]["child"] not in ids, "the bad child kept no identity"
    # Every member was in step at a clean unmount, which clears the
    # intent log; and the members are the three children, each once,
    # the bad child by its new identity: nothing is left of the damaged
    # record's identity.
    for c in (c0, c1, bad):
        assert os.path.getsize(c / ".quorumfs" / "intent") == 0, (
            "%s: intent log not cleared at a clean unmount" % c)
    now = [x["child"] for x in records[0]["members"]]
    assert sorted(now) == sorted(r["child"] for r in records), records[0]
    assert_logged_why(m, name, "record is unreadable")


# --- 7. a child that hangs while it is being resynced -------------------

@pytest.mark.timeout(120)
def test_a_child_that_hangs_during_its_resync_stalls_no_caller(
        faulty, tmpfs_dir, scratch_fs, quorum):
    ffs = faulty(scratch_fs("tmpfs"))
    children = [tmpfs_dir / "c0", tmpfs_dir / "c1"]
    for c in children:
        c.mkdir()
    m = quorum(children=children + [ffs.mnt], threshold=2,
               opts=["io-timeout=%d" % IO_TIMEOUT])
    name = ffs.mnt
    data = random.Random(7).randbytes(8 * MiB)
    write_file(m.path("img"), data)
    ffs.set("hang=30000 op=write path=/img")
    control(m, "resync %s" % name)
    m.wait_event("RESYNC_PROGRESS", lambda d: d["node-name"] == name)
    # Callers of the file the copy is stuck in: stat, read, write.
    reader = Worker("caller", lambda w: (
        w.timed("stat", os.stat, m.path("img")),
        w.timed("read", pread_at, m.path("img"), 5 * MiB, SLOT)))
    reader.start()
    try:
        # Up to the hang's own end, to measure how long callers wait.
        end = time.monotonic() + 40 * qfs.deadline_scale()
        while (reader.count < 5 and reader.is_alive() and
               time.monotonic() < end):
            time.sleep(0.05)
        assert reader.stalled() < STALL_LIMIT, \
            "a caller waited %.1fs (%s) behind the copy's hung write" % (
                reader.stalled(), reader.longest[1])
        doc = wait_child_state(m, name, "failed", timeout=30)
        assert re.search(TIMED_OUT, child_status(doc, name)["reason"]), doc
    finally:
        ffs.clear()
        reader.stop()
    assert not reader.errors, reader.errors
    resync_when_idle(m, name)
    wait_child_state(m, name, "ok", timeout=60)
    assert_same_tree(children[0], ffs.backing)


# --- 8. reads answer on a strict majority ------------------------------

def majority_mount(faulty, tmpfs_dir, scratch_fs, quorum, opts=()):
    """a, b on tmpfs and a faultfs child, threshold 2, a long io-timeout
    (so only the majority rule can end a read early), and an image."""
    ffs = faulty(scratch_fs("tmpfs"))
    children = [tmpfs_dir / "c0", tmpfs_dir / "c1"]
    for c in children:
        c.mkdir()
    m = quorum(children=children + [ffs.mnt], threshold=2,
               opts=["io-timeout=120"] + list(opts))
    data = random.Random(8).randbytes(1 * MiB)
    write_file(m.path("img"), data)
    return m, ffs, data


def reports_for(m, child):
    return [d for d in m.events_named("QUORUM_REPORT_BAD")
            if d["node-name"] == child]


@pytest.mark.timeout(60)
def test_a_read_answers_on_a_majority_and_checks_the_late_child(
        faulty, tmpfs_dir, scratch_fs, quorum):
    m, ffs, data = majority_mount(faulty, tmpfs_dir, scratch_fs, quorum)
    ffs.set("hang op=read path=/img")
    # The stall is never lifted before the read returns: an answer now
    # can only come from the two children that agree.
    assert pread_at(m.path("img"), 64 * KiB, 64 * KiB) == \
        data[64 * KiB:128 * KiB]
    assert reports_for(m, ffs.mnt) == [], "the late child was judged early"
    # Lift the stall and corrupt what the late read returns: it is still
    # checked, and reported for exactly the range the reader asked for.
    ffs.set("flip op=read path=/img")
    bad = m.wait_event("QUORUM_REPORT_BAD",
                       lambda d: d["node-name"] == ffs.mnt)
    assert (bad["sector-num"], bad["sectors-count"]) == (64 * KiB // 512,
                                                     64 * KiB // 512), bad
    assert "error" not in bad, bad
    assert child_status(status(m), ffs.mnt)["state"] == "ok"


@pytest.mark.timeout(60)
def test_a_late_answer_that_agrees_is_not_reported_and_holds_writes(
        faulty, tmpfs_dir, scratch_fs, quorum):
    m, ffs, data = majority_mount(faulty, tmpfs_dir, scratch_fs, quorum)
    ffs.set("hang op=read path=/img")
    assert pread_at(m.path("img"), 0, 4 * KiB) == data[:4 * KiB]
    # A write over the range waits for the late child's check: the read
    # still claims its bytes, so the late answer is one the others gave.
    done = threading.Event()
    new = b"\x5a" * 4 * KiB

    def overwrite():
        fd = os.open(m.path("img"), os.O_WRONLY)
        try:
            os.pwrite(fd, new, 0)
        finally:
            os.close(fd)
        done.set()
    t = threading.Thread(target=overwrite, daemon=True)
    t.start()
    assert not done.wait(0.5), "a write overtook a read's late check"
    ffs.clear()
    assert done.wait(30 * qfs.deadline_scale()), "the write never ran"
    t.join()
    assert reports_for(m, ffs.mnt) == [], "an agreeing late answer reported"
    assert pread_at(m.path("img"), 0, 4 * KiB) == new
    for c in (tmpfs_dir / "c0", tmpfs_dir / "c1", ffs.backing):
        assert read_file(os.path.join(c, "img"))[:4 * KiB] == new, c


@pytest.mark.timeout(60)
def test_a_late_corrupt_answer_is_rewritten_under_rewrite_corrupted(
        faulty, tmpfs_dir, scratch_fs, quorum):
    m, ffs, data = majority_mount(faulty, tmpfs_dir, scratch_fs, quorum,
                                  opts=["rewrite-corrupted"])
    # The child's own copy is bad and its read stalls: the answer comes
    # from the other two, the rewrite once the bad copy arrives.
    with open(os.path.join(ffs.backing, "img"), "r+b") as f:
        f.seek(8 * KiB)
        f.write(b"\0" * 4 * KiB)
    ffs.set("hang op=read path=/img")
    assert pread_at(m.path("img"), 0, 64 * KiB) == data[:64 * KiB]
    ffs.clear()
    m.wait_event("QUORUM_REPORT_BAD", lambda d: d["node-name"] == ffs.mnt)
    qfs.wait_for(lambda: read_file(os.path.join(ffs.backing, "img")) == data,
                 10, "the late child's copy to be rewritten")
