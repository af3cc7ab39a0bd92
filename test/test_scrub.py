"""Scrub: `scrub start|repair|stop` through .control (README "Scrub").

A scrub reads every regular file from every voting child and votes it as
a read would: a copy that differs from the voted bytes is reported as
SCRUB_MISMATCH with the child's name and the byte range of its bad 4 KiB
blocks (one finding per child per run of bad blocks within a 1 MiB
chunk), and `scrub repair` writes the voted bytes over it. Blocks without
quorum are reported as unrecoverable and never written. Sizes are voted
too; the names in each directory and their metadata are compared as
test_scrub_names.py shows, so a missing copy is a finding of its own.

Corruption is planted by writing into the child files directly while the
mount is up, so every expected finding is known exactly; the proof is
the event log, the status and the children's bytes.
"""

import errno
import hashlib
import os
import random
import time

import pytest

import qfs
from qfs import read_file, write_file
from faultfs import FaultFS, rule
from control_util import (KiB, MiB, AlignedBuffer, Writer, control,
                          control_errno, control_errors, status,
                          wait_status, wait_writes, walk)

BLOCK = 4 * KiB
CHUNK = 1 * MiB
NFILES = 40


def corrupt(path, offset, count, mask=0xFF):
    """XOR count bytes of a child's file at offset (every byte changes)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ mask for b in old))


def child_digests(m):
    """{(child, relpath): (sha256, size, mtime_ns)} of every file."""
    out = {}
    for c in m.children:
        for rel, p, st in walk(c):
            if os.path.isfile(p):
                out[(c, rel)] = (hashlib.sha256(read_file(p)).hexdigest(),
                                 st.st_size, st.st_mtime_ns)
    return out


def block_range(off, length, size):
    """The bytes of the 4 KiB blocks [off, off + length) touches, cut at
    the file's end: what a finding names."""
    start = off // BLOCK * BLOCK
    end = min((off + length + BLOCK - 1) // BLOCK * BLOCK, size)
    return start, end - start


def run_scrub(m, command="scrub start rate=0", timeout=60):
    """Issue a scrub command and wait for its SCRUB_COMPLETED. Returns
    (completed data, [SCRUB_MISMATCH data of this run], final status)."""
    first = len(m.events())
    control(m, command)

    def completed():
        evs = m.events()[first:]
        return any(e["event"] == "SCRUB_COMPLETED" for e in evs) and evs

    evs = qfs.wait_for(completed, timeout * qfs.deadline_scale(),
                       "SCRUB_COMPLETED after %r" % command)
    done = next(e["data"] for e in evs if e["event"] == "SCRUB_COMPLETED")
    found = [e["data"] for e in evs if e["event"] == "SCRUB_MISMATCH"]
    doc = wait_status(m, lambda d: d["scrub"]["state"] != "running", 10,
                      "the scrub state to settle")
    return done, found, doc


def findings_of(events):
    """(path, child, offset, length) of each finding, sorted; the child
    is None where no child is to blame."""
    return sorted(((d["path"], d["node-name"], d["offset"], d["length"])
                   for d in events), key=repr)


def check_sectors(d):
    first = d["offset"] // 512
    assert d["sector-num"] == first, d
    assert d["sectors-count"] == \
        (d["offset"] + d["length"] + 511) // 512 - first, d


def plant(m, seed):
    """NFILES files written through the mount, then corruption written into
    the children: at most one corrupted child per 1 MiB chunk of a file,
    at a random offset and length inside the chunk. Returns ({rel:
    content}, expected findings as (path, child, offset, length))."""
    rng = random.Random(seed)
    os.mkdir(m.path("dir"))
    os.mkdir(m.path("dir/deeper"))
    files = {}
    for i in range(NFILES):
        rel = ["vm%02d.img", "dir/d%02d.img", "dir/deeper/x%02d"][i % 3] % i
        size = rng.randrange(40 * KiB, 3 * MiB + 5000)
        files[rel] = rng.randbytes(size)
        write_file(m.path(rel), files[rel])
    expected = []
    for rel, data in sorted(files.items()):
        size = len(data)
        chunks = list(range(0, size, CHUNK))
        for chunk in rng.sample(chunks, rng.randint(1, min(2, len(chunks)))):
            end = min(chunk + CHUNK, size)
            off = rng.randrange(chunk, end)
            length = rng.randint(1, min(20000, end - off))
            child = rng.randrange(len(m.children))
            corrupt(m.child_file(child, rel), off, length)
            expected.append((rel, m.children[child]) +
                            block_range(off, length, size))
    return files, sorted(expected)


def check_counts(doc, done, expected, children, repaired):
    per_child = {c: 0 for c in children}
    for _, child, _, _ in expected:
        per_child[child] += 1
    s = doc["scrub"]
    assert s["state"] == "completed", s
    assert s["mismatches"] == done["mismatches"] == len(expected), s
    assert s["repaired"] == done["repaired"] == \
        (len(expected) if repaired else 0), s
    assert s["unrecoverable"] == done["unrecoverable"] == 0, s
    assert s["children"] == done["children"] == per_child, s
    assert done["result"] == "completed" and done["repair"] is repaired
    assert done["files"] == s["files-done"] == s["files-total"] == NFILES
    assert done["bytes"] == s["bytes-done"] == s["bytes-total"]
    kept = [(f["path"], f["node-name"], f["offset"], f["length"])
            for f in s["findings"]]
    assert len(kept) == min(64, len(expected))
    assert set(kept) <= set(expected)
    assert all(f["repaired"] is repaired for f in s["findings"])


# --- finding and repairing ---------------------------------------------

@pytest.mark.timeout(120)
def test_scrub_reports_exactly_the_planted_corruption_and_changes_nothing(
        backing, quorum):
    m = quorum(n=4)
    _, expected = plant(m, "check")
    expected.sort(key=repr)
    before = child_digests(m)
    done, found, doc = run_scrub(m)
    assert findings_of(found) == expected
    for d in found:
        assert d["kind"] == "data" and d["repaired"] is False, d
        check_sectors(d)
    check_counts(doc, done, expected, m.children, repaired=False)
    # Each child's own count, since the mount, is in its status too.
    for c in doc["children"]:
        assert c["scrub-mismatches"] == done["children"][c["name"]]
    assert child_digests(m) == before, "a check-only scrub wrote"
    assert isinstance(doc["scrub"]["started"], int)
    assert doc["scrub"]["finished"] >= doc["scrub"]["started"]


@pytest.mark.timeout(150)
def test_scrub_repair_fixes_every_planted_corruption(backing, quorum):
    m = quorum(n=4)
    files, expected = plant(m, "repair")
    expected.sort(key=repr)
    done, found, doc = run_scrub(m, "scrub repair rate=0")
    assert findings_of(found) == expected
    assert all(d["repaired"] is True for d in found), found
    check_counts(doc, done, expected, m.children, repaired=True)
    for rel, data in files.items():
        for i in range(4):
            assert read_file(m.child_file(i, rel)) == data, \
                "%s on child %d is not the voted content" % (rel, i)
    done, found, doc = run_scrub(m)
    assert found == [] and done["mismatches"] == 0, found
    # Counts per child add up over both runs; the run's own are zero.
    assert set(doc["scrub"]["children"].values()) == {0}
    assert sum(c["scrub-mismatches"] for c in doc["children"]) == \
        len(expected)


@pytest.mark.timeout(90)
def test_a_size_mismatch_is_found_and_repaired(tmpfs_dir, quorum):
    m = quorum(n=3)
    data = random.Random(1).randbytes(2 * MiB + 3000)
    write_file(m.path("short"), data)
    write_file(m.path("long"), data)
    os.truncate(m.child_file(1, "short"), 300001)
    with open(m.child_file(2, "long"), "ab") as f:
        f.write(b"tail" * 1000)
    before = child_digests(m)
    done, found, _ = run_scrub(m)
    assert findings_of(found) == sorted([
        ("short", m.children[1], 300001, len(data) - 300001),
        ("long", m.children[2], len(data), 4000)], key=repr)
    assert {d["kind"] for d in found} == {"size"}
    assert done["mismatches"] == 2 and done["unrecoverable"] == 0
    assert child_digests(m) == before
    done, found, _ = run_scrub(m, "scrub repair rate=0")
    assert len(found) == 2 and all(d["repaired"] for d in found), found
    assert done["repaired"] == 2
    for rel in ("short", "long"):
        for i in range(3):
            assert read_file(m.child_file(i, rel)) == data, (rel, i)
    done, found, _ = run_scrub(m)
    assert found == [], found


@pytest.mark.timeout(60)
def test_a_file_whose_size_has_no_quorum_is_unrecoverable(tmpfs_dir, quorum):
    m = quorum(n=3)
    write_file(m.path("img"), b"z" * 100000)
    os.truncate(m.child_file(1, "img"), 5000)
    os.truncate(m.child_file(2, "img"), 200000)
    before = child_digests(m)
    done, found, _ = run_scrub(m, "scrub repair rate=0")
    assert [(d["path"], d["node-name"], d["kind"], d["repaired"])
            for d in found] == [("img", None, "no-quorum", False)]
    assert done["unrecoverable"] == 1 and done["repaired"] == 0
    assert child_digests(m) == before


@pytest.mark.timeout(90)
def test_a_block_without_quorum_is_unrecoverable_and_left_alone(tmpfs_dir,
                                                                 quorum):
    m = quorum(n=3, threshold=2)
    data = random.Random(2).randbytes(3 * MiB)
    write_file(m.path("img"), data)
    # Block 10: every child differs. Block 300: only child 2 is wrong.
    corrupt(m.child_file(0, "img"), 10 * BLOCK + 7, 100, 0xFF)
    corrupt(m.child_file(1, "img"), 10 * BLOCK + 7, 100, 0x0F)
    corrupt(m.child_file(2, "img"), 300 * BLOCK, BLOCK)
    split = [read_file(m.child_file(i, "img"))[10 * BLOCK:11 * BLOCK]
             for i in range(3)]
    done, found, doc = run_scrub(m, "scrub repair rate=0")
    assert findings_of(found) == sorted([
        ("img", None, 10 * BLOCK, BLOCK),
        ("img", m.children[2], 300 * BLOCK, BLOCK)], key=repr)
    lost = next(d for d in found if d["node-name"] is None)
    assert lost["kind"] == "no-quorum" and lost["repaired"] is False
    assert (done["mismatches"], done["repaired"], done["unrecoverable"]) == \
        (2, 1, 1)
    assert doc["scrub"]["unrecoverable"] == 1
    for i in range(3):
        got = read_file(m.child_file(i, "img"))
        assert got[10 * BLOCK:11 * BLOCK] == split[i], \
            "child %d's block without quorum was written" % i
        assert got[:10 * BLOCK] == data[:10 * BLOCK]
        assert got[11 * BLOCK:] == data[11 * BLOCK:], i


@pytest.mark.timeout(60)
def test_a_file_missing_on_a_voting_child_is_reported_and_copied_back(
        tmpfs_dir, quorum):
    m = quorum(n=3)
    data = random.Random(7).randbytes(100000)
    write_file(m.path("img"), data)
    os.chmod(m.path("img"), 0o640)
    os.unlink(m.child_file(0, "img"))
    done, found, _ = run_scrub(m, "scrub repair rate=0")
    assert [(d["kind"], d["node-name"], d["offset"], d["length"],
             d["repaired"]) for d in found] == \
        [("missing", m.children[0], 0, 0, True)]
    assert done["mismatches"] == 1 and done["repaired"] == 1
    assert read_file(m.child_file(0, "img")) == data
    assert os.stat(m.child_file(0, "img")).st_mode & 0o7777 == 0o640
    _, found, _ = run_scrub(m)
    assert found == []


@pytest.fixture
def faulty_dir(tmp_path, tmpfs_dir):
    """A faultfs mount over tmpfs, to be a child. Request it before
    `quorum`, so that it is unmounted after the daemon that uses it."""
    mnt = tmp_path / "faulty"
    mnt.mkdir()
    ffs = FaultFS(tmpfs_dir, mnt).start()
    yield ffs
    ffs.stop()


@pytest.mark.timeout(60)
def test_a_child_that_fails_reads_is_reported_and_the_scrub_goes_on(
        faulty_dir, tmp_path, quorum):
    others = [tmp_path / "c1", tmp_path / "c2"]
    for d in others:
        d.mkdir()
    m = quorum(children=[faulty_dir.mnt] + others)
    data = random.Random(3).randbytes(3 * MiB)
    write_file(m.path("img"), data)
    faulty_dir.set(rule("error=EIO", op="read", path="/img", offset=MiB,
                        length=BLOCK))
    done, found, doc = run_scrub(m)
    faulty_dir.clear()
    assert found == [] and done["result"] == "completed", found
    assert done["files"] == 1 and done["bytes"] == len(data)
    bad = m.wait_event("QUORUM_REPORT_BAD",
                       lambda d: d["node-name"] == faulty_dir.mnt)
    assert (bad["type"], bad["file"], bad["sector-num"]) == \
        ("read", "img", MiB // 512), bad
    assert bad["error"] == os.strerror(errno.EIO)
    assert doc["children"][0]["errors"]["read"] >= 1


# --- a live mount --------------------------------------------------------

def direct_writer(m, rel, size, name):
    def setup(w):
        w.state["fd"] = os.open(m.path(rel), os.O_WRONLY | os.O_DIRECT)
        w.state["buf"] = AlignedBuffer(64 * KiB)

    def step(w, seq):
        n = w.rng.choice((4, 16, 64)) * KiB
        off = w.rng.randrange(size // n) * n
        view = w.state["buf"].fill(w.rng.randbytes(n))
        try:
            assert os.pwrite(w.state["fd"], view, off) == n
        finally:
            view.release()

    def teardown(w):
        os.close(w.state["fd"])
        w.state["buf"].close()

    return Writer(name, step, setup, teardown)


def buffered_writer(m, rel, size, name, grow=False):
    def setup(w):
        w.state["fd"] = os.open(m.path(rel), os.O_WRONLY)

    def step(w, seq):
        n = w.rng.randrange(1, 70000)
        off = w.rng.randrange(size - n)
        if grow:
            # Appends, up to a bound: a slow run (sanitizers, a busy
            # machine) must not fill the scratch file system.
            end = os.fstat(w.state["fd"]).st_size
            off = end if end < 4 * size else off
        data = w.rng.randbytes(n)
        assert os.pwrite(w.state["fd"], data, off) == n

    def teardown(w):
        os.close(w.state["fd"])

    return Writer(name, step, setup, teardown)


@pytest.mark.timeout(170)
def test_scrub_under_sustained_random_writes_finds_nothing(backing, quorum):
    m = quorum(n=3)
    size = 24 * MiB
    for rel in ("a.img", "b.img", "log"):
        write_file(m.path(rel), random.Random(rel).randbytes(size))
    writers = [direct_writer(m, "a.img", size, "direct-a"),
               direct_writer(m, "b.img", size, "direct-b"),
               buffered_writer(m, "a.img", size, "buffered-a"),
               buffered_writer(m, "b.img", size, "buffered-b"),
               buffered_writer(m, "log", size, "append", grow=True)]
    for w in writers:
        w.start()
    try:
        wait_writes(writers, 10, 30, "the writers to get going")
        for command in ("scrub start rate=0", "scrub repair rate=0",
                        "scrub start rate=0"):
            at = [w.count for w in writers]
            done, found, _ = run_scrub(m, command, timeout=90)
            assert found == [] and done["mismatches"] == 0, found
            assert done["files"] == 3 and done["result"] == "completed"
            assert all(w.count > c for w, c in zip(writers, at)), \
                "a writer made no progress during %r" % command
    finally:
        for w in writers:
            w.stop()
    errors = [e for w in writers for e in w.errors]
    assert not errors, "\n".join(errors)
    for rel in ("a.img", "b.img", "log"):
        copies = {read_file(m.child_file(i, rel)) for i in range(3)}
        assert len(copies) == 1, "%s differs between children" % rel
    assert status(m)["totals"]["read-errors"] == 0


# --- stopping ------------------------------------------------------------

def start_slow_scrub(m):
    """A 64 MiB file scrubbed at 1 MiB/s: running for about a minute."""
    with open(m.path("slow.img"), "wb") as f:
        f.truncate(64 * MiB)
    control(m, "scrub start rate=1")
    return wait_status(m, lambda d: d["scrub"]["bytes-done"] > 0, 10,
                       "the slow scrub to read something")


@pytest.mark.timeout(60)
def test_scrub_stop_interrupts_a_rate_limited_scrub(tmpfs_dir, quorum):
    m = quorum(n=3)
    doc = start_slow_scrub(m)
    assert doc["scrub"]["state"] == "running" and doc["scrub"]["rate"] == 1
    # Progress arrives at most once a second.
    m.wait_event("SCRUB_PROGRESS")
    began = time.monotonic()
    control(m, "scrub stop")
    # The write returns once the job has ended, which is at once: the
    # job sleeps for its rate on a condition the stop signals.
    assert time.monotonic() - began < 2 * qfs.deadline_scale()
    doc = status(m)
    assert doc["scrub"]["state"] == "stopped", doc["scrub"]
    assert doc["scrub"]["bytes-done"] < 64 * MiB
    done = m.wait_event("SCRUB_COMPLETED", timeout=5)
    assert done["result"] == "stopped" and done["mismatches"] == 0
    progress = m.events_named("SCRUB_PROGRESS")
    for p in progress:
        for key in ("files-done", "files-total", "bytes-done",
                    "bytes-total", "mismatches"):
            assert isinstance(p[key], int), (key, p)
    # A new scrub may start at once, and finish.
    done, found, _ = run_scrub(m)
    assert done["result"] == "completed" and found == []


@pytest.mark.timeout(60)
def test_unmount_ends_a_running_scrub(tmpfs_dir, quorum):
    m = quorum(n=3)
    start_slow_scrub(m)
    m.unmount(timeout=10)  # the daemon must exit 0 within the deadline
    done = m.wait_event("SCRUB_COMPLETED", timeout=5)
    assert done["result"] == "stopped"


# --- commands and options -------------------------------------------------

@pytest.mark.timeout(60)
def test_bad_scrub_commands_are_refused_and_logged(tmpfs_dir, quorum):
    m = quorum(n=3)
    refusals = [
        ("scrub", errno.EINVAL, "usage"),
        ("scrub foo", errno.EINVAL, "usage"),
        ("scrub start rate=x", errno.EINVAL, "rate"),
        ("scrub start rate=-1", errno.EINVAL, "rate"),
        ("scrub repair rate=5 extra", errno.EINVAL, "usage"),
        ("scrub stop rate=5", errno.EINVAL, "usage"),
        ("scrub stop", errno.EINVAL, "no scrub is running"),
    ]
    for command, want, word in refusals:
        n = len(control_errors(m))
        assert control_errno(m, command) == want, command
        ev = qfs.wait_for(lambda: control_errors(m)[n:], 10,
                          "CONTROL_ERROR for %r" % command)[0]
        assert ev["command"] == command and word in ev["reason"], ev
        assert ev["error"] == os.strerror(want)
        assert status(m)["last-control-error"] == {
            "command": command, "reason": ev["reason"]}
    assert status(m)["scrub"]["state"] == "idle"
    start_slow_scrub(m)
    n = len(control_errors(m))
    assert control_errno(m, "scrub start") == errno.EBUSY
    assert control_errno(m, "scrub repair rate=0") == errno.EBUSY
    evs = qfs.wait_for(lambda: control_errors(m)[n:][1:] and
                       control_errors(m)[n:], 10, "two CONTROL_ERRORs")
    assert all("already running" in e["reason"] for e in evs), evs
    doc = status(m)["scrub"]
    assert doc["state"] == "running" and doc["repair"] is False
    control(m, "scrub stop")
    assert status(m)["scrub"]["state"] == "stopped"


@pytest.mark.timeout(60)
def test_scrub_rate_option_sets_the_default_rate(tmpfs_dir, quorum):
    m = quorum(n=3, opts=["scrub-rate=5"])
    s = status(m)["scrub"]
    assert (s["state"], s["rate"], s["mismatches"], s["findings"],
            s["started"], s["finished"]) == ("idle", 5, 0, [], None, None)
    assert all(c["scrub-mismatches"] == 0 for c in status(m)["children"])
    write_file(m.path("f"), b"data" * 1000)
    done, _, doc = run_scrub(m, "scrub start")
    assert doc["scrub"]["rate"] == 5 and done["files"] == 1
    done, _, doc = run_scrub(m, "scrub repair rate=0")
    assert doc["scrub"]["rate"] == 0 and doc["scrub"]["repair"] is True


@pytest.mark.timeout(30)
def test_the_default_scrub_rate_is_64_mib_per_second(tmpfs_dir, quorum):
    m = quorum(n=2)
    assert status(m)["scrub"]["rate"] == 64


@pytest.mark.timeout(30)
@pytest.mark.parametrize("value", ["x", "-1", "1048577", ""])
def test_a_bad_scrub_rate_option_is_refused(run_daemon, tmp_path, value):
    dirs = [tmp_path / n for n in ("a", "b", "mnt")]
    for d in dirs:
        d.mkdir()
    rc, err = run_daemon("-f", "-o", "scrub-rate=" + value, *dirs)
    assert rc > 0 and err.startswith("quorumfs: ") and "scrub-rate" in err, \
        (rc, err)
    assert not qfs.is_fuse_mounted(dirs[-1])
