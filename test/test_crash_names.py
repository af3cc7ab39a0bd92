"""kill -9 in the middle of namespace changes (README "The record in each
child", "Faults").

Two writers create, remove, rename, link and change the metadata of
entries in a directory each, through the mount, while the daemon is
killed at a seeded point. A call the daemon answered reached at least
the threshold of children; one it was still working on may have reached
any number. The next mount settles what the intent log names, so that:
  - every child holds the same tree (names, kinds, data, modes, owners,
    symlink targets, xattrs);
  - each writer's directory is what its acknowledged calls made it, plus
    at most the call the kill cut off, whole or in one of the states it
    passes through (a file created but not yet written).
Each round starts from what the previous one left, so later kills land
on trees earlier settles made. In the second test one child is a faultfs
that stalls every change and is killed with the daemon, so every round
leaves that child without the changes in flight, for the settle to bring.
"""

import copy
import errno
import json
import os
import random
import signal
import stat
import threading
import time

import pytest

import qfs
from faultfs import FaultFS
from control_util import assert_same_tree, tree_state, wait_status, xattrs

ROUNDS = 20
NAMES = ["f%02d" % i for i in range(24)]
SUBDIRS = ["s0", "s1", "s2"]


def all_ok(doc):
    return all(c["state"] == "ok" and c["votes"] for c in doc["children"])


# --- the model of one writer's directory --------------------------------

def file_entry(data=b"", mode=0o644, attrs=()):
    return ("file", data, mode, tuple(sorted(attrs)))


def below(model, rel):
    return [p for p in model if p == rel or p.startswith(rel + "/")]


class Writer(threading.Thread):
    """Random namespace and metadata calls under root/<name>. model maps
    paths relative to that directory to ("file", data, mode, xattrs),
    ("dir", mode) or ("link", target). pending: the models the call in
    flight may leave (its intermediate states and its end), or None."""

    def __init__(self, m, name, seed, model):
        super().__init__(name=name, daemon=True)
        self.m, self.rng = m, random.Random(seed)
        self.base = m.path(name)
        self.model = model
        self.pending = None
        self.busy_since = None
        self.count = 0
        self.error = None
        self.stop = threading.Event()

    def full(self, rel):
        return os.path.join(self.base, rel)

    def dirs(self):
        return [""] + [p for p, e in self.model.items() if e[0] == "dir"]

    def pick(self, kind=None, present=True):
        """A path of the given kind (or any entry), or an absent name in
        a present directory."""
        if present:
            got = [p for p, e in self.model.items()
                   if kind is None or e[0] == kind]
            return self.rng.choice(got) if got else None
        d = self.rng.choice(self.dirs())
        rel = os.path.join(d, self.rng.choice(NAMES)) if d else \
            self.rng.choice(NAMES)
        return None if rel in self.model else rel

    def run(self):
        try:
            while not self.stop.is_set():
                self.step()
                self.count += 1
        except OSError as e:
            self.error = (time.monotonic(), e)

    def call(self, outcomes, fn, *args):
        """Run fn; the model becomes outcomes[-1] once it returned."""
        self.pending = outcomes
        self.busy_since = time.monotonic()
        fn(*args)
        self.model, self.pending = outcomes[-1], None
        self.busy_since = None

    def stuck(self, seconds):
        since = self.busy_since
        return since is not None and time.monotonic() - since > seconds

    def after(self, change):
        new = copy.deepcopy(self.model)
        change(new)
        return new

    def step(self):
        op = self.rng.choice(["create", "create", "unlink", "rename",
                              "rename", "overwrite", "chmod", "mkdir",
                              "rmdir", "symlink", "xattr", "rendir"])
        getattr(self, "op_" + op)()

    # Each op_ either does one call or returns having done nothing.

    def op_create(self):
        rel = self.pick(present=False)
        if rel is None:
            return
        data = self.rng.randbytes(self.rng.randrange(1, 6000))
        empty = self.after(lambda m: m.__setitem__(rel, file_entry()))
        full = self.after(lambda m: m.__setitem__(rel, file_entry(data)))

        def create():
            fd = os.open(self.full(rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                         0o644)
            try:
                assert os.write(fd, data) == len(data)
            finally:
                os.close(fd)
        self.call([empty, full], create)

    def op_unlink(self):
        rel = self.pick()
        if rel is None or self.model[rel][0] == "dir":
            return
        self.call([self.after(lambda m: m.pop(rel))], os.unlink,
                  self.full(rel))

    def op_rename(self):
        src = self.pick()
        dst = self.pick(present=self.rng.random() < 0.3)
        if src is None or dst is None or src == dst or \
                self.model[src][0] == "dir" or self.model[dst if dst in
                                                          self.model else
                                                          src][0] == "dir":
            return

        def move(m):
            m[dst] = m.pop(src)
        self.call([self.after(move)], os.rename, self.full(src),
                  self.full(dst))

    def op_rendir(self):
        src = self.pick("dir")
        dst = self.rng.choice(SUBDIRS)
        if src is None or dst in self.model or "/" in src:
            return

        def move(m):
            for p in below(m, src):
                m[dst + p[len(src):]] = m.pop(p)
        self.call([self.after(move)], os.rename, self.full(src),
                  self.full(dst))

    def op_overwrite(self):
        rel = self.pick("file")
        if rel is None:
            return
        old = self.model[rel]
        data = self.rng.randbytes(max(len(old[1]), 1))

        def write():
            fd = os.open(self.full(rel), os.O_WRONLY)
            try:
                assert os.pwrite(fd, data, 0) == len(data)
            finally:
                os.close(fd)
        self.call([self.after(lambda m: m.__setitem__(
            rel, ("file", data) + old[2:]))], write)

    def op_chmod(self):
        rel = self.pick()
        if rel is None or self.model[rel][0] == "link":
            return
        mode = self.rng.choice([0o600, 0o640, 0o644, 0o755, 0o700])
        e = self.model[rel]
        new = e[:2] + (mode,) + e[3:] if e[0] == "file" else ("dir", mode)
        self.call([self.after(lambda m: m.__setitem__(rel, new))],
                  os.chmod, self.full(rel), mode)

    def op_mkdir(self):
        name = self.rng.choice(SUBDIRS)
        if name in self.model:
            return
        self.call([self.after(lambda m: m.__setitem__(name, ("dir", 0o755)))],
                  os.mkdir, self.full(name))

    def op_rmdir(self):
        rel = self.pick("dir")
        if rel is None or below(self.model, rel) != [rel]:
            return
        self.call([self.after(lambda m: m.pop(rel))], os.rmdir,
                  self.full(rel))

    def op_symlink(self):
        rel = self.pick(present=False)
        if rel is None:
            return
        target = "t%d" % self.rng.randrange(1000)
        self.call([self.after(lambda m: m.__setitem__(rel, ("link",
                                                            target)))],
                  os.symlink, target, self.full(rel))

    def op_xattr(self):
        rel = self.pick("file")
        if rel is None:
            return
        value = b"v%d" % self.rng.randrange(1000)
        e = self.model[rel]
        attrs = dict(e[3])
        attrs["user.k"] = value
        self.call([self.after(lambda m: m.__setitem__(
            rel, e[:3] + (tuple(sorted(attrs.items())),)))],
                  os.setxattr, self.full(rel), "user.k", value)


def observed(root):
    """The model of what root holds now."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = file_entry(qfs.read_file(p),
                                      stat.S_IMODE(st.st_mode), xattrs(p))
    return out


def settle_writer(w, got):
    """The model w's directory may have after the kill: its last
    acknowledged one, or one of the states of the call cut off."""
    allowed = [w.model] + (w.pending or [])
    assert got in allowed, (
        "%s after the kill (%d calls) is none of the %d states it may be "
        "in; it differs from the acknowledged one in %r" % (
            w.name, w.count, len(allowed),
            sorted(p for p in set(got) | set(w.model)
                   if got.get(p) != w.model.get(p))[:10]))
    return got


def kill_rounds(m, seed, crash=lambda m, writers: m.kill()):
    """ROUNDS of writers killed at a seeded point by crash(m, writers),
    each remount checked. Returns how many rounds left the children
    different before it."""
    names = ["w0", "w1"]
    models = {}
    for name in names:
        os.mkdir(m.path(name))
        models[name] = {}
    rng = random.Random(seed)
    cut_off = differed = 0
    for rnd in range(ROUNDS):
        writers = [Writer(m, name, "%d-%d-%s" % (seed, rnd, name),
                          models[name]) for name in names]
        target = rng.randrange(5, 80)
        for w in writers:
            w.start()
        qfs.wait_for(lambda: sum(w.count for w in writers) >= target or
                     any(w.error for w in writers),
                     60 * qfs.deadline_scale(),
                     "%d calls in round %d" % (target, rnd), interval=0.002)
        killed_at = time.monotonic()
        crash(m, writers)
        for w in writers:
            w.stop.set()
            w.join(30 * qfs.deadline_scale())
            assert not w.is_alive(), "%s hung after the kill" % w.name
            if w.error:
                t, e = w.error
                assert t >= killed_at, "%s failed before the kill: %r" % (
                    w.name, e)
                # ECANCELED: a request on its way through FUSE over
                # io_uring when the daemon died.
                assert e.errno in (errno.ENOTCONN, errno.ECONNABORTED,
                                   errno.ENOENT, errno.ECANCELED), e
        cut_off += sum(w.pending is not None for w in writers)
        states = [tree_state(c) for c in m.children]
        differed += states[0] != states[1] or states[0] != states[2]

        m.start()
        wait_status(m, all_ok, 60, "every child to be ok after kill %d" % rnd)
        ref = assert_same_tree(m.children[0], m.children[1])
        assert ref == assert_same_tree(m.children[0], m.children[2])
        for w in writers:
            models[w.name] = settle_writer(w, observed(m.path(w.name)))
    assert not m.events_named("QUORUM_FAILURE")
    m.unmount()
    print("\n%d kills, %d calls cut off, children differed after %d; "
          "final trees of %s entries" % (
              ROUNDS, cut_off, differed, [len(models[n]) for n in names]))
    return differed


@pytest.mark.timeout(300)
def test_kill_9_during_namespace_changes_leaves_identical_children(
        backing, quorum):
    kill_rounds(quorum(n=3, threshold=2), 1207)




# Every change the writers make, stalled on one child: the daemon and that
# child's machine then die together while the change is on its way, so
# the child never takes it while the other two have.
HANG = ("hang op=mkdir,rmdir,unlink,rename,create,symlink,setxattr,chmod,"
        "write path=/w*")


@pytest.mark.timeout(300)
def test_kill_9_with_a_child_that_died_too_settles_what_it_missed(
        tmp_path, tmpfs_dir, scratch_fs, quorum):
    mnt = tmp_path / "faulty"
    mnt.mkdir()
    ffs = FaultFS(scratch_fs("tmpfs"), mnt, control=tmp_path / "rules")
    ffs.start()

    def crash(m, writers):
        ffs.set(HANG)
        qfs.wait_for(lambda: all(w.stuck(0.1) or w.error for w in writers),
                     30 * qfs.deadline_scale(),
                     "both writers to wait on the stalled child")
        os.kill(m.proc.pid, signal.SIGKILL)
        ffs.cleanup()   # the stalled changes die with faultfs
        m.kill()
        ffs.start()

    try:
        base = qfs.Path(tmpfs_dir)
        children = [base / "c0", base / "c1"]
        for c in children:
            c.mkdir()
        m = quorum(children=children + [qfs.Path(mnt)], threshold=2)
        differed = kill_rounds(m, 2412, crash)
    except BaseException:
        ffs.cleanup()
        raise
    ffs.stop()
    assert differed == ROUNDS, \
        "the children were the same after %d of %d kills" % (
            ROUNDS - differed, ROUNDS)


@pytest.mark.timeout(60)
def test_a_file_on_a_reused_inode_number_is_announced_anew(scratch_fs,
                                                           quorum):
    """ext4 gives a removed file's inode number to the next file made. The
    intent log must still name the new file's writes: the settle after a
    crash finds only what the log names, and would leave the new file's
    unsynced data as it is on each child."""
    children = [scratch_fs("ext4") for _ in range(3)]
    m = quorum(children=children, threshold=2)
    qfs.write_file(m.path("first.img"), b"a" * 4096)
    ino = os.stat(children[0] / "first.img").st_ino
    os.unlink(m.path("first.img"))
    qfs.write_file(m.path("second.img"), b"b" * 4096)
    assert os.stat(children[0] / "second.img").st_ino == ino, \
        "ext4 did not reuse the inode number: nothing to test"
    with open(children[0] / ".quorumfs" / "intent") as f:
        named = {json.loads(line).get("p") for line in f}
    assert "first.img" in named, named
    assert "second.img" in named, named
