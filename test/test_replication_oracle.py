"""The replication oracle checked against itself: QEMU 7.2's replication
driver (driven by qemu_replication) and the reference model
(replication_model) must agree on everything QEMU can show for one
image: the secondary VM's view, the base, the primary, which 64 KiB
clusters the active and hidden layers hold, and the exact text of every
command's answer in every stage that can be held still.

Once they agree here, the model stands in for QEMU where QEMU cannot
judge (many files, namespace changes); the last tests check the model's
own rules for those.

The QEMU tests skip, saying why, when qemu-system-x86_64 cannot run a
`-M none` machine with the replication commands. Nothing here sleeps for
a fixed time: the harness polls with deadlines.
"""

import random
import sys

import pytest

import qemu_replication as qr
import replication_model as rm
from qemu_replication import QemuReplication
from replication_model import ReplicationModel

KiB = 1024
MiB = 1024 * KiB
CLUSTER = 64 * KiB
DISK = "disk.img"

QEMU_PROBLEM = qr.qemu_system_problem()
needs_qemu = pytest.mark.skipif(QEMU_PROBLEM is not None,
                                reason="QEMU oracle unavailable: %s" %
                                (QEMU_PROBLEM,))


def first_difference(got, want):
    """A short description of where two snapshots differ, or None."""
    if got == want:
        return None
    if isinstance(got, str) or isinstance(want, str):
        return "got %r, want %r" % (got[:60], want[:60])
    if len(got) != len(want):
        return "length %d, want %d" % (len(got), len(want))
    i = next(i for i in range(len(got)) if got[i] != want[i])
    j = i
    while j < len(got) and got[j] != want[j]:
        j += 1
    return "bytes differ from %d (cluster %d) for %d bytes: got %02x, " \
        "want %02x" % (i, i // CLUSTER, j - i, got[i], want[i])


def clusters_of(extents):
    """Cluster indexes of [(offset, length)] extents."""
    return sorted({k for off, length in extents
                   for k in range(off // CLUSTER,
                                  (off + length - 1) // CLUSTER + 1)})


class Pair:
    """A QEMU pair and a model of one image run side by side; compare()
    checks every snapshot QEMU gives against the model's."""

    def __init__(self, qemu, model):
        self.q = qemu
        self.m = model

    def primary_write(self, off, length, byte):
        got = self.q.primary_write(off, length, byte)
        self.m.primary_write(DISK, off, bytes([byte]) * length)
        assert got is None, "primary write failed in QEMU: %s" % got

    def secondary_write(self, off, length, byte):
        got = self.q.secondary_write(off, length, byte)
        try:
            self.m.secondary_write(DISK, off, bytes([byte]) * length)
            want = None
        except rm.ReplicationError as e:
            want = e.desc
        assert got == want, "secondary write: QEMU %r, model %r" % (got, want)

    def command(self, side, name):
        got = self.q.command(side, name)
        want = self.m.command(side, name)
        assert got == want, "%s %s: QEMU %r, model %r" % (side, name, got,
                                                          want)
        return got

    def failover(self):
        got = self.q.failover()
        want = self.m.failover()
        assert got == want, "failover: QEMU %r, model %r" % (got, want)

    def compare(self, where):
        problems = []
        snaps = [("view", self.q.view_bytes(), self.m.view_bytes(DISK)),
                 ("base", self.q.base_bytes(), self.m.base_bytes(DISK)),
                 ("primary", self.q.primary_bytes(),
                  self.m.primary_bytes(DISK))]
        for name, got, want in snaps:
            d = first_difference(got, want)
            if d:
                problems.append("%s: %s" % (name, d))
        for layer in ("active", "hidden"):
            got = clusters_of(self.q.layer_map(layer))
            want = self.m.layer_clusters(layer, DISK)
            if got != want:
                problems.append("%s clusters: QEMU %s, model %s" % (
                    layer, got, want))
        self.m.check()
        assert not problems, "after %s:\n  %s" % (where, "\n  ".join(problems))


@pytest.fixture
def pair(request):
    """Factory: pair(size, fill, start=True) -> a Pair of a set-up QEMU
    pair and a model of the same image; both started unless start is
    false. QEMU's stderr is shown when the test fails."""
    made = []

    def make(size=MiB, fill=b"\xaa", start=True):
        q = QemuReplication(size=size, fill=fill)
        made.append(q)
        q.setup(start=False)
        if len(fill) == 1:
            fill = fill * size
        p = Pair(q, ReplicationModel({DISK: fill}))
        if start:
            p.command("secondary", "start")
            p.command("primary", "start")
        return p

    yield make
    call = getattr(request.node, "rep_call", None)
    for q in made:
        if call is not None and call.failed:
            for side in (q.s, q.p):
                if side is not None:
                    sys.stderr.write("%s qemu stderr:\n%s\n" % (
                        side.name, side.log_text()))
        q.close()


# --- the scenario the design was checked with -------------------------

@needs_qemu
@pytest.mark.timeout(60)
def test_observed_run(pair):
    p = pair()
    p.compare("start")

    p.primary_write(0, 64 * KiB, 0x11)
    p.secondary_write(128 * KiB, 64 * KiB, 0x22)
    view = p.q.view_bytes()
    assert view[0] == 0xAA, "the hidden layer shows the checkpoint's byte"
    assert view[128 * KiB] == 0x22
    assert p.q.base_bytes()[0] == 0x11
    assert clusters_of(p.q.layer_map("hidden")) == [0]
    assert clusters_of(p.q.layer_map("active")) == [2]
    p.compare("P 0x11@0, S 0x22@128K")

    p.command("primary", "checkpoint")
    p.command("secondary", "checkpoint")
    view = p.q.view_bytes()
    assert view[0] == 0x11 and view[128 * KiB] == 0xAA
    assert view == p.q.primary_bytes()
    p.compare("checkpoint")

    p.primary_write(256 * KiB, 64 * KiB, 0x33)
    p.secondary_write(512 * KiB, 64 * KiB, 0x44)
    p.compare("P 0x33@256K, S 0x44@512K")

    p.failover()
    base = p.q.base_bytes()
    assert [base[o * KiB] for o in (0, 128, 256, 512)] == \
        [0x11, 0xAA, 0xAA, 0x44], \
        "failover keeps the checkpoint and the secondary's write and " \
        "drops the primary's write since the checkpoint"
    p.compare("failover")

    for name in ("start", "checkpoint", "stop"):
        assert p.command("secondary", name) == ("ok", None)
    p.secondary_write(768 * KiB, 4 * KiB, 0x55)
    assert p.q.base_bytes()[768 * KiB] == 0x55, \
        "after failover the secondary VM writes the base"
    p.compare("write after failover")


# --- seeded random scripts: QEMU against the model ----------------------

IMAGE = 4 * MiB
SEEDS = range(16)
STEPS = 30


def random_extent(rng):
    """Offset and length, multiples of 512: mostly 4-64 KiB in the first
    MiB (so writes overlap and clusters are hit twice), some small, some
    straddling a cluster boundary, some anywhere."""
    kind = rng.random()
    if kind < 0.15:
        length = rng.randrange(1, 9) * 512
    elif kind < 0.3:
        length = rng.randrange(2, 257) * 512
        k = rng.randrange(1, IMAGE // CLUSTER)
        off = k * CLUSTER - rng.randrange(1, length // 512) * 512
        return off, length
    else:
        length = rng.randrange(8, 129) * 512
    hot = MiB if rng.random() < 0.7 else IMAGE
    off = rng.randrange(0, (hot - length) // 512 + 1) * 512
    return off, length


def random_script(seed):
    """The steps of one script: ("pw"|"sw", off, length, byte),
    ("checkpoint",), ("get-error", side), then one final step
    ("failover"|"stop"|"nothing",), taken in turn by seed, and a few
    writes after it. Returns the generator too, for the image's
    content."""
    rng = random.Random("replication-oracle-%d" % seed)
    steps = []
    for _ in range(STEPS):
        r = rng.random()
        if r < 0.4:
            steps.append(("pw",) + random_extent(rng) +
                         (rng.randrange(1, 256),))
        elif r < 0.75:
            steps.append(("sw",) + random_extent(rng) +
                         (rng.randrange(1, 256),))
        elif r < 0.9:
            steps.append(("checkpoint",))
        else:
            steps.append(("get-error", rng.choice(["primary", "secondary"])))
    final = ("failover", "stop", "nothing")[seed % 3]
    steps.append((final,))
    after = ["sw", "sw"] if final == "failover" else ["pw", "sw", "pw"]
    for kind in after:
        steps.append((kind,) + random_extent(rng) + (rng.randrange(1, 256),))
    steps.append(("get-error", "secondary"))
    if final != "failover":
        steps.append(("get-error", "primary"))
    return rng, steps


def run_step(p, step):
    kind = step[0]
    if kind == "pw":
        p.primary_write(*step[1:])
    elif kind == "sw":
        p.secondary_write(*step[1:])
    elif kind == "checkpoint":
        p.command("primary", "checkpoint")
        p.command("secondary", "checkpoint")
    elif kind == "get-error":
        p.command(step[1], "get-error")
    elif kind == "failover":
        p.failover()
    elif kind == "stop":
        # Primary first, as an orchestrator would; the secondary's stop
        # without failover is refused by 7.2 (the model's qemu flavour).
        p.command("primary", "stop")
        p.command("secondary", "stop")


@needs_qemu
@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS)
def test_random_script(pair, seed):
    rng, steps = random_script(seed)
    p = pair(size=IMAGE, fill=rng.randbytes(IMAGE))
    p.compare("start")
    for i, step in enumerate(steps):
        run_step(p, step)
        p.compare("step %d %s (seed %d)" % (i, step, seed))


# --- the stage machine's texts -----------------------------------------

def model_probe(recipes=qr.STAGE_RECIPES):
    """What the model answers for every entry of qr.probe_stage_machine,
    reached by the same recipe steps."""
    out = {}
    for (side, stage), steps in recipes.items():
        for name in rm.COMMANDS:
            m = ReplicationModel({DISK: b"\xaa" * MiB})
            for step in steps:
                qr.apply_step(m, step)
            out[(side, stage, name)] = (m.command(side, name),
                                        m.command(side, "get-error"))
    return out


@needs_qemu
@pytest.mark.timeout(120)
def test_stage_machine_texts():
    assert qr.COMMANDS == rm.COMMANDS
    got = qr.probe_stage_machine()
    want = model_probe()
    assert set(got) == set(want)
    bad = ["%s %s %s: QEMU %s, model %s" % (k + (got[k], want[k]))
           for k in sorted(got) if got[k] != want[k]]
    assert not bad, "\n".join(bad)
    # The texts themselves, so that a change in both shows up here.
    assert got[("secondary", "NONE", "checkpoint")][0] == \
        ("error", "Backup job was cancelled unexpectedly")
    assert got[("secondary", "NONE", "start-other")][0] == \
        ("error", "The parameter mode's value is invalid, needs 1, "
         "but got 0")
    assert got[("primary", "NONE", "start-other")][0] == \
        ("error", "The parameter mode's value is invalid, needs 0, "
         "but got 1")
    assert got[("primary", "RUNNING", "start")][0] == \
        ("error", "Block replication is running or done")
    assert got[("secondary", "NONE", "stop")][0] == \
        ("error", "Block replication is not running")
    assert got[("secondary", "RUNNING", "stop")] == \
        (("error", "Backup job was cancelled unexpectedly"),
         ("error", "I/O error occurred"))
    # QMP drops the refusal of a stop that carries failover=true.
    assert got[("secondary", "NONE", "stop-failover")] == \
        (("ok", None), ("error", "Block replication is not running"))
    assert got[("primary", "DONE", "start-failover")][0] == \
        ("error", "Parameter 'failover' is only for stopping replication")


# --- errors on the primary ---------------------------------------------

def report_bad(q):
    """QUORUM_REPORT_BAD events the primary has sent so far (a command
    first, so that every event before it has been read)."""
    q.p.qmp.execute("query-status")
    return [e["data"] for e in q.p.qmp.events
            if e["event"] == "QUORUM_REPORT_BAD"]


@needs_qemu
@pytest.mark.timeout(60)
def test_primary_write_outside_running_is_a_failed_child(pair):
    p = pair(start=False)
    p.primary_write(0, 4 * KiB, 0x11)
    p.compare("primary write in NONE")
    bad = report_bad(p.q)
    assert [(b["node-name"], b["type"], b["error"]) for b in bad] == \
        [("nbd_client1", "write", "Input/output error")]
    assert p.m.p.report_bad == [("write", DISK)]


@needs_qemu
@pytest.mark.timeout(60)
def test_forward_error_is_latched_not_reported(pair):
    p = pair()
    p.primary_write(0, 4 * KiB, 0x11)
    p.q.break_inbound()
    p.m.inbound_down()
    p.primary_write(8 * KiB, 4 * KiB, 0x12)
    p.compare("primary write with the inbound export gone")
    assert report_bad(p.q) == [], "RUNNING swallows the replica's error"
    assert p.command("primary", "get-error") == \
        ("error", "I/O error occurred")
    assert p.command("secondary", "get-error") == ("ok", None)
    p.command("primary", "checkpoint")
    assert p.command("primary", "get-error") == \
        ("error", "I/O error occurred"), "a checkpoint does not clear it"


# --- the model on its own: many files, namespace changes -----------------

def tree(**files):
    return {k.replace("_", "."): v for k, v in files.items()}


def started(files, flavour="qemu"):
    m = ReplicationModel(files, flavour=flavour)
    m.start("secondary")
    m.start("primary")
    return m


def test_model_rename_keeps_identity():
    """The primary renames a file and writes to it: the secondary VM still
    sees the old name with the old bytes; a checkpoint moves it on."""
    m = started(tree(a_img=b"A" * 100000, b_img=b"B" * 1000))
    m.primary_rename("a.img", "c.img")
    m.primary_write("c.img", 0, b"x" * 10)
    m.check()
    assert m.view_tree() == tree(a_img=b"A" * 100000, b_img=b"B" * 1000)
    assert m.base_tree() == {"c.img": b"x" * 10 + b"A" * 99990,
                             "b.img": b"B" * 1000}
    assert m.layer_clusters("hidden", "a.img") == [0]
    m.checkpoint("primary")
    m.checkpoint("secondary")
    assert m.view_tree() == m.primary_tree() == m.base_tree()


def test_model_unlink_recreate_and_truncate():
    m = started(tree(a_img=bytes(range(256)) * 1000))
    old = m.view_tree()
    m.primary_unlink("a.img")
    m.primary_create("a.img")
    m.primary_write("a.img", 0, b"new")
    m.primary_create("n.img")
    m.check()
    assert m.view_tree() == old, "primary namespace changes stay hidden"
    m.checkpoint("secondary")
    m.primary_truncate("a.img", 1)
    m.primary_truncate("a.img", 5000)
    m.check()
    assert m.view_tree() == {"a.img": b"new", "n.img": b""}
    assert m.base_tree()["a.img"] == b"n" + bytes(4999)


def test_model_view_truncate_then_grow_shows_zeros():
    m = started(tree(a_img=b"\x01" * 200000))
    m.secondary_truncate("a.img", 1000)
    m.secondary_truncate("a.img", 200000)
    assert m.view_bytes("a.img") == b"\x01" * 1000 + bytes(199000)
    assert m.base_bytes("a.img") == b"\x01" * 200000


def test_model_failover_commits_the_view():
    """Failover: B becomes V, names and bytes; primary changes since the
    checkpoint are gone, the secondary VM's are kept."""
    m = started(tree(a_img=b"a" * 70000, b_img=b"b" * 10))
    m.primary_write("a.img", 0, b"P" * 5)
    m.primary_rename("b.img", "z.img")
    m.primary_create("p.img")
    m.secondary_write("a.img", 65536, b"S" * 5)
    m.secondary_create("s.img")
    m.secondary_write("s.img", 0, b"s")
    m.secondary_rename("a.img", "r.img")
    view = m.view_tree()
    assert m.failover() == ("ok", None)
    assert m.s.stage == rm.DONE
    assert m.base_tree() == view == {
        "r.img": b"a" * 65536 + b"S" * 5 + b"a" * (70000 - 65541),
        "b.img": b"b" * 10, "s.img": b"s"}
    m.secondary_write("s.img", 1, b"t")
    assert m.base_bytes("s.img") == b"st"


def test_model_flavours_differ_where_documented():
    q = started(tree(a_img=b"a" * 10), "qemu")
    f = started(tree(a_img=b"a" * 10), "quorumfs")
    for m in (q, f):
        m.secondary_write("a.img", 0, b"S")
        m.primary_write("a.img", 1, b"P")
    with pytest.raises(rm.ReplicationError) as e:
        q.stop("secondary")
    assert e.value.desc == rm.JOB_CANCELLED
    assert q.view_bytes("a.img") == b"Sa" + b"a" * 8, "7.2 keeps the layers"
    f.stop("secondary")
    assert f.view_bytes("a.img") == f.base_bytes("a.img") == b"aP" + b"a" * 8
    assert f.command("secondary", "get-error") == ("ok", None)

    # A late primary write after failover: QEMU's NBD server still takes
    # it into the new primary's base; quorumfs refuses it.
    q, f = started(tree(a_img=b"a")), started(tree(a_img=b"a"), "quorumfs")
    for m in (q, f):
        assert m.failover() == ("ok", None)
    q.s.inbound_write("a.img", 0, b"x")
    assert q.base_bytes("a.img") == q.view_bytes("a.img") == b"x"
    with pytest.raises(rm.ReplicationError) as e:
        f.s.inbound_write("a.img", 0, b"y")
    assert e.value.desc == "Read-only file system"
    assert f.base_bytes("a.img") == b"a"


@pytest.mark.parametrize("seed", range(20))
def test_model_random_namespace_invariants(seed):
    """Random changes from both sides on a few files: H over B stays the
    checkpoint tree; a checkpoint makes V = P = B; failover makes B = V."""
    rng = random.Random("replication-model-%d" % seed)
    names = ["f%d" % i for i in range(5)]
    m = started({n: rng.randbytes(rng.randrange(0, 300000))
                 for n in names[:3]})

    def op(side):
        files = (m.primary_tree() if side == "primary" else m.view_tree())
        kind = rng.choice(["write", "truncate", "create", "unlink",
                           "rename"])
        present = sorted(files)
        absent = [n for n in names if n not in files]
        do = getattr(m, "%s_%s" % (side, kind))
        if kind == "create" and absent:
            do(rng.choice(absent))
        elif kind == "write" and present:
            do(rng.choice(present), rng.randrange(0, 300000),
               rng.randbytes(rng.randrange(1, 100000)))
        elif kind == "truncate" and present:
            do(rng.choice(present), rng.randrange(0, 400000))
        elif kind == "unlink" and present:
            do(rng.choice(present))
        elif kind == "rename" and present:
            do(rng.choice(present), rng.choice(names))

    for _ in range(60):
        if rng.random() < 0.1:
            m.checkpoint("primary")
            m.checkpoint("secondary")
            assert m.view_tree() == m.primary_tree() == m.base_tree()
        else:
            op(rng.choice(["primary", "secondary"]))
        m.check()
        assert m.base_tree() == m.primary_tree(), "every forward landed"
    view = m.view_tree()
    m.failover()
    assert m.base_tree() == view
