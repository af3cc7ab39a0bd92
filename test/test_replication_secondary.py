"""The secondary side of replication (README "Replication"): a daemon
with two mounts, the view the secondary VM runs on and the inbound mount
the primary's changes arrive through, over the secondary's base children
and two layer directories; QEMU's stage machine and texts; checkpoint
and failover. The pair is set up as the README's walk-through does:

    quorumfs -o replication=secondary,active=A,hidden=H,inbound=I b1 V
    quorumfs -o threshold=1,read-pattern=fifo p1 P
    add I mode=primary name=sec (on P)

Bytes are checked after every step against what QEMU's replication
driver gives for the same steps on one image (its observed run; the
differential test drives QEMU itself).
"""

import errno
import mmap
import os
import random
import subprocess
import time

import pytest

import qfs
from qfs import read_file, write_file
from control_util import control, refused, status, wait_child_state
from test_docs import documented, keys_of, readme_section
from replication_model import ReplicationModel
from test_replication_primary import IO_ERROR, NOT_RUNNING, RUNNING_OR_DONE

KiB = 1024
MiB = 1024 * KiB
CLUSTER = 64 * KiB
SIZE = MiB
FILL = b"\xaa"

JOB_CANCELLED = "Backup job was cancelled unexpectedly"


def repl(m):
    return status(m)["replication"]


class Pair:
    """A secondary (view V over base b1, inbound I) and a primary P over
    p1 whose replication child is I."""

    def __init__(self, quorum, root, primary=True, b1=None, opts=()):
        self.root = root
        root.mkdir()
        for d in ("p1", "act", "hid", "inb", "view", "pm"):
            (root / d).mkdir()
        self.b1 = b1 or root / "b1"
        self.b1.mkdir(exist_ok=True)
        base = FILL * SIZE
        write_file(root / "p1" / "disk.img", base)
        write_file(self.b1 / "disk.img", base)
        self.inb = root / "inb"
        self.s = quorum(children=[self.b1], mountpoint=root / "view",
                        opts=["replication=secondary",
                              "active=%s" % (root / "act"),
                              "hidden=%s" % (root / "hid"),
                              "inbound=%s" % self.inb] + list(opts))
        qfs.wait_for(lambda: qfs.is_fuse_mounted(str(self.inb)),
                     10 * qfs.deadline_scale(), "the inbound mount")
        self.p = None
        if primary:
            self.p = quorum(children=[root / "p1"], mountpoint=root / "pm",
                            opts=["read-pattern=fifo"], threshold=1)
            control(self.p, "add %s mode=primary name=sec" % self.inb)
            wait_child_state(self.p, "sec", "ok")

    def start(self):
        control(self.s, "replication start secondary")
        control(self.p, "replication start primary")

    def checkpoint(self):
        control(self.p, "replication checkpoint")
        control(self.s, "replication checkpoint")

    def view(self, path="disk.img"):
        return read_file(self.s.path(path))

    def base(self, path="disk.img"):
        return read_file(self.b1 / path)

    def primary(self, path="disk.img"):
        return read_file(self.p.path(path))


@pytest.fixture
def pair(quorum, tmp_path):
    made = []

    def make(primary=True, b1=None, opts=()):
        made.append(Pair(quorum, tmp_path / ("pair%d" % len(made)),
                         primary, b1, opts))
        return made[-1]

    yield make
    for p in made:  # a test that failed may leave the inbound behind
        if qfs.is_fuse_mounted(str(p.inb)) and not p.s.running():
            qfs.lazy_unmount(str(p.inb))


def pwrite(path, off, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, off) == len(data)
    finally:
        os.close(fd)


def at(data, off, n=1):
    return data[off:off + n]


# --- the command line ----------------------------------------------------

def test_command_line_refusals_carry_qemus_texts(run_daemon, tmp_path):
    for d in ("b", "v", "a", "h", "i"):
        (tmp_path / d).mkdir()
    b, v = tmp_path / "b", tmp_path / "v"
    a, h, i = tmp_path / "a", tmp_path / "h", tmp_path / "i"
    cases = [
        (["-o", "replication"], "Missing the option mode"),
        (["-o", "replication=foo"],
         "The option mode's value should be primary or secondary"),
        (["-o", "replication=secondary"],
         "Active disk doesn't have backing file"),
        (["-o", "replication=secondary,active=%s" % a],
         "Hidden disk doesn't have backing file"),
        (["-o", "replication=secondary,active=%s,hidden=%s,inbound=%s"
          % (a, a, i)],
         "Active disk or hidden disk doesn't support make_empty"),
        (["-o", "active=%s" % a], "go with replication=secondary"),
    ]
    for opts, text in cases:
        rc, err = run_daemon("-f", *opts, b, v)
        assert rc == 1 and text in err, (opts, err)
    assert not os.listdir(b), "a refused command line touched a child"


# --- before start ----------------------------------------------------------

def test_before_start_the_view_refuses_data_and_commands_answer_as_qemu(
        pair):
    p = pair()
    assert refused(p.s, "replication get-error", errno.EINVAL) == \
        NOT_RUNNING
    assert refused(p.s, "replication checkpoint", errno.EINVAL) == \
        JOB_CANCELLED
    assert refused(p.s, "replication stop", errno.EINVAL) == NOT_RUNNING
    assert os.listdir(p.s.path()) == ["disk.img"]  # names are the base's
    with pytest.raises(OSError) as e:
        read_file(p.s.path("disk.img"))
    assert e.value.errno == errno.EIO
    r = repl(p.s)
    assert (r["mode"], r["stage"], r["inbound"]["mounted"]) == \
        ("secondary", "NONE", True), r


def test_start_refuses_the_other_mode_and_a_missing_inbound(pair):
    p = pair()
    assert refused(p.s, "replication start primary", errno.EINVAL) == \
        "The parameter mode's value is invalid, needs 1, but got 0"
    assert refused(p.p, "replication start secondary", errno.EINVAL) == \
        "The parameter mode's value is invalid, needs 0, but got 1"
    control(p.p, "remove sec")
    subprocess.run(["fusermount3", "-u", str(p.inb)], check=True)
    qfs.wait_for(lambda: not repl(p.s)["inbound"]["mounted"],
                 10 * qfs.deadline_scale(), "the inbound mount to go")
    assert refused(p.s, "replication start secondary", errno.ENOTCONN) == \
        "The secondary disk doesn't have block backend"
    assert refused(p.s, "add %s mode=primary" % (p.root / "pm"),
                   errno.EBUSY) == \
        "Block device is in use by internal backup job"


# --- running: copy-before-write, the view, checkpoints -----------------------

def test_primary_writes_reach_the_base_and_the_view_keeps_the_checkpoint(
        pair):
    p = pair()
    p.start()
    assert refused(p.s, "replication start secondary", errno.EBUSY) == \
        RUNNING_OR_DONE
    pwrite(p.p.path("disk.img"), 0, b"\x11" * CLUSTER)
    assert at(p.base(), 0) == b"\x11"
    assert at(p.view(), 0) == b"\xaa"
    assert repl(p.s)["layers"]["hidden"]["clusters"] == 1
    pwrite(p.p.path("disk.img"), 100, b"\x12" * 100)  # the same cluster
    assert repl(p.s)["layers"]["hidden"]["clusters"] == 1
    assert p.view() == FILL * SIZE  # the old bytes survive
    # The secondary VM's own write: in the view only.
    pwrite(p.s.path("disk.img"), 128 * KiB, b"\x22" * CLUSTER)
    assert at(p.view(), 128 * KiB) == b"\x22"
    assert at(p.base(), 128 * KiB) == b"\xaa"
    assert at(p.primary(), 128 * KiB) == b"\xaa"
    assert repl(p.s)["layers"]["active"]["clusters"] == 1
    p.checkpoint()
    assert p.view() == p.primary()
    r = repl(p.s)
    assert r["layers"]["active"]["bytes"] == 0 == \
        r["layers"]["hidden"]["bytes"], r
    assert r["checkpoint"]["count"] == 1 and r["epoch"] == 2, r
    # The old epochs' files go in the background, soon after.
    for layer in ("act", "hid"):
        qfs.wait_for(lambda: sorted(os.listdir(p.root / layer)) ==
                     [".qfslayer", "E2"], 10 * qfs.deadline_scale(),
                     "the old epoch of %s removed" % layer)
    ev = p.s.wait_event("REPLICATION_CHECKPOINT")
    assert ev["epoch"] == 2 and ev["duration-ms"] >= 0


def test_failover_keeps_the_view_and_drops_the_primary_since_checkpoint(
        pair):
    p = pair()
    p.start()
    pwrite(p.p.path("disk.img"), 0, b"\x11" * CLUSTER)
    pwrite(p.s.path("disk.img"), 128 * KiB, b"\x22" * CLUSTER)
    p.checkpoint()
    pwrite(p.p.path("disk.img"), 256 * KiB, b"\x33" * CLUSTER)
    pwrite(p.s.path("disk.img"), 512 * KiB, b"\x44" * CLUSTER)
    view = p.view()
    p.p.kill()
    control(p.s, "replication stop failover")
    assert repl(p.s)["stage"] == "DONE"
    base = p.base()
    # QEMU's sec.raw after the same steps.
    assert (at(base, 0), at(base, 128 * KiB), at(base, 256 * KiB),
            at(base, 512 * KiB)) == (b"\x11", b"\xaa", b"\xaa", b"\x44")
    assert base == view == p.view()
    for command in ("replication start secondary", "replication checkpoint",
                    "replication stop failover"):
        control(p.s, command)
    with pytest.raises(OSError) as e:
        pwrite(str(p.inb / "disk.img"), 0, b"late")
    assert e.value.errno == errno.EROFS
    # Now an ordinary mount: its writes go to the base.
    pwrite(p.s.path("disk.img"), 0, b"\x55" * 10)
    assert at(p.base(), 0) == b"\x55"
    stages = [(e["old"], e["new"])
              for e in p.s.events_named("REPLICATION_STAGE_CHANGED")]
    assert stages == [("NONE", "RUNNING"), ("RUNNING", "FAILOVER"),
                      ("FAILOVER", "DONE")], stages
    new = p.root / "newsec"
    new.mkdir()
    control(p.s, "add %s mode=primary name=sec2" % new)
    wait_child_state(p.s, "sec2", "ok")


def test_stop_without_failover_makes_the_view_the_base(pair):
    p = pair()
    p.start()
    pwrite(p.p.path("disk.img"), 0, b"\x11" * CLUSTER)
    pwrite(p.s.path("disk.img"), 128 * KiB, b"\x22" * CLUSTER)
    control(p.s, "replication stop")
    assert repl(p.s)["stage"] == "DONE"
    assert p.view() == p.base() == p.primary()
    control(p.s, "replication get-error")


def test_truncates_and_metadata_in_the_view_stay_in_the_view(pair):
    p = pair()
    p.start()
    path = p.s.path("disk.img")
    os.truncate(path, 100 * KiB)
    assert len(p.view()) == 100 * KiB and len(p.base()) == SIZE
    os.truncate(path, 300 * KiB)  # what was cut reads as zeros
    assert p.view() == FILL * (100 * KiB) + bytes(200 * KiB)
    os.chmod(path, 0o600)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(p.b1 / "disk.img").st_mode & 0o777 == 0o644
    p.checkpoint()
    assert p.view() == p.primary()
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_primary_truncates_are_copied_before_they_cut(pair):
    p = pair()
    p.start()
    os.truncate(p.p.path("disk.img"), 100 * KiB)
    assert len(p.base()) == 100 * KiB
    assert p.view() == FILL * SIZE
    os.truncate(p.p.path("disk.img"), 2 * SIZE)
    assert p.view() == FILL * SIZE
    p.checkpoint()
    assert p.view() == FILL * (100 * KiB) + bytes(2 * SIZE - 100 * KiB)


# --- documentation -----------------------------------------------------------

def test_secondary_status_and_events_are_in_the_readme(pair):
    p = pair()
    p.start()
    p.checkpoint()
    missing = documented(keys_of(status(p.s)), readme_section("**Status**"))
    assert not missing, "status keys not in the README: %s" % sorted(missing)
    section = readme_section("## Event log")
    keys, names = set(), set()
    for e in p.s.events():
        keys |= keys_of(e["data"])
        names.add(e["event"])
    assert not documented(names, section), names
    assert not documented(keys, section), sorted(documented(keys, section))


# --- names, from both sides, against the reference model ---------------------

NAMES = ["a.img", "b.img", "c.img", "d.img"]
SMALL = 256 * KiB
SCRIPTS = range(12)


def tree_of(root):
    """path -> bytes of every regular file below root, but the mount's
    own names."""
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in (".quorumfs", ".qfs-graveyard")]
        for f in files:
            if f == ".control" and d == str(root):
                continue
            path = os.path.join(d, f)
            out[os.path.relpath(path, root)] = read_file(path)
    return out


def ns_step(rng, model):
    """A random step that the model's trees allow now."""
    side = rng.choice(["p", "s"])
    names = sorted(model.p.files) if side == "p" else \
        sorted(model.s.v_ns())
    free = [n for n in NAMES if n not in names]
    r = rng.random()
    if r < 0.08:
        return ("checkpoint",)
    if (r < 0.2 or not names) and free:
        return (side + "create", rng.choice(free))
    if not names:
        return ("checkpoint",)
    path = rng.choice(names)
    if r < 0.3:
        return (side + "unlink", path)
    if r < 0.42:
        return (side + "rename", path, rng.choice(NAMES))
    if r < 0.52:
        return (side + "truncate", path, rng.randrange(0, 2 * SMALL, 512))
    off = rng.randrange(0, 2 * SMALL, 512)
    return (side + "write", path, off,
            bytes([rng.randrange(1, 256)]) * rng.choice((512, 4096, 65536)))


def apply_ns(p, model, step):
    """One step on the mounts and on the model."""
    kind, args = step[0], step[1:]
    if kind == "checkpoint":
        p.checkpoint()
        model.checkpoint("primary")
        model.checkpoint("secondary")
        return
    mnt = p.p if kind[0] == "p" else p.s
    op, who = kind[1:], "primary" if kind[0] == "p" else "secondary"
    path = mnt.path(args[0])
    if op == "create":
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    elif op == "unlink":
        os.unlink(path)
    elif op == "rename":
        os.rename(path, mnt.path(args[1]))
    elif op == "truncate":
        os.truncate(path, args[1])
    else:
        pwrite(path, args[1], args[2])
    getattr(model, "%s_%s" % (who, op))(*args)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", SCRIPTS)
def test_names_from_both_sides_follow_the_model(pair, seed):
    rng = random.Random("replication-names-%d" % seed)
    p = pair()
    files = {}
    for n in NAMES[:2]:
        files[n] = rng.randbytes(SMALL)
        for side in ("p1", "b1"):
            write_file(p.root / side / n, files[n])
    os.unlink(p.root / "p1" / "disk.img")
    os.unlink(p.b1 / "disk.img")
    model = ReplicationModel(files, flavour="quorumfs")
    p.start()
    model.start("secondary")
    model.start("primary")
    for i in range(40):
        step = ns_step(rng, model)
        apply_ns(p, model, step)
        where = "step %d %s (seed %d)" % (i, step[:2], seed)
        assert tree_of(p.s.path()) == model.view_tree(), where
        assert tree_of(p.b1) == model.base_tree(), where
        assert tree_of(p.p.path()) == model.primary_tree(), where
    if seed % 2:
        view = tree_of(p.s.path())
        p.p.kill()
        model.failover()
        control(p.s, "replication stop failover")
        assert repl(p.s)["stage"] == "DONE"
        assert tree_of(p.b1) == view == model.base_tree()
    else:
        control(p.p, "replication stop")
        control(p.s, "replication stop")
        model.stop("primary")
        model.stop("secondary")
        assert tree_of(p.s.path()) == tree_of(p.b1) == \
            model.base_tree()


def test_removing_a_big_image_on_the_inbound_side_is_a_rename(pair):
    p = pair()
    p.start()
    with open(p.p.path("big.img"), "wb") as f:
        f.truncate(1 << 30)
    p.checkpoint()  # the checkpoint's tree has it
    t = time.monotonic()
    os.unlink(p.p.path("big.img"))
    took = time.monotonic() - t
    assert took < 0.5 * qfs.deadline_scale(), took
    assert "big.img" not in os.listdir(p.b1)
    assert os.listdir(p.b1 / ".qfs-graveyard")
    assert os.stat(p.s.path("big.img")).st_size == 1 << 30  # C has it
    p.checkpoint()
    qfs.wait_for(lambda: not os.listdir(p.b1 / ".qfs-graveyard"),
                 10 * qfs.deadline_scale(), "the graveyard emptied")


# --- full, failing and restarted -------------------------------------------

def test_a_full_hidden_layer_fails_the_inbound_write_and_is_latched(pair):
    p = pair(opts=["layer-limit=128K"])
    p.start()
    pwrite(p.p.path("disk.img"), 0, b"\x11" * CLUSTER)
    pwrite(p.p.path("disk.img"), CLUSTER, b"\x12" * CLUSTER)
    # The third cluster would need a third copy in hidden: refused there,
    # the base untouched, the error latched on both sides.
    pwrite(p.p.path("disk.img"), 2 * CLUSTER, b"\x13" * CLUSTER)
    assert at(p.base(), 2 * CLUSTER) == b"\xaa"
    assert at(p.primary(), 2 * CLUSTER) == b"\x13"
    assert refused(p.s, "replication get-error", errno.EIO) == IO_ERROR
    assert refused(p.p, "replication get-error", errno.EIO) == IO_ERROR
    ev = p.p.wait_event("REPLICATION_ERROR")
    assert ev["error"] == "No space left on device", ev
    assert p.view() == FILL * SIZE
    p.checkpoint()  # frees the layer
    pwrite(p.p.path("disk.img"), 3 * CLUSTER, b"\x14" * CLUSTER)
    assert at(p.base(), 3 * CLUSTER) == b"\x14"


@pytest.mark.timeout(120)
def test_a_failover_that_fills_the_base_fails_and_can_be_committed_again(
        pair, scratch_fs):
    room = scratch_fs("ext4", size="16M")
    p = pair(b1=room / "b1")
    p.start()
    filler = room / "filler"
    free = os.statvfs(room).f_bavail * os.statvfs(room).f_frsize
    # The secondary VM writes more than the base's file system can hold
    # once a filler takes most of what is left.
    write_file(p.s.path("vm.img"), b"\x77" * (6 * MiB))
    write_file(filler, bytes(free - 3 * MiB))
    pwrite(p.s.path("disk.img"), 0, b"\x22" * CLUSTER)
    view = p.view("vm.img"), p.view()
    p.p.kill()
    control(p.s, "replication stop failover")  # QEMU's drops the error
    assert repl(p.s)["stage"] == "FAILOVER_FAILED"
    assert refused(p.s, "replication get-error", errno.EIO) == IO_ERROR
    assert refused(p.s, "replication stop", errno.EINVAL) == NOT_RUNNING
    assert (p.view("vm.img"), p.view()) == view  # the view holds
    # A write to a cluster no layer holds goes to the base now.
    pwrite(p.s.path("disk.img"), 512 * KiB, b"\x33" * 512)
    assert at(p.base(), 512 * KiB) == b"\x33"
    os.unlink(filler)
    control(p.s, "replication commit")
    assert repl(p.s)["stage"] == "DONE"
    assert p.base("vm.img") == view[0]
    assert p.base() == p.view()
    assert at(p.base(), 0) == b"\x22" and at(p.base(), 512 * KiB) == b"\x33"


def test_a_restart_keeps_the_layers_and_a_failed_over_inbound_closed(pair):
    p = pair()
    p.start()
    pwrite(p.p.path("disk.img"), 0, b"\x11" * CLUSTER)
    pwrite(p.s.path("disk.img"), 128 * KiB, b"\x22" * CLUSTER)
    view = p.view()
    control(p.p, "remove sec")
    p.s.unmount()
    p.s.start()
    assert repl(p.s)["stage"] == "RUNNING"
    assert p.view() == view
    control(p.s, "replication stop failover")
    assert p.base() == view
    p.s.unmount()
    p.s.start()
    assert repl(p.s)["stage"] == "DONE"
    assert repl(p.s)["inbound"]["read-only"] is True
    with pytest.raises(OSError) as e:
        pwrite(str(p.inb / "disk.img"), 0, b"late")
    assert e.value.errno == errno.EROFS


# --- crashes at chosen points ---------------------------------------------------

def crash_here(p, point, nth=1):
    """Restart the secondary so that it kills itself (as kill -9 would)
    the nth time it passes point."""
    control(p.p, "remove sec")
    p.s.unmount()
    os.environ["QFS_FAILPOINT"] = "%s:%d" % (point, nth)
    try:
        p.s.start()
    finally:
        del os.environ["QFS_FAILPOINT"]
    control(p.p, "add %s mode=primary name=sec" % p.inb)
    wait_child_state(p.p, "sec", "ok")


def after_crash(p):
    """The secondary died at its failpoint: clear both of its mounts and
    mount it again."""
    qfs.wait_for(lambda: not p.s.running(), 10 * qfs.deadline_scale(),
                 "the secondary to die at its failpoint")
    p.s.kill()  # detaches the view
    qfs.lazy_unmount(str(p.inb))
    p.s.start()


@pytest.mark.timeout(120)
def test_a_crash_between_copy_and_write_keeps_the_checkpoints_bytes(pair):
    p = pair()
    crash_here(p, "cbw", 2)
    p.start()
    pwrite(p.p.path("disk.img"), 0, b"\x11" * CLUSTER)  # the first pass
    # The secondary dies with the second: the primary's writer does not
    # notice, its replication child latches the error.
    pwrite(p.p.path("disk.img"), CLUSTER, b"\x12" * CLUSTER)
    assert refused(p.p, "replication get-error", errno.EIO) == IO_ERROR
    after_crash(p)
    assert repl(p.s)["stage"] == "RUNNING"
    assert p.view() == FILL * SIZE  # C whole: the copy was durable first
    assert at(p.base(), 0) == b"\x11" and at(p.base(), CLUSTER) == b"\xaa"


@pytest.mark.timeout(120)
def test_a_crash_inside_a_checkpoint_ends_it_or_leaves_it_whole(pair):
    p = pair()
    crash_here(p, "checkpoint", 2)  # the first is start's epoch
    p.start()
    pwrite(p.p.path("disk.img"), 0, b"\x11" * CLUSTER)
    pwrite(p.s.path("disk.img"), CLUSTER, b"\x22" * CLUSTER)
    control(p.p, "replication checkpoint")
    with pytest.raises(OSError):
        control(p.s, "replication checkpoint")
    after_crash(p)
    r = repl(p.s)
    assert r["stage"] == "RUNNING" and r["epoch"] == 2, r
    assert r["layers"]["hidden"]["clusters"] == 0 == \
        r["layers"]["active"]["clusters"], r
    assert p.view() == p.primary()
    # The epoch the crash kept from its removal goes after the mount.
    for layer in ("act", "hid"):
        qfs.wait_for(lambda: sorted(os.listdir(p.root / layer)) ==
                     [".qfslayer", "E2"], 10 * qfs.deadline_scale(),
                     "the old epoch of %s removed" % layer)


@pytest.mark.timeout(120)
def test_a_crash_inside_a_failover_commit_goes_on_at_the_next_mount(pair):
    p = pair()
    crash_here(p, "commit")
    p.start()
    p.checkpoint()
    pwrite(p.p.path("disk.img"), 0, b"\x11" * CLUSTER)
    pwrite(p.s.path("disk.img"), 256 * KiB, b"\x22" * CLUSTER)
    write_file(p.s.path("new.img"), b"new" * 1000)
    view = tree_of(p.s.path())
    p.p.kill()
    with pytest.raises(OSError):
        control(p.s, "replication stop failover")
    after_crash(p)
    assert repl(p.s)["stage"] == "DONE"
    assert tree_of(p.b1) == view == tree_of(p.s.path())


# --- checkpoints under load ------------------------------------------------------

BLOCK = 4096


def stamp(who, seq):
    unit = b"%02d:%08d|" % (who, seq)
    return (unit * (BLOCK // len(unit) + 1))[:BLOCK]


def whole(block):
    """A block one writer wrote whole (or never touched)."""
    return block == FILL * BLOCK or block == block[:12] * (BLOCK // 12) + \
        block[:BLOCK % 12]


class Load:
    """Writers on one side, each on its own blocks of disk.img, and a
    reader of the view checking that every block it reads is whole."""

    def __init__(self, p, writers=8):
        import threading
        self.stop = threading.Event()
        self.errors = []
        self.threads = [threading.Thread(target=self.write, args=(p, w))
                        for w in range(writers)]
        self.threads += [threading.Thread(target=self.write_view,
                                          args=(p, w))
                         for w in range(writers)]
        self.threads.append(threading.Thread(target=self.read, args=(p,)))
        for t in self.threads:
            t.start()

    def loop(self, path, blocks, who):
        fd = os.open(path, os.O_WRONLY)
        seq = 0
        try:
            while not self.stop.is_set():
                seq += 1
                os.pwrite(fd, stamp(who, seq),
                          blocks[seq % len(blocks)] * BLOCK)
        except OSError as e:
            self.errors.append((who, e))
        finally:
            os.close(fd)

    def write(self, p, w):
        self.loop(p.p.path("disk.img"), range(w, SIZE // BLOCK, 16), w)

    def write_view(self, p, w):
        self.loop(p.s.path("disk.img"), range(8 + w, SIZE // BLOCK, 16),
                  50 + w)

    def read(self, p):
        """Whole 64 KiB reads into a page-aligned buffer: the kernel
        splits a read where the caller's buffer crosses a page, so an
        unaligned one could see a write land between two parts."""
        buf = mmap.mmap(-1, CLUSTER)
        fd = os.open(p.s.path("disk.img"), os.O_RDONLY)
        try:
            while not self.stop.is_set():
                for off in range(0, SIZE, CLUSTER):
                    assert os.preadv(fd, [buf], off) == CLUSTER
                    for b in range(0, CLUSTER, BLOCK):
                        if not whole(buf[b:b + BLOCK]):
                            self.errors.append(("torn", off + b))
        except OSError as e:
            self.errors.append(("read", e))
        finally:
            os.close(fd)
            buf.close()

    def end(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.mark.timeout(300)
def test_checkpoints_under_load_are_quick_and_never_tear_a_block(pair):
    p = pair(opts=["io-timeout=10"])
    p.start()
    load = Load(p)
    took = []
    try:
        for _ in range(100):
            t = time.monotonic()
            p.checkpoint()
            took.append(time.monotonic() - t)
    finally:
        load.end()
    assert not load.errors, load.errors[:5]
    assert max(took) < 10, max(took)
    r = repl(p.s)
    assert r["checkpoint"]["count"] == 100, r
    p.checkpoint()
    assert p.view() == p.primary()
    took.sort()
    print("\n100 checkpoints under load: median %.1f ms, p99 %.1f ms, max "
          "%.1f ms" % (1000 * took[50], 1000 * took[98], 1000 * took[-1]))
