"""The same replication scripts through QEMU 7.2's replication driver and
through a pair of quorumfs mounts (README "Replication"), compared after
every step: the secondary VM's view, the secondary's base and the
primary, byte for byte; how many clusters each layer holds; and every
replication command's answer, QEMU's QMP text against the reason the
control file gives.

One image, as QEMU can only judge one. The scripts are the oracle
test's (test_replication_oracle.random_script): primary and secondary
writes, checkpoints, get-error on either side, and a failover, a stop
or nothing at the end. The one documented difference: a secondary's
stop without failover, which QEMU refuses while quorumfs drops the
layers; after it only the primaries are compared (QEMU's secondary
writes on into its layers, quorumfs's into its base).
QFS_REPLICATION_SCRIPTS sets how many scripts run (default 24).
"""

import errno
import os

import pytest

import qfs
from control_util import control, status
from qemu_replication import QemuReplication, qemu_system_problem
from test_replication_oracle import (CLUSTER, IMAGE, clusters_of,
                                     first_difference, random_script)

PROBLEM = qemu_system_problem()
pytestmark = pytest.mark.skipif(
    PROBLEM is not None, reason="QEMU oracle unavailable: %s" % (PROBLEM,))
SCRIPTS = range(int(os.environ.get("QFS_REPLICATION_SCRIPTS", "24")))

# QEMU's command names as `replication ...` commands on each side.
VERBS = {"start": "start %s", "checkpoint": "checkpoint",
         "stop": "stop", "stop-failover": "stop failover",
         "get-error": "get-error"}


class Mounts:
    """The quorumfs pair of one image: view V over base b1, inbound I,
    primary P over p1 with I as its replication child."""

    def __init__(self, quorum, root, data):
        for d in ("p1", "b1", "act", "hid", "inb", "view", "pm"):
            (root / d).mkdir(parents=True)
        for d in ("p1", "b1"):
            qfs.write_file(root / d / "disk.img", data)
        self.root = root
        self.inb = root / "inb"
        self.s = quorum(children=[root / "b1"], mountpoint=root / "view",
                        opts=["replication=secondary",
                              "active=%s" % (root / "act"),
                              "hidden=%s" % (root / "hid"),
                              "inbound=%s" % self.inb])
        qfs.wait_for(lambda: qfs.is_fuse_mounted(str(self.inb)),
                     10 * qfs.deadline_scale(), "the inbound mount")
        self.p = quorum(children=[root / "p1"], mountpoint=root / "pm",
                        opts=["read-pattern=fifo"], threshold=1)
        control(self.p, "add %s mode=primary name=sec" % self.inb)
        qfs.wait_for(lambda: status(self.p)["children"][1]["state"] == "ok",
                     30 * qfs.deadline_scale(), "the replication child")
        self.primary_alive = True

    def command(self, side, name):
        """("ok", None) or ("error", reason), as QEMU's harness answers."""
        m = self.p if side == "primary" else self.s
        verb = VERBS[name]
        if "%s" in verb:
            verb %= side
        try:
            control(m, "replication " + verb)
        except OSError:
            return ("error", status(m)["last-control-error"]["reason"])
        return ("ok", None)

    def write(self, side, off, length, byte):
        m = self.p if side == "primary" else self.s
        fd = os.open(m.path("disk.img"), os.O_WRONLY)
        try:
            os.pwrite(fd, bytes([byte]) * length, off)
        finally:
            os.close(fd)

    def view(self):
        try:
            return qfs.read_file(self.s.path("disk.img"))
        except OSError as e:
            return os.strerror(e.errno)

    def base(self):
        return qfs.read_file(self.root / "b1" / "disk.img")

    def primary(self):
        return qfs.read_file(self.root / "p1" / "disk.img")

    def clusters(self, layer):
        return status(self.s)["replication"]["layers"][layer]["clusters"]


class Both:
    """QEMU and the mounts, one step at a time."""

    def __init__(self, q, m):
        self.q, self.m = q, m
        self.stopped = False  # a secondary stop without failover ran

    def command(self, side, name):
        got, want = self.m.command(side, name), self.q.command(side, name)
        if not (self.stopped or (side, name) == ("secondary", "stop")):
            assert got == want, "%s %s: quorumfs %r, QEMU %r" % (
                side, name, got, want)
        if (side, name) == ("secondary", "stop") and want[0] == "error":
            self.stopped = True  # QEMU 7.2 refuses; quorumfs drops layers

    def step(self, step):
        kind = step[0]
        if kind in ("pw", "sw"):
            side = "primary" if kind == "pw" else "secondary"
            if side == "primary" and not self.m.primary_alive:
                return
            self.m.write(side, *step[1:])
            assert self.q._qemu_io(side, "colo1" if kind == "pw" else "top",
                                   "write -P 0x%02x %d %d" % (
                                       step[3], step[1], step[2])) is None
        elif kind == "checkpoint":
            for side in ("primary", "secondary"):
                if side == "secondary" or self.m.primary_alive:
                    self.command(side, "checkpoint")
        elif kind == "get-error":
            if step[1] == "secondary" or self.m.primary_alive:
                self.command(step[1], "get-error")
        elif kind == "failover":
            self.m.p.kill()
            self.m.primary_alive = False
            got = self.m.command("secondary", "stop-failover")
            want = self.q.failover()
            assert got == want, (got, want)
        elif kind == "stop":
            self.command("primary", "stop")
            self.command("secondary", "stop")

    def compare(self, where):
        snaps = []
        if not self.stopped:
            snaps.append(("base", self.m.base(), self.q.base_bytes()))
        if self.m.primary_alive:
            snaps.append(("primary", self.m.primary(),
                          self.q.primary_bytes()))
        if not self.stopped:
            snaps.append(("view", self.m.view(), self.q.view_bytes()))
            for layer in ("active", "hidden"):
                if self.q.s is not None and \
                        {"active", "hidden"} <= self.q.node_names():
                    snaps.append(("%s clusters" % layer,
                                  self.m.clusters(layer),
                                  len(clusters_of(self.q.layer_map(layer)))))
        problems = []
        for name, got, want in snaps:
            if isinstance(got, int):
                d = None if got == want else "%d, QEMU %d" % (got, want)
            else:
                d = first_difference(got, want)
            if d:
                problems.append("%s: %s" % (name, d))
        assert not problems, "after %s:\n  %s" % (where,
                                                   "\n  ".join(problems))


def inside(step):
    """Whether a write stays on the image: the scripts' cluster-straddling
    extents can start before it or end past it, which QEMU's fixed-size
    disk refuses and a file on the mount does not."""
    return step[0] not in ("pw", "sw") or \
        (step[1] >= 0 and step[1] + step[2] <= IMAGE)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", SCRIPTS)
def test_quorumfs_answers_as_qemu_step_by_step(quorum, tmp_path, seed):
    rng, steps = random_script(seed)
    fill = rng.randbytes(IMAGE)
    q = QemuReplication(size=IMAGE, fill=fill, timeout=30.0)
    try:
        q.setup(start=False)
        both = Both(q, Mounts(quorum, tmp_path / "m", fill))
        both.command("secondary", "start")
        both.command("primary", "start")
        both.compare("start")
        for i, step in enumerate(steps):
            if not inside(step):
                continue
            both.step(step)
            both.compare("step %d %s (seed %d)" % (i, step, seed))
    finally:
        q.close()


def test_the_view_before_start_fails_reads_as_qemu_does(quorum, tmp_path):
    fill = b"\xaa" * (1 << 20)
    q = QemuReplication(size=1 << 20, fill=fill, timeout=30.0)
    try:
        q.setup(start=False)
        m = Mounts(quorum, tmp_path / "m", fill)
        got, want = m.view(), q.view_bytes()
        assert got == os.strerror(errno.EIO) and isinstance(want, str) \
            and "Input/output error" in want, (got, want)
    finally:
        q.close()


assert CLUSTER == 64 * 1024
