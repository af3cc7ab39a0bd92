"""Helpers for the control-file and resync tests (README "Runtime control").

- control() / control_errno(): one write() of one command to
  MOUNTPOINT/.control, the way `echo CMD > .control` does it.
- status() / wait_status(): the JSON status document, parsed, and a
  deadline-bound wait for a condition on it.
- tree_state(): everything a resync must reproduce about a child's tree
  (types, data maps with holes, content hashes, modes, owners, symlink
  targets, device numbers, xattrs, hard-link groups), for comparing a new
  child with the old ones. Times are kept apart (tree_mtimes()) because
  files written after the copy legitimately differ by microseconds from
  child to child.
- Writer: a thread that writes a file over and over, checks that every
  write succeeded, and keeps a record of what it wrote.
"""

import errno
import hashlib
import json
import mmap
import os
import random
import socket
import stat
import threading
import time

import pytest

import qfs

KiB = 1024
MiB = 1024 * KiB

RESERVED = {".control", ".children", ".quorumfs"}


# --- the control file -------------------------------------------------

def control(m, command):
    """Write one command (str or bytes) to m's .control in one write().
    Raises OSError on refusal. Returns what write() returned."""
    if isinstance(command, str):
        command = command.encode()
    fd = os.open(m.path(".control"), os.O_WRONLY)
    try:
        return os.write(fd, command)
    finally:
        os.close(fd)


def control_errno(m, command):
    """Write a command that must be refused; return the errno."""
    try:
        n = control(m, command)
    except OSError as e:
        return e.errno
    pytest.fail("command %r was accepted (write returned %r)" % (
        command[:200], n))


def refused(m, command, err):
    """command is refused with errno err; returns the reason status
    gives."""
    assert control_errno(m, command) == err, command
    return status(m)["last-control-error"]["reason"]


def socket_request(path, line, timeout=5):
    """One request through the control socket; the reply, parsed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(line.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return json.loads(b"".join(chunks))


def quarantine_list(m):
    """The quarantine's entries, oldest first, through the control socket
    (`quarantine list` is a read, as heal-info is)."""
    doc = socket_request(status(m)["control-socket"], "quarantine list")
    assert doc["mountpoint"] == m.mnt, doc
    return doc["entries"]


def status_text(m):
    with open(m.path(".control"), "rb") as f:
        return f.read()


def status(m):
    raw = status_text(m)
    try:
        doc = json.loads(raw)
    except ValueError as e:
        pytest.fail("status is not JSON (%s): %r" % (e, raw[:2000]))
    assert isinstance(doc, dict), doc
    return doc


def child_status(doc, name):
    """The status entry of the child called name (None if absent)."""
    for c in doc["children"]:
        if c["name"] == name:
            return c
    return None


def wait_status(m, pred, timeout, what):
    """Poll the status until pred(doc) is true; return that doc."""
    box = []

    def cond():
        doc = status(m)
        if pred(doc):
            box.append(doc)
            return True
        return False

    qfs.wait_for(cond, timeout * qfs.deadline_scale(), what, interval=0.01)
    return box[0]


def wait_child_state(m, name, state, timeout=60):
    last = {}

    def reached(d):
        last["child"] = child_status(d, name) or {}
        return last["child"].get("state") == state

    try:
        return wait_status(m, reached, timeout,
                           "child %s to be %s" % (name, state))
    except BaseException:
        print("last status of %s: %s" % (name, last.get("child")))
        raise


def check_status_shape(doc):
    """Every documented field is there with its type."""
    assert isinstance(doc["threshold"], int)
    assert doc["read-pattern"] in ("quorum", "fifo")
    assert isinstance(doc["rewrite-corrupted"], bool)
    assert isinstance(doc["blkverify"], bool)
    assert isinstance(doc["mountpoint"], str)
    assert isinstance(doc["events-dropped"], int)
    lce = doc["last-control-error"]
    assert lce is None or (isinstance(lce, dict) and
                           isinstance(lce["command"], str) and
                           isinstance(lce["reason"], str)), lce
    assert isinstance(doc["children"], list)
    for c in doc["children"]:
        for key in ("name", "path", "reason"):
            assert isinstance(c[key], str), (key, c)
        assert c["state"] in ("ok", "syncing", "failed", "stale"), c
        assert isinstance(c["votes"], bool), c
        assert c["votes"] == (c["state"] == "ok"), c
        rs = c["resync"]
        for key in ("bytes-done", "bytes-total", "files-done",
                    "files-total", "percent"):
            assert isinstance(rs[key], int), (key, c)
        for key in ("read", "write", "flush"):
            assert isinstance(c["errors"][key], int), (key, c)
        assert (c["view"] is None) == (c.get("kind") == "replication"), c
        assert c["view"] is None or c["view"].startswith(".children/"), c
    t = doc["totals"]
    assert t["children"] == len(doc["children"]), doc
    assert t["voting"] == sum(c["votes"] for c in doc["children"]), doc
    for kind in ("read", "write", "flush"):
        assert t[kind + "-errors"] == sum(
            c["errors"][kind] for c in doc["children"]), (kind, doc)


def stable_status(doc):
    """The status without what a refused command may change."""
    doc = json.loads(json.dumps(doc))
    doc.pop("last-control-error", None)
    return doc


def control_errors(m):
    return m.events_named("CONTROL_ERROR")


# --- tree comparison --------------------------------------------------

def data_map(fd, size):
    """[(start, end)] of the data regions by SEEK_DATA / SEEK_HOLE."""
    out = []
    off = 0
    while off < size:
        try:
            data = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        out.append((data, hole))
        off = hole
    return out


def file_digest(path):
    """(size, data map, sha256 of the data regions, blocks)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        regions = data_map(fd, st.st_size)
        h = hashlib.sha256()
        for start, end in regions:
            off = start
            while off < end:
                chunk = os.pread(fd, min(4 * MiB, end - off), off)
                if not chunk:
                    break
                h.update(b"%d:" % off)
                h.update(chunk)
                off += len(chunk)
        return st.st_size, tuple(regions), h.hexdigest()
    finally:
        os.close(fd)


def xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise
    out = []
    for n in sorted(names):
        if n.startswith("security."):
            continue  # labels are the host's business, not the copy's
        out.append((n, os.getxattr(path, n, follow_symlinks=False)))
    return tuple(out)


def walk(root):
    """Yield (relpath, full path, lstat) of every entry under root,
    without the reserved names at the top."""
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        for name in sorted(os.listdir(full)):
            if not rel and name in RESERVED:
                continue
            r = os.path.join(rel, name) if rel else name
            p = os.path.join(root, r)
            st = os.lstat(p)
            yield r, p, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(r)


def tree_state(root):
    """{relpath: description} plus the hard-link groups, for root."""
    st = os.lstat(root)
    out = {".": ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                 xattrs(root))}
    inodes = {}
    for rel, p, st in walk(root):
        mode = st.st_mode
        common = (stat.S_IMODE(mode), st.st_uid, st.st_gid)
        if stat.S_ISREG(mode):
            desc = ("reg",) + common + file_digest(p) + (xattrs(p),)
            if st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
        elif stat.S_ISDIR(mode):
            desc = ("dir",) + common + (xattrs(p),)
        elif stat.S_ISLNK(mode):
            desc = ("lnk", st.st_uid, st.st_gid, os.readlink(p))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            desc = (("chr" if stat.S_ISCHR(mode) else "blk"),) + common + (
                st.st_rdev, xattrs(p))
        elif stat.S_ISFIFO(mode):
            desc = ("fifo",) + common + (xattrs(p),)
        else:
            desc = ("other", mode)
        out[rel] = desc
    links = frozenset(frozenset(v) for v in inodes.values())
    return out, links


def tree_mtimes(root, rels):
    """{rel: mtime_ns} of the given entries under root (lstat)."""
    return {rel: os.lstat(os.path.join(root, rel)).st_mtime_ns
            for rel in rels}


def diff_trees(a, b, limit=20):
    """Readable differences between two tree_state() results."""
    (ta, la), (tb, lb) = a, b
    out = []
    for rel in sorted(set(ta) | set(tb)):
        if ta.get(rel) != tb.get(rel):
            out.append("%s:\n    %r\n != %r" % (rel, ta.get(rel),
                                                tb.get(rel)))
    if la != lb:
        out.append("hard-link groups %r != %r" % (sorted(map(sorted, la)),
                                                  sorted(map(sorted, lb))))
    return "\n".join(out[:limit]) + (
        "\n... %d more" % (len(out) - limit) if len(out) > limit else "")


def assert_same_tree(reference_root, other_root):
    a = tree_state(reference_root)
    b = tree_state(other_root)
    assert a == b, "%s differs from %s:\n%s" % (
        other_root, reference_root, diff_trees(a, b))
    return a


# --- data -------------------------------------------------------------

def block(tag, seq, off, size):
    """size bytes that name their writer, sequence number and offset."""
    unit = b"%s:%08d:%012d|" % (tag.encode(), seq, off)
    return (unit * (size // len(unit) + 1))[:size]


class AlignedBuffer:
    """A page-aligned buffer for O_DIRECT."""

    def __init__(self, size):
        self.map = mmap.mmap(-1, size)
        self.size = size

    def fill(self, data):
        self.map[:len(data)] = data
        return memoryview(self.map)[:len(data)]

    def close(self):
        self.map.close()


class Writer(threading.Thread):
    """Calls step(self, seq) until stopped; step does one write and must
    raise on any failure. Every failure is recorded (and ends the
    thread), every completed step counted."""

    def __init__(self, name, step, setup=None, teardown=None):
        super().__init__(name=name, daemon=True)
        self.step = step
        self.setup = setup
        self.teardown = teardown
        self.stop_event = threading.Event()
        self.errors = []
        self.count = 0
        self.rng = random.Random(name)
        self.state = {}

    def run(self):
        try:
            if self.setup:
                self.setup(self)
            while not self.stop_event.is_set():
                self.step(self, self.count)
                self.count += 1
        except Exception as e:  # recorded and asserted on by the test
            self.errors.append("%s after %d writes: %r" % (
                self.name, self.count, e))
        finally:
            if self.teardown:
                try:
                    self.teardown(self)
                except Exception as e:
                    self.errors.append("%s teardown: %r" % (self.name, e))

    def stop(self, timeout=60):
        self.stop_event.set()
        self.join(timeout * qfs.deadline_scale())
        assert not self.is_alive(), "%s did not stop" % self.name


def wait_writes(writers, more, timeout, what):
    """Wait until every writer has done `more` further writes (or died)."""
    target = {w: w.count + more for w in writers}
    qfs.wait_for(lambda: all(w.count >= target[w] or not w.is_alive()
                             for w in writers),
                 timeout * qfs.deadline_scale(), what)


def pwrite_full(fd, data, off):
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], off + done)
        if n <= 0:
            raise OSError(errno.EIO, "short write %d at %d" % (n, off + done))
        done += n
    return done


def monotonic_ms():
    return int(time.monotonic() * 1000)
