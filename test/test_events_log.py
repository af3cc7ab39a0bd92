"""The JSON event log through a real mount (README "Event log").

Every line is one object in QMP's envelope. MOUNTED opens a mount's log
and UNMOUNTED closes it. QUORUM_REPORT_BAD and QUORUM_FAILURE count
512-byte sectors of the request as it reached the daemon: the mount is in
direct-I/O mode, so a read(2) on a file opened without O_DIRECT arrives
with the caller's offset and size. SIGHUP reopens the log by its path
(logrotate). Both QUORUM events are throttled like QEMU's monitor: one
per second per child for REPORT_BAD and one per second overall for
FAILURE, the last event of a window being written when it ends, and the
throttle never slows the I/O that raises the events.
"""

import errno
import json
import os
import signal
import threading
import time

import pytest

import qfs
from qfs import read_file, write_file

KiB = 1024
MiB = 1024 * KiB
SECTOR = 512
WINDOW = 1.0  # QEMU's throttle rate for both QUORUM events, in seconds


# --- helpers -----------------------------------------------------------

def pattern(size, seed=1):
    out = bytearray()
    block = 0
    while len(out) < size:
        out += (b"%08d:%08d|" % (seed, block)) * 16
        block += 1
    return bytes(out[:size])


def invert(path, offset=0, count=None):
    """Invert bytes of a child's copy in place (size unchanged)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read() if count is None else f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))


def sectors(off, length):
    first = off // SECTOR
    return first, -(-(off + length) // SECTOR) - first


def real(path):
    return os.path.realpath(str(path))


class Arrivals:
    """Watches the log from a thread and notes, for every line that
    matches, when it first appeared in the file (time.monotonic()). The
    timestamp inside an event is when it was raised; a throttled event is
    written later, and only arrival shows that."""

    def __init__(self, m, match):
        self.m = m
        self.match = match
        self.seen = []  # (arrival, data), in file order
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self):
        now = time.monotonic()
        mine = [e["data"] for e in self.m.events() if self.match(e)]
        for data in mine[len(self.seen):]:
            self.seen.append((now, data))

    def _run(self):
        while not self.stop.is_set():
            self._poll()
            self.stop.wait(0.005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self._poll()


def report_bad_for(child):
    return lambda e: (e["event"] == "QUORUM_REPORT_BAD" and
                      e["data"].get("node-name") == child)


# --- MOUNTED, UNMOUNTED, the envelope ----------------------------------

def test_mounted_is_the_first_line_with_mountpoint_children_and_threshold(
        quorum):
    m = quorum()
    m.wait_event("MOUNTED")
    first = m.events()[0]
    assert first["event"] == "MOUNTED"
    assert first["data"] == {
        "mountpoint": real(m.mnt),
        "children": [real(c) for c in m.children],
        "threshold": 2,  # the default: a majority of three
    }


def test_unmounted_is_logged_at_a_clean_unmount_with_the_same_data(quorum):
    m = quorum(threshold=3)
    write_file(m.path("f"), b"data")
    m.unmount()
    events = m.events()
    assert [e["event"] for e in events] == ["MOUNTED", "UNMOUNTED"]
    assert events[1]["data"] == {"mountpoint": real(m.mnt),
                                 "children": [real(c) for c in m.children],
                                 "threshold": 3}


def test_unmounted_is_the_last_line_even_when_a_report_was_pending(quorum):
    # Two reports for one child within a window: the second is held back.
    # Unmounting must write it, and before UNMOUNTED: a reader of the log
    # takes UNMOUNTED as the end of that mount's story.
    m = quorum(threshold=2)
    write_file(m.path("f"), pattern(64 * KiB))
    invert(m.child_file(1, "f"))
    fd = os.open(m.path("f"), os.O_RDONLY)
    try:
        os.pread(fd, 4096, 0)
        os.pread(fd, 4096, 8192)
    finally:
        os.close(fd)
    m.unmount()
    events = m.events()
    reports = [e["data"] for e in events if e["event"] == "QUORUM_REPORT_BAD"]
    assert reports and reports[-1]["sector-num"] == 16, \
        "the pending report was lost: %r" % reports
    assert events[-1]["event"] == "UNMOUNTED", \
        "events after UNMOUNTED: %s" % [e["event"] for e in events]


def test_every_line_is_one_json_object_in_the_qmp_envelope(quorum):
    start = time.time()
    m = quorum(threshold=2)
    write_file(m.path("f"), pattern(64 * KiB))
    invert(m.child_file(2, "f"), 0, 4096)
    assert read_file(m.path("f")) == pattern(64 * KiB)
    m.wait_event("QUORUM_REPORT_BAD")
    m.unmount()
    end = time.time()
    with open(m.log, "rb") as f:
        raw = f.read()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    names = []
    for line in lines:
        ev = json.loads(line)
        assert isinstance(ev, dict)
        assert set(ev) == {"timestamp", "event", "data"}, ev
        ts = ev["timestamp"]
        assert set(ts) == {"seconds", "microseconds"}, ts
        for k in ("seconds", "microseconds"):
            assert type(ts[k]) is int, ts
        assert 0 <= ts["microseconds"] < 1000000, ts
        t = ts["seconds"] + ts["microseconds"] / 1e6
        assert start - 1 <= t <= end + 1, (start, t, end)
        assert isinstance(ev["event"], str)
        assert isinstance(ev["data"], dict)
        names.append(ev["event"])
    assert names[0] == "MOUNTED" and "UNMOUNTED" in names
    assert "QUORUM_REPORT_BAD" in names
    bad = [json.loads(x)["data"] for x in lines
           if json.loads(x)["event"] == "QUORUM_REPORT_BAD"][0]
    assert set(bad) == {"type", "node-name", "sector-num", "sectors-count",
                        "file"}, bad
    for k in ("sector-num", "sectors-count"):
        assert type(bad[k]) is int, bad


# --- sector arithmetic -------------------------------------------------

@pytest.mark.parametrize("off,length", [
    (100000, 50000),           # the worked example: sectors 195..292
    (511, 2),                  # two bytes straddling a sector boundary
    (4096, 4096),              # aligned
    (5 * 1024 * MiB + 1000, 3000),  # past 4 GiB: 64-bit byte offsets
])
def test_a_corrupted_read_reports_the_sectors_of_the_request(quorum, off,
                                                             length):
    m = quorum(threshold=2)
    data = pattern(256 * KiB)
    base = off - off % (128 * KiB)
    fd = os.open(m.path("f"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, data, base) == len(data)
        invert(m.child_file(1, "f"), off, length)
        got = os.pread(fd, length, off)
    finally:
        os.close(fd)
    assert got == data[off - base:off - base + length]
    bad = m.wait_event("QUORUM_REPORT_BAD",
                       lambda d: d.get("node-name") == m.children[1])
    assert (bad["sector-num"], bad["sectors-count"]) == sectors(off, length)
    assert bad["type"] == "read" and "error" not in bad
    assert bad["file"] == "f"


def test_the_worked_example_is_sector_195_count_98(quorum):
    m = quorum(threshold=2)
    write_file(m.path("vm1.img"), pattern(256 * KiB))
    invert(m.child_file(0, "vm1.img"), 120000, 10)
    fd = os.open(m.path("vm1.img"), os.O_RDONLY)
    try:
        assert os.pread(fd, 50000, 100000) == \
            pattern(256 * KiB)[100000:150000]
    finally:
        os.close(fd)
    bad = m.wait_event("QUORUM_REPORT_BAD")
    assert bad == {"type": "read", "node-name": real(m.children[0]),
                   "sector-num": 195, "sectors-count": 98,
                   "file": "vm1.img"}


# --- SIGHUP ------------------------------------------------------------

def test_sighup_reopens_the_log_at_its_path_and_the_daemon_stays_up(quorum):
    m = quorum(threshold=2)
    data = pattern(64 * KiB)
    write_file(m.path("f"), data)
    m.wait_event("MOUNTED")
    rotated = []
    for gen, child in enumerate((1, 2)):
        old = "%s.%d" % (m.log, gen + 1)
        os.rename(m.log, old)
        rotated.append(old)
        m.proc.send_signal(signal.SIGHUP)
        qfs.wait_for(lambda: os.path.exists(m.log),
                     10 * qfs.deadline_scale(),
                     "the daemon to reopen %s" % m.log)
        assert m.running(), "SIGHUP stopped the daemon"
        invert(m.child_file(child, "f"), 0, 4096)
        assert read_file(m.path("f")) == data
        m.wait_event("QUORUM_REPORT_BAD",
                     lambda d, c=m.children[child]: d.get("node-name") == c)
        invert(m.child_file(child, "f"), 0, 4096)  # heal it again
    assert m.running() and qfs.is_fuse_mounted(m.mnt)

    def names(path):
        with open(path) as f:
            return [json.loads(x) for x in f]
    first, second = names(rotated[0]), names(rotated[1])
    assert [e["event"] for e in first] == ["MOUNTED"]
    assert [(e["event"], e["data"]["node-name"]) for e in second] == \
        [("QUORUM_REPORT_BAD", m.children[1])]
    current = m.events()
    assert [(e["event"], e["data"]["node-name"]) for e in current] == \
        [("QUORUM_REPORT_BAD", m.children[2])]


# --- throttling --------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_flood_of_reports_for_one_child_is_coalesced_keeping_the_last(
        quorum):
    m = quorum(threshold=2)
    reads = 200
    data = pattern(reads * 4096)
    write_file(m.path("f"), data)
    invert(m.child_file(1, "f"))
    fd = os.open(m.path("f"), os.O_RDONLY)
    try:
        with Arrivals(m, report_bad_for(m.children[1])) as seen:
            t0 = time.monotonic()
            for i in range(reads):
                assert os.pread(fd, 4096, i * 4096) == \
                    data[i * 4096:(i + 1) * 4096]
            elapsed = time.monotonic() - t0
            last_sector = (reads - 1) * 8
            qfs.wait_for(lambda: any(d["sector-num"] == last_sector
                                     for _, d in seen.seen),
                         10 * qfs.deadline_scale(),
                         "the last report of the window")
    finally:
        os.close(fd)
    # The events cost the reads nothing: 200 voted 4 KiB reads are quick.
    assert elapsed < 1.0 * qfs.deadline_scale(), \
        "200 reads took %.2fs" % elapsed
    arrivals = [(t - t0, d["sector-num"]) for t, d in seen.seen]
    early = [a for a in arrivals if a[0] < WINDOW * 0.9]
    assert 1 <= len(early) <= 2, arrivals
    assert arrivals[0][1] == 0, "the first report is the first read's"
    last_at, last = arrivals[-1]
    assert last == last_sector, "the window kept the last report"
    assert WINDOW * 0.9 <= last_at <= WINDOW * 2.5, arrivals
    # Nothing more comes once the flood is over; unmount writes whatever
    # is pending.
    m.unmount()
    assert len([e for e in m.events()
                if report_bad_for(m.children[1])(e)]) <= 3


@pytest.mark.timeout(60)
def test_quorum_failures_are_throttled_across_files_and_children(quorum):
    m = quorum(threshold=3)
    data = pattern(64 * KiB)
    write_file(m.path("a"), data)
    write_file(m.path("b"), data)
    invert(m.child_file(0, "a"))
    invert(m.child_file(2, "b"))
    fds = [os.open(m.path(n), os.O_RDONLY) for n in ("a", "b")]
    try:
        with Arrivals(m, lambda e: e["event"] == "QUORUM_FAILURE") as seen:
            t0 = time.monotonic()
            for i in range(50):
                for fd in fds:
                    with pytest.raises(OSError) as e:
                        os.pread(fd, 4096, (i % 16) * 4096)
                    assert e.value.errno == errno.EIO
            elapsed = time.monotonic() - t0
            qfs.wait_for(lambda: any(d["reference"] == "b" and
                                     d["sector-num"] == (49 % 16) * 8 and
                                     t - t0 >= WINDOW * 0.9
                                     for t, d in seen.seen),
                         10 * qfs.deadline_scale(),
                         "the last failure of the window")
    finally:
        for fd in fds:
            os.close(fd)
    assert elapsed < 1.0 * qfs.deadline_scale(), \
        "100 failing reads took %.2fs" % elapsed
    arrivals = [(t - t0, d["reference"]) for t, d in seen.seen]
    early = [a for a in arrivals if a[0] < WINDOW * 0.9]
    # One key for every file: a and b together got at most two lines.
    assert 1 <= len(early) <= 2, arrivals
    assert arrivals[0][1] == "a"
    m.unmount()
    assert len(m.events_named("QUORUM_FAILURE")) <= 3
