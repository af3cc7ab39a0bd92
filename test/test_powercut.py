"""Power cuts of the children, together with kill -9 of the daemon
(README "Faults", "The record in each child").

Each child is a faultfs in power-cut mode (test/faultfs/README.md, "Power
cuts"): a cut drops, on that child alone, every change it had not made
durable, as a machine losing power does, which kill -9 of the daemon never
shows (the children's page caches survive it). Writers on the mount
fsync as a VM does; at a seeded moment the daemon is killed and one, two
or all three children lose power; they are booted again and the set is
mounted again. Every time:
  - every write an fsync through the mount acknowledged is there, and
    every file whose creation an fsync of its directory acknowledged
    (with the data its own fsync acknowledged), and no file whose
    removal one acknowledged;
  - the children are identical (names, kinds, data, metadata).
"""

import contextlib
import os
import random
import re
import signal
import threading
import time

import pytest

import qfs
from qfs import read_file, write_file
from control_util import (KiB, MiB, AlignedBuffer, assert_same_tree,
                          block, control, pwrite_full, wait_status)
from faultfs import FaultFS

CUTS = 20
SIZE = 4 * MiB
SLOT = 64 * KiB
FSYNC_EVERY = 4


def all_ok(doc):
    return all(c["state"] == "ok" and c["votes"] for c in doc["children"])


class DataWriter(threading.Thread):
    """Random SLOT writes to one file (O_DIRECT or buffered), fsync every
    FSYNC_EVERY. allowed[off]: the contents the slot may hold after a cut
    (what it held at the last acknowledged fsync, and every write since)."""

    def __init__(self, m, rel, direct, seed, allowed):
        super().__init__(name=rel, daemon=True)
        self.m, self.rel, self.direct = m, rel, direct
        self.rng = random.Random(seed)
        self.tag = "%s-%s" % (rel, seed)
        self.allowed = allowed
        self.fsyncs = self.count = 0
        self.error = None
        self.stop = threading.Event()

    def run(self):
        flags = os.O_WRONLY | (os.O_DIRECT if self.direct else 0)
        buf = AlignedBuffer(SLOT) if self.direct else None
        pending = {}
        try:
            fd = os.open(self.m.path(self.rel), flags)
            try:
                while not self.stop.is_set():
                    self.step(fd, buf, pending)
            finally:
                os.close(fd)
        except OSError as e:
            self.error = (time.monotonic(), e)
        finally:
            if buf:
                buf.close()

    def step(self, fd, buf, pending):
        off = self.rng.randrange(SIZE // SLOT) * SLOT
        data = block(self.tag, self.count, off, SLOT)
        self.allowed[off].append(data)
        pending[off] = data
        if buf:
            view = buf.fill(data)
            try:
                assert os.pwrite(fd, view, off) == SLOT
            finally:
                view.release()
        else:
            pwrite_full(fd, data, off)
        self.count += 1
        if self.count % FSYNC_EVERY == 0:
            os.fsync(fd)
            for p, d in pending.items():
                self.allowed[p] = [d]   # later writes are appended
            pending.clear()
            self.fsyncs += 1


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NameWriter(threading.Thread):
    """Creates files in names/ (fsync of the file, then of the
    directory) and removes older ones (then fsyncs the directory).
    durable: {name: data} whose creation was acknowledged; gone: names
    whose removal was; uncertain: the name of the call cut off."""

    def __init__(self, m, seed, durable, gone):
        super().__init__(name="names", daemon=True)
        self.m, self.rng = m, random.Random(seed)
        self.seed = seed
        self.dir = m.path("names")
        self.durable, self.gone = durable, gone
        self.uncertain = None
        self.count = 0
        self.error = None
        self.stop = threading.Event()

    def run(self):
        try:
            while not self.stop.is_set():
                self.step()
                self.count += 1
        except OSError as e:
            self.error = (time.monotonic(), e)

    def step(self):
        if self.durable and self.rng.random() < 0.3:
            name = self.rng.choice(sorted(self.durable))
            self.uncertain = name
            os.unlink(os.path.join(self.dir, name))
            fsync_dir(self.dir)
            del self.durable[name]
            self.gone.add(name)
        else:
            name = "n%s-%04d" % (self.seed, self.count)
            data = self.rng.randbytes(self.rng.randrange(1, 20000))
            self.uncertain = name
            fd = os.open(os.path.join(self.dir, name),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                pwrite_full(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(self.dir)
            self.durable[name] = data
        self.uncertain = None


def check_data(m, rel, allowed):
    got = read_file(m.path(rel))
    assert len(got) == SIZE, (rel, len(got))
    for off in range(0, SIZE, SLOT):
        have = got[off:off + SLOT]
        assert have in allowed[off], (
            "%s: the slot at %d holds none of the %d versions it may "
            "hold after the cut" % (rel, off, len(allowed[off])))
        allowed[off] = [have]


def check_names(m, w):
    present = set(os.listdir(m.path("names")))
    for name, data in w.durable.items():
        if name == w.uncertain:
            continue
        assert name in present, "%s: its creation was fsync'd" % name
        assert read_file(os.path.join(m.path("names"), name)) == data, name
    for name in w.gone - {w.uncertain}:
        assert name not in present, "%s: its removal was fsync'd" % name
    # What is there now is what the next round starts from.
    w.durable.clear()
    for name in present:
        w.durable[name] = read_file(os.path.join(m.path("names"), name))


def cut(m, disks, which, writers):
    """kill -9 of the daemon and a power cut of disks[i] for i in which,
    together; then the cut disks boot again."""
    killed_at = time.monotonic()
    os.kill(m.proc.pid, signal.SIGKILL)
    for i in which:
        disks[i].power_cut()
    m.kill()
    for w in writers:
        w.stop.set()
        w.join(30 * qfs.deadline_scale())
        assert not w.is_alive(), "%s hung after the cut" % w.name
        if w.error:
            t, e = w.error
            assert t >= killed_at, "%s failed before the cut: %r" % (
                w.name, e)
    for i in which:
        disks[i].power_on()


@pytest.mark.timeout(600)
def test_power_cuts_with_kill_9_lose_nothing_fsyncd(tmp_path, scratch_fs,
                                                    quorum):
    kinds = ["ext4", "tmpfs", "tmpfs"]
    disks = []
    for i, kind in enumerate(kinds):
        mnt = tmp_path / ("disk%d" % i)
        mnt.mkdir()
        disks.append(FaultFS(scratch_fs(kind), mnt, powercut=True,
                             control=tmp_path / ("rules%d" % i)).start())
    try:
        run_cuts(quorum(children=[qfs.Path(d.mnt) for d in disks],
                        threshold=2), disks)
    except BaseException:
        for d in disks:
            d.cleanup()
        raise
    undone = [0, 0]
    for d in disks:
        assert "cannot" not in d.stderr() and "stays" not in d.stderr(), \
            d.stderr()
        for files, names in re.findall(
                r"power cut: (\d+) files back to their last sync, (\d+) ",
                d.stderr()):
            undone[0] += int(files)
            undone[1] += int(names)
        d.stop()
    print("the cuts took %d files back to their last sync and undid %d "
          "changes of names" % tuple(undone))
    assert undone[0] > 0, "no cut lost anything: the test tests nothing"


@pytest.mark.timeout(120)
def test_what_the_settle_shows_outlives_the_next_cut(tmp_path, scratch_fs,
                                                     quorum):
    """A name created and never fsync'd, on the two children the first cut
    spares: the settle keeps it (two against one) and the mount shows it.
    A second cut of two children, with no call in between, must not take
    back what the mount showed: the settle made its outcome durable."""
    disks = []
    for i, kind in enumerate(["ext4", "tmpfs", "tmpfs"]):
        mnt = tmp_path / ("disk%d" % i)
        mnt.mkdir()
        disks.append(FaultFS(scratch_fs(kind), mnt, powercut=True,
                             control=tmp_path / ("rules%d" % i)).start())
    try:
        m = quorum(children=[qfs.Path(d.mnt) for d in disks], threshold=2)
        os.mkdir(m.path("names"))
        fsync_dir(m.path("names"))
        fsync_dir(m.path(""))
        data = b"shown after the first cut" * 100
        fd = os.open(m.path("names/late"), os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            pwrite_full(fd, data, 0)
            os.fsync(fd)        # its data, but never its name
        finally:
            os.close(fd)
        for which in ([0], [0, 1]):
            cut(m, disks, which, [])
            m.start()
            wait_status(m, all_ok, 60, "every child ok after %s" % which)
            assert os.listdir(m.path("names")) == ["late"], which
            assert read_file(m.path("names/late")) == data, which
        ref = assert_same_tree(disks[0].mnt, disks[1].mnt)
        assert ref == assert_same_tree(disks[0].mnt, disks[2].mnt)
        m.unmount()
    except BaseException:
        for d in disks:
            d.cleanup()
        raise
    for d in disks:
        d.stop()


@pytest.mark.timeout(120)
def test_a_resynced_child_keeps_its_names_through_a_cut(tmp_path, scratch_fs,
                                                        quorum):
    """A child added to a set is filled by a resync and then votes. A power
    cut of it right after must not leave it voting without the entries the
    resync made: each directory's names are durable before it is in step."""
    m = quorum(n=2, threshold=1)
    os.makedirs(m.path("a/b"))
    for rel in ["top.img", "a/mid.img", "a/b/deep.img"]:
        write_file(m.path(rel), rel.encode() * 1000)
    mnt = tmp_path / "late"
    mnt.mkdir()
    late = FaultFS(scratch_fs("tmpfs"), mnt, powercut=True,
                   control=tmp_path / "rules").start()
    try:
        control(m, "add %s name=late" % late.mnt)
        wait_status(m, all_ok, 60, "the added child to be in step")
        cut(m, [late], [0], [])
        ref = assert_same_tree(m.children[0], late.mnt)
        m.start()
        wait_status(m, all_ok, 60, "every child ok after the cut")
        assert assert_same_tree(m.children[0], late.mnt) == ref
        m.unmount()
    except BaseException:
        late.cleanup()
        raise
    late.stop()


@contextlib.contextmanager
def two_and_a_lossy_child(tmp_path, scratch_fs, name):
    """Two plain children and a third behind faultfs in power-cut mode:
    yields (c0, c1, faultfs); stops faultfs after, checked on success."""
    c0, c1 = scratch_fs("tmpfs"), scratch_fs("tmpfs")
    mnt = tmp_path / name
    mnt.mkdir()
    lossy = FaultFS(scratch_fs("tmpfs"), mnt, powercut=True,
                    control=tmp_path / ("%s.rules" % name)).start()
    try:
        yield c0, c1, lossy
    except BaseException:
        lossy.cleanup()
        raise
    lossy.stop()


def remount_and_compare(m, c0, c1, lossy):
    """After a cut of the lossy child: mount again, and all three hold
    the same tree."""
    m.start()
    wait_status(m, all_ok, 60, "every child ok after the cut")
    assert assert_same_tree(c0, lossy.mnt) == assert_same_tree(c0, c1)
    m.unmount()


@pytest.mark.timeout(120)
def test_a_child_that_copied_only_what_it_missed_keeps_it_through_a_cut(
        tmp_path, scratch_fs, quorum):
    """A child that missed one mount copies back only the regions written
    meanwhile, then votes. A power cut of it right after must not take
    those regions back: the copy is on its disk before it is in step."""
    old, new = b"o" * MiB, b"n" * (64 * KiB)
    with two_and_a_lossy_child(tmp_path, scratch_fs, "away") as (c0, c1,
                                                                  away):
        m = quorum(children=[c0, c1, away.mnt], threshold=2)
        fd = os.open(m.path("disk.img"), os.O_CREAT | os.O_WRONLY, 0o644)
        try:   # data in two 64 MiB regions of the intent log
            pwrite_full(fd, old, 0)
            pwrite_full(fd, old, 64 * MiB)
            os.fsync(fd)
        finally:
            os.close(fd)
        m.unmount()
        away.stop()     # unreachable for one mount
        parked = tmp_path / "parked"
        os.rename(away.mnt, parked)
        m = quorum(children=[c0, c1], threshold=2)
        fd = os.open(m.path("disk.img"), os.O_WRONLY)
        try:
            pwrite_full(fd, new, 256 * KiB)
            os.fsync(fd)
        finally:
            os.close(fd)
        m.unmount()
        os.rename(parked, away.mnt)
        away.start()
        m = quorum(children=[c0, c1, away.mnt], threshold=2)
        done = m.wait_event("RESYNC_COMPLETED", timeout=60)
        assert done["bytes"] == MiB, done    # the one region written
        wait_status(m, all_ok, 60, "the returning child to be in step")
        cut(m, [away], [0], [])
        assert read_file(os.path.join(away.mnt, "disk.img"))[
            256 * KiB:320 * KiB] == new
        remount_and_compare(m, c0, c1, away)


@pytest.mark.timeout(120)
def test_a_scrubs_repair_of_a_name_outlives_a_cut_of_the_child(
        tmp_path, scratch_fs, quorum):
    """A scrub puts back a file one child lost. A power cut of that child
    right after must not lose it again: the repair is on its disk."""
    data = b"kept by two" * 1000
    with two_and_a_lossy_child(tmp_path, scratch_fs, "lossy") as (c0, c1,
                                                                   lossy):
        m = quorum(children=[c0, c1, lossy.mnt], threshold=2)
        write_file(m.path("vm.img"), data)
        fd = os.open(m.path("vm.img"), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        fsync_dir(m.path(""))
        os.unlink(lossy.backing_path("vm.img"))     # lost, durably
        control(m, "scrub repair rate=0")
        m.wait_event("SCRUB_COMPLETED", timeout=60)
        assert read_file(os.path.join(lossy.mnt, "vm.img")) == data
        cut(m, [lossy], [0], [])
        assert read_file(os.path.join(lossy.mnt, "vm.img")) == data
        remount_and_compare(m, c0, c1, lossy)


def run_cuts(m, disks):
    files = {"direct.img": True, "buffered.img": False}
    allowed = {}
    for rel in files:
        init = b"".join(block("init", 0, off, SLOT)
                        for off in range(0, SIZE, SLOT))
        write_file(m.path(rel), init)
        allowed[rel] = {off: [init[off:off + SLOT]]
                        for off in range(0, SIZE, SLOT)}
    os.mkdir(m.path("names"))
    for path in [m.path(rel) for rel in files]:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    fsync_dir(m.path("names"))
    fsync_dir(m.path(""))
    durable, gone = {}, set()
    rng = random.Random(5021)
    subsets = [[0], [1], [2], [0, 1], [1, 2], [0, 2], [0, 1, 2]]
    seen = []
    for rnd in range(CUTS):
        writers = [DataWriter(m, rel, direct, "%d" % rnd, allowed[rel])
                   for rel, direct in files.items()]
        names = NameWriter(m, rnd, durable, gone)
        target = rng.randrange(1, 6)
        for w in writers + [names]:
            w.start()
        qfs.wait_for(lambda: all(w.fsyncs >= target or w.error
                                 for w in writers),
                     60 * qfs.deadline_scale(),
                     "%d fsyncs by each writer in round %d" % (target, rnd),
                     interval=0.002)
        which = subsets[rnd % len(subsets)] if rnd < len(subsets) else \
            rng.choice(subsets)
        cut(m, disks, which, writers + [names])
        seen.append((which, sum(w.count for w in writers), names.count))

        m.start()
        wait_status(m, all_ok, 120, "every child to be ok after cut %d" % rnd)
        try:
            for rel in files:
                check_data(m, rel, allowed[rel])
            check_names(m, names)
            ref = assert_same_tree(disks[0].mnt, disks[1].mnt)
            assert ref == assert_same_tree(disks[0].mnt, disks[2].mnt)
        except AssertionError:
            print("round %d cut children %s; rounds so far (children cut, "
                  "data writes, name calls): %s" % (rnd, which, seen))
            print("events: %s" % [(e["event"], e.get("data"))
                                  for e in m.events()
                                  if e["event"] != "QUORUM_REPORT_BAD"])
            raise
    assert not m.events_named("QUORUM_FAILURE")
    m.unmount()
    print("\n%d cuts (children cut, data writes, name calls): %s" % (
        CUTS, seen))
