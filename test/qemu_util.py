"""Helpers for the tests that hold the mount against QEMU's quorum driver
and against in-memory models: run qemu-io on a quorum of raw images, do
O_DIRECT I/O from Python, model QEMU's vote (block/quorum.c) and the
daemon's per-block rescue, and compare a throttled event log with the
events a sequence of requests should have produced.

The vote model follows QEMU's quorum_vote() (README "How requests
are decided") step by step, so a
differential test can check it against qemu-io first and then use it to
predict what qemu-io cannot show: the rescued bytes and the events.
"""

import errno
import json
import mmap
import os
import re
import subprocess
import time

import qfs

SECTOR = 512
VOTE_BLOCK = 4096
PAGE = mmap.PAGESIZE


# --- qemu-io -------------------------------------------------------------

def quorum_spec(files, threshold, read_pattern=None, blkverify=False,
                rewrite_corrupted=False):
    """A "json:" filename for qemu-io / qemu-img: a quorum node over raw
    images, children in the order given."""
    node = {"driver": "quorum", "vote-threshold": threshold,
            "children": [{"driver": "raw",
                          "file": {"driver": "file", "filename": str(f)}}
                         for f in files]}
    if read_pattern is not None:
        node["read-pattern"] = read_pattern
    if blkverify:
        node["blkverify"] = True
    if rewrite_corrupted:
        node["rewrite-corrupted"] = True
    return "json:" + json.dumps(node, separators=(",", ":"))


_HEX_LINE = re.compile(r"^([0-9a-f]{8}):  ((?:[0-9a-f]{2} ){1,16})")
_READ_DONE = re.compile(r"^read (\d+)/(\d+) bytes at offset (\d+)$")
_READ_FAILED = re.compile(r"^read failed: (.*)$")


class QemuRun:
    """The outcome of one qemu-io invocation: returncode, stdout, stderr,
    and results, one per read command: bytes, or the error text."""

    def __init__(self, proc, results):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.results = results


def qemu_io_reads(spec, reads, timeout=60, cache="none", writable=False):
    """Read every (offset, length) of reads through qemu-io, read-only
    unless writable (rewrite-corrupted writes), in one invocation with
    one -c per read (cache=none is O_DIRECT). Returns a QemuRun; a read
    that printed no result (qemu-io stopped) is absent from .results."""
    cmd = ["qemu-io"] + ([] if writable else ["-r"]) + ["-t", cache]
    for off, length in reads:
        cmd += ["-c", "read -v %d %d" % (off, length)]
    cmd.append(spec)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)
    return QemuRun(proc, parse_read_output(proc.stdout))


def parse_read_output(text):
    """Parse the stdout of qemu-io "read -v" commands into a list of
    results: bytes for a read that succeeded, the error text otherwise."""
    results = []
    chunks = []
    for line in text.splitlines():
        m = _HEX_LINE.match(line)
        if m:
            chunks.append(bytes.fromhex(m.group(2)))
            continue
        m = _READ_DONE.match(line)
        if m:
            data = b"".join(chunks)
            chunks = []
            assert len(data) == int(m.group(1)), \
                "qemu-io hexdump has %d bytes, says %s" % (len(data), line)
            results.append(data)
            continue
        m = _READ_FAILED.match(line)
        if m:
            chunks = []
            results.append(m.group(1))
    return results


# --- O_DIRECT from Python -----------------------------------------------

def aligned_buffer(length):
    """A page-aligned writable buffer of at least length bytes (mmap'd
    anonymous memory), as O_DIRECT needs."""
    return mmap.mmap(-1, max(PAGE, (length + PAGE - 1) // PAGE * PAGE))


def direct_pread(fd, offset, length):
    """pread through an aligned buffer; returns the bytes read."""
    buf = aligned_buffer(length)
    try:
        view = memoryview(buf)[:length]
        try:
            n = os.preadv(fd, [view], offset)
            return bytes(view[:n])
        finally:
            view.release()
    finally:
        buf.close()


def direct_pwrite(fd, offset, data):
    """pwrite through an aligned buffer; returns the count written."""
    buf = aligned_buffer(len(data))
    try:
        buf[:len(data)] = data
        view = memoryview(buf)[:len(data)]
        try:
            return os.pwritev(fd, [view], offset)
        finally:
            view.release()
    finally:
        buf.close()


def read_result(fd, offset, length, direct=True):
    """bytes, or the errno of the failed read (an int)."""
    try:
        if direct:
            return direct_pread(fd, offset, length)
        return os.pread(fd, length, offset)
    except OSError as e:
        return e.errno


# --- the vote model ------------------------------------------------------

def sectors(offset, length):
    """QEMU's (sector-num, sectors-count) of a byte range."""
    first = offset // SECTOR
    return first, -(-(offset + length) // SECTOR) - first


class Vote:
    """The outcome of one vote: data (bytes) or None when no version
    reached threshold; winner (index); losers (indexes, ascending)."""

    def __init__(self, data, winner, losers, unanimous):
        self.data = data
        self.winner = winner
        self.losers = losers
        self.unanimous = unanimous


def vote(slices, threshold):
    """QEMU's quorum_vote over successful answers: slices is a list of
    (child index, bytes) in child order. Fast path when all are equal;
    else versions by content, the largest wins and ties go to the version
    first seen at the highest index; under threshold no data."""
    first = slices[0][1]
    if all(d == first for _, d in slices):
        ok = len(slices) >= threshold
        return Vote(first if ok else None, slices[0][0], [], True)
    versions = []  # [bytes, first index, members], in first-seen order
    for i, d in slices:
        for v in versions:
            if v[0] == d:
                v[2].append(i)
                break
        else:
            versions.append([d, i, [i]])
    best = versions[0]
    for v in versions[1:]:
        if len(v[2]) >= len(best[2]):
            best = v
    if len(best[2]) < threshold:
        return Vote(None, None, [], False)
    losers = sorted(i for v in versions if v is not best for i in v[2])
    return Vote(best[0], best[1], losers, False)


def error_vote(errors):
    """QEMU's quorum_vote_error: errors is a list of (child index, errno)
    in child order; the most common errno, ties to the one first seen at
    the highest index."""
    versions = []  # [errno, count]
    for _, e in errors:
        for v in versions:
            if v[0] == e:
                v[1] += 1
                break
        else:
            versions.append([e, 1])
    best = versions[0]
    for v in versions[1:]:
        if v[1] >= best[1]:
            best = v
    return best[0]


class BlockVote:
    """The daemon's per-block rescue: data (bytes) or None; bad maps a
    child index to the (start, end) byte range, relative to the request,
    from its first to the end of its last losing block."""

    def __init__(self, data, bad):
        self.data = data
        self.bad = bad


def block_vote(slices, threshold, block=VOTE_BLOCK):
    """Vote each block of the request on its own, as the daemon does when
    the whole request found no quorum. The answer stops after the first
    winning block shorter than a block (the winners' end of file)."""
    longest = max(len(d) for _, d in slices)
    out = []
    bad = {}
    start = 0
    while start < longest:
        part = [(i, d[start:start + block]) for i, d in slices]
        v = vote(part, threshold)
        if v.data is None:
            return BlockVote(None, {})
        out.append(v.data)
        for i, d in part:
            if i in v.losers:
                end = start + max(len(d), len(v.data))
                bad[i] = (bad[i][0] if i in bad else start, end)
        if len(v.data) < block:
            break
        start += block
    return BlockVote(b"".join(out), bad)


class Expected:
    """What the mount should answer one read with, and the events it
    should log for it: data (bytes) or errno; how ("whole", "blocks",
    "failed"); events, a list of (key, fields) in emission order."""

    def __init__(self, data, how, events):
        self.data = data
        self.how = how
        self.events = events


def expect_read(answers, threshold, offset, length, file, names):
    """The daemon's answer to a read of [offset, offset + length) whose
    children answered answers[i] (bytes, or an errno int); names[i] is the
    node-name of child i. Events follow QEMU: one REPORT_BAD per failing
    child (with error), per loser (without), QUORUM_FAILURE when no quorum;
    the rescue reports each child's losing byte range instead."""
    events = []
    whole = sectors(offset, length)
    for i, a in enumerate(answers):
        if isinstance(a, int):
            events.append((names[i], ("read",) + whole +
                           (os.strerror(a), file)))
    slices = [(i, a) for i, a in enumerate(answers) if not isinstance(a, int)]
    if len(slices) < threshold:
        failed = [(i, a) for i, a in enumerate(answers) if isinstance(a, int)]
        events.append(("FAILURE", (file,) + whole))
        return Expected(error_vote(failed), "failed", events)
    v = vote(slices, threshold)
    if v.data is not None:
        for i in v.losers:
            events.append((names[i], ("read",) + whole + (None, file)))
        return Expected(v.data, "whole", events)
    b = block_vote(slices, threshold)
    if b.data is None:
        events.append(("FAILURE", (file,) + whole))
        return Expected(errno.EIO, "failed", events)
    for i in sorted(b.bad):
        start, end = b.bad[i]
        events.append((names[i], ("read",) + sectors(offset + start,
                                                     end - start) +
                       (None, file)))
    return Expected(b.data, "blocks", events)


# --- events under QEMU's throttle ----------------------------------------

def event_key_fields(ev):
    """(key, fields) of a QUORUM_* event as expect_read() writes them, or
    None for any other event."""
    d = ev.get("data", {})
    if ev["event"] == "QUORUM_REPORT_BAD":
        return d["node-name"], (d["type"], d["sector-num"],
                                d["sectors-count"], d.get("error"),
                                d.get("file"))
    if ev["event"] == "QUORUM_FAILURE":
        return "FAILURE", (d["reference"], d["sector-num"],
                           d["sectors-count"])
    return None


def throttled_mismatches(logged, expected):
    """Compare the QUORUM_* events in a complete log (every throttle
    window closed, e.g. after unmount) with the events the requests
    should have emitted, in order. QEMU's throttle (one event per second
    per key, the last of a window kept) may drop events but never adds,
    reorders or loses the first or the last of a key; so per key the log
    must be a subsequence of the expectation that starts with its first
    and ends with its last element. Returns a list of complaints."""
    got = {}
    for ev in logged:
        kf = event_key_fields(ev)
        if kf:
            got.setdefault(kf[0], []).append(kf[1])
    want = {}
    for key, fields in expected:
        want.setdefault(key, []).append(fields)
    problems = []
    for key in sorted(set(got) | set(want)):
        g, w = got.get(key, []), want.get(key, [])
        if not w:
            problems.append("%s: unexpected events %s" % (key, g[:3]))
            continue
        if not g:
            problems.append("%s: no events, expected e.g. %s" % (key, w[0]))
            continue
        if g[0] != w[0]:
            problems.append("%s: first event %s, expected %s" % (
                key, g[0], w[0]))
        if g[-1] != w[-1]:
            problems.append("%s: last event %s, expected %s" % (
                key, g[-1], w[-1]))
        it = iter(w)
        if not all(any(x == y for y in it) for x in g):
            problems.append("%s: events %s are not a subsequence of the "
                            "expected %s" % (key, g, w))
    return problems


# --- a file system on a loop device with large logical sectors -----------

class SectorLoopFs:
    """ext4 on a loop device whose logical sector size is `sector`: an
    O_DIRECT request aligned to 512 bytes but not to `sector` fails there
    with EINVAL, while children on ordinary loop devices serve it. That
    gives one child a read error without touching the daemon."""

    def __init__(self, workdir, sector=4096, size=64 << 20):
        self.workdir = workdir
        self.image = os.path.join(workdir, "sector%d.img" % sector)
        self.root = os.path.join(workdir, "sector%d-root" % sector)
        self.device = None
        os.makedirs(self.root)
        with open(self.image, "wb") as f:
            f.truncate(size)
        self.device = subprocess.run(
            ["losetup", "--find", "--show", "--sector-size", str(sector),
             self.image], check=True, stdout=subprocess.PIPE,
            text=True).stdout.strip()
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", str(max(sector, 1024)),
                        self.device], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["mount", self.device, self.root], check=True)
        self.dir = os.path.join(self.root, "scratch")
        os.mkdir(self.dir)

    def close(self):
        """Unmount and detach; returns an error string or None."""
        err = None
        if os.path.ismount(self.root):
            res = subprocess.run(["umount", self.root],
                                 stderr=subprocess.PIPE, text=True)
            if res.returncode != 0:
                err = "umount %s: %s" % (self.root, res.stderr.strip())
                subprocess.run(["umount", "-l", self.root],
                               stderr=subprocess.DEVNULL)
        if self.device:
            subprocess.run(["losetup", "-d", self.device],
                           stderr=subprocess.DEVNULL)
            self.device = None
        return err


# --- waiting out the throttle ---------------------------------------------

def _event_time(ev):
    ts = ev["timestamp"]
    return ts["seconds"] + ts["microseconds"] / 1e6


def wait_events_quiet(m, window=1.0, timeout=10):
    """Wait until every QUORUM_* throttle window of mount m has closed,
    so that the next event of each key is written at once. Returns how
    many events the log holds at that point.

    An event carries the time it was emitted, not written: one held back
    is written when its window ends, at most `window` after it was
    emitted, and that re-arms the window once more. So every window is
    closed 2 * window after the newest timestamp in the log."""
    def quiet():
        evs = m.events()
        times = [_event_time(e) for e in evs
                 if e["event"].startswith("QUORUM_")]
        if times and time.time() <= max(times) + 2 * window + 0.1:
            return None
        return len(evs) + 1  # true even for an empty log

    return qfs.wait_for(quiet, timeout, "the event throttle to go quiet") - 1


def first_report_per_child(events):
    """node-name -> data of its first QUORUM_REPORT_BAD in events."""
    first = {}
    for ev in events:
        if ev["event"] == "QUORUM_REPORT_BAD":
            first.setdefault(ev["data"]["node-name"], ev["data"])
    return first
