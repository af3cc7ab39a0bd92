"""Helpers for the mount tests: start and stop quorumfs, read its event
log, make scratch file systems for its children, and reach the system
calls Python does not wrap (renameat2, fallocate modes, utimensat with
UTIME_OMIT).

Every wait here polls a condition against a deadline; nothing sleeps for a
fixed time and hopes. The fixtures in conftest.py own the objects made
here and decide, from the test's outcome, whether teardown is checked
(unmount, the daemon must exit 0 with no sanitizer report) or best-effort.
"""

import ctypes
import ctypes.util
import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Patterns in the daemon's stderr that fail a test even when it exits 0.
SANITIZER_PATTERNS = ("ERROR: AddressSanitizer", "runtime error:",
                      "LeakSanitizer")


def daemon_binary():
    """Path of the quorumfs binary under test (QFS_BIN overrides)."""
    return os.environ.get("QFS_BIN", str(REPO / "build" / "quorumfs"))


def daemon_wrapper():
    """Command prefix from QFS_WRAPPER, e.g. "valgrind -q", as a list."""
    return shlex.split(os.environ.get("QFS_WRAPPER", ""))


def deadline_scale():
    """Deadlines stretch under a wrapper such as valgrind."""
    return 5.0 if daemon_wrapper() else 1.0


# -- small file helpers shared by the tests --

def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def write_file(path, data, mode=None):
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)


def pread_at(path, off, length):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, off)
    finally:
        os.close(fd)


def run_as(uid, gid, cwd, code, umask=0o022, groups=()):
    """Run python code as uid:gid with cwd and umask. The chdir happens
    before privileges drop, so root-only directories above cwd don't
    matter; paths in code are relative to cwd."""
    def drop():
        os.chdir(cwd)
        os.setgroups(list(groups))
        os.setgid(gid)
        os.setuid(uid)
        os.umask(umask)
    res = subprocess.run([sys.executable, "-I", "-c", code], preexec_fn=drop,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout



def enrol(children, workdir):
    """The children, empty, made one set (see Mount.enrol), by a daemon
    of their own on a scratch mount point under workdir."""
    workdir = Path(workdir)
    mnt = workdir / "enrol-mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    m = Mount(children, mnt, workdir / "enrol.jsonl", workdir, [])
    try:
        m.enrol()
    except BaseException:
        m.cleanup()
        raise


def wait_for(cond, timeout, what, interval=0.02):
    """Poll cond() until it returns a true value, which is returned.
    Fails the test with `what` when timeout seconds pass first."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# --- /proc/self/mountinfo ----------------------------------------------

def _unescape_mountinfo(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts():
    """List of (mount point, fs type) from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            out.append((_unescape_mountinfo(fields[4]), right.split()[0]))
    return out


def is_fuse_type(fstype):
    return fstype == "fuse" or fstype.startswith("fuse.")


def is_fuse_mounted(path):
    """True when a FUSE file system is mounted exactly on path."""
    path = os.path.realpath(path)
    return any(mp == path and is_fuse_type(t) for mp, t in mounts())


def fuse_mounts():
    return {mp for mp, t in mounts() if is_fuse_type(t)}


def is_mounted(path):
    path = os.path.realpath(path)
    return any(mp == path for mp, _ in mounts())


def lazy_unmount(path):
    """Best-effort detach of whatever is mounted on path (FUSE or not)."""
    subprocess.run(["fusermount3", "-u", "-z", str(path)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# --- scratch file systems for children --------------------------------

class ScratchFs:
    """A tmpfs or a loop-mounted ext4 image, mounted on `root`, with a
    fresh scratch directory `dir` inside it. Unmounted by close()."""

    def __init__(self, kind, workdir, size="512M"):
        self.kind = kind
        self.workdir = Path(workdir)
        self.root = self.workdir / ("%s-root" % kind)
        self.image = None
        self.root.mkdir(parents=True)
        if kind == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size,
                            "tmpfs", str(self.root)], check=True)
        elif kind == "ext4":
            self.image = self.workdir / "ext4.img"
            with open(self.image, "wb") as f:
                f.truncate(_parse_size(size))
            subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)],
                           check=True, stdout=subprocess.DEVNULL)
            subprocess.run(["mount", "-o", "loop", str(self.image),
                            str(self.root)], check=True)
        else:
            raise ValueError("unknown scratch fs kind %r" % kind)
        self.dir = self.root / "scratch"
        self.dir.mkdir()

    def close(self):
        """Unmount; returns an error string, or None when all went well."""
        if not is_mounted(self.root):
            return None
        res = subprocess.run(["umount", str(self.root)],
                             stderr=subprocess.PIPE, text=True)
        if res.returncode == 0:
            return None
        # Something still holds it (a daemon that survived): detach it so
        # nothing is left behind, but report the leak.
        subprocess.run(["umount", "-l", str(self.root)],
                       stderr=subprocess.DEVNULL)
        return "umount %s failed: %s" % (self.root, res.stderr.strip())


def _parse_size(size):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = str(size).upper()
    if size[-1] in units:
        return int(size[:-1]) * units[size[-1]]
    return int(size)


# --- the daemon --------------------------------------------------------

class Mount:
    """One quorumfs instance: its children, mount point, event log and
    process. Made by the `quorum` fixture; start() may be called again
    after the daemon exited, to remount the same children."""

    def __init__(self, children, mnt, log, workdir, opts):
        self.children = [str(c) for c in children]
        self.mnt = str(mnt)
        self.log = str(log)
        self.workdir = Path(workdir)
        # QFS_EXTRA_OPTS (e.g. "uring=on") runs a suite under an option.
        extra = os.environ.get("QFS_EXTRA_OPTS")
        self.opts = list(opts) + ([extra] if extra else [])
        self.stderr_path = self.workdir / "daemon.stderr"
        self.proc = None
        self.killed = False
        self.env = None  # the daemon's environment; None: the test's
        self.cmd = (daemon_wrapper() + [daemon_binary(), "-f", "-o",
                    ",".join(["log=" + self.log] + self.opts)] +
                    self.children + [self.mnt])

    def __repr__(self):
        return "Mount(%s)" % self.mnt

    # -- life cycle --

    def start(self, timeout=None):
        """Start the daemon and wait until it is mounted."""
        assert self.proc is None or self.proc.poll() is not None, \
            "daemon already running"
        timeout = timeout or 30 * deadline_scale()
        self.killed = False
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                env=self.env, preexec_fn=lambda: os.umask(0o022))

        def ready():
            if is_fuse_mounted(self.mnt):
                return True
            if self.proc.poll() is not None:
                pytest.fail("quorumfs exited with status %s before mounting"
                            "\ncommand: %s\nstderr:\n%s" % (
                                self.proc.returncode, shlex.join(self.cmd),
                                self.stderr()))
            return False

        wait_for(ready, timeout, "%s to be mounted" % self.mnt)
        return self

    def enrol(self):
        """Mount the children once and unmount, checked, so they carry
        the record of one set. A first mount refuses children that
        differ (README "The record in each child"); a test that plants
        differences before mounting enrols the children first."""
        self.start()
        self.unmount()
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check_stderr(self):
        """Fail when the daemon's stderr holds a sanitizer report."""
        text = self.stderr()
        for pat in SANITIZER_PATTERNS:
            if pat in text:
                pytest.fail("quorumfs stderr has %r:\n%s" % (pat, text))

    def unmount(self, timeout=None):
        """The checked path: fusermount3 -u, then the daemon must exit with
        status 0 within the deadline, leave no mount and print no
        sanitizer report."""
        timeout = timeout or 30 * deadline_scale()
        if is_fuse_mounted(self.mnt):
            res = subprocess.run(["fusermount3", "-u", self.mnt],
                                 stderr=subprocess.PIPE, text=True)
            if res.returncode != 0:
                pytest.fail("fusermount3 -u %s failed: %s" % (
                    self.mnt, res.stderr.strip()))
        assert not is_fuse_mounted(self.mnt), "still mounted after unmount"
        if self.proc is not None:
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.cleanup()
                pytest.fail("quorumfs did not exit within %.0fs of unmount"
                            "\nstderr:\n%s" % (timeout, self.stderr()))
            if rc != 0:
                pytest.fail("quorumfs exited with status %d after unmount"
                            "\nstderr:\n%s" % (rc, self.stderr()))
        self.check_stderr()

    def wait_exit(self, timeout=10):
        """For a test in which the daemon is expected to exit on its own:
        wait for it, detach whatever mount it left, and return its exit
        status. Teardown then does not check this mount."""
        self.killed = True
        try:
            rc = self.proc.wait(timeout * deadline_scale())
        except subprocess.TimeoutExpired:
            self.cleanup()
            pytest.fail("quorumfs did not exit within %.0fs\nstderr:\n%s" % (
                timeout, self.stderr()))
        lazy_unmount(self.mnt)
        return rc

    def kill(self, sig=signal.SIGKILL):
        """Kill the daemon (a crash, as far as the children can tell) and
        detach the dead mount. Teardown then does not check this mount."""
        self.killed = True
        if self.running():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10 * deadline_scale())
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        lazy_unmount(self.mnt)

    def cleanup(self):
        """Best effort, for a failed test: detach, terminate, kill."""
        if is_fuse_mounted(self.mnt):
            lazy_unmount(self.mnt)
        if self.running():
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- children --

    def child_file(self, i, relpath=""):
        """Path of relpath inside child i (relpath relative to the mount)."""
        return os.path.join(self.children[i], str(relpath).lstrip("/"))

    def path(self, relpath=""):
        """Path of relpath on the mount."""
        return os.path.join(self.mnt, str(relpath).lstrip("/"))

    # -- event log --

    def events(self):
        """Parsed events written so far. A complete line that is not a
        JSON object in the event envelope fails the test; a last line
        still being written (no newline yet) is skipped."""
        try:
            with open(self.log, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return []
        out = []
        for line in raw.split(b"\n")[:-1]:
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError as e:
                pytest.fail("event log line is not JSON (%s): %r" % (e, line))
            assert isinstance(ev, dict) and "event" in ev and \
                "timestamp" in ev, "event outside the envelope: %r" % ev
            out.append(ev)
        return out

    def wait_event(self, name, pred=lambda d: True, timeout=10):
        """Wait for an event called name whose data satisfies pred;
        return its data. Fails the test at the deadline."""
        timeout *= deadline_scale()
        end = time.monotonic() + timeout
        while True:
            alive = self.running()
            for ev in self.events():
                data = ev.get("data", {})
                if ev["event"] == name and pred(data):
                    return data
            if time.monotonic() > end or not alive:
                pytest.fail("no %s event matching the condition within "
                            "%.1fs%s; events seen:\n%s" % (
                                name, timeout,
                                "" if alive else " (daemon exited)",
                                "\n".join(json.dumps(e) for e in
                                          self.events())))
            time.sleep(0.02)

    def events_named(self, name):
        return [e["data"] for e in self.events() if e["event"] == name]


class DaemonRun:
    """Runs quorumfs expecting a command-line error: returns
    (returncode, stderr). If it mounts anything instead, the mount is
    removed and the test fails."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.count = 0

    def __call__(self, *args, timeout=10):
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = args[0]
        args = [str(a) for a in args]
        self.count += 1
        # Only mounts this command could have made count: other tests may
        # be mounting elsewhere on the machine at the same time.
        ours = {os.path.realpath(a) for a in args if not a.startswith("-")}
        workdir = os.path.realpath(self.workdir)

        def our_mounts():
            return {mp for mp in fuse_mounts()
                    if mp in ours or mp.startswith(workdir + "/")}

        before = our_mounts()
        err_path = self.workdir / ("run%d.stderr" % self.count)
        cmd = daemon_wrapper() + [daemon_binary()] + args
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        timeout *= deadline_scale()
        end = time.monotonic() + timeout
        new = set()
        while proc.poll() is None and time.monotonic() < end:
            new = our_mounts() - before
            if new:
                break
            time.sleep(0.02)
        new = our_mounts() - before
        rc = proc.poll()
        if new or rc is None:
            for mp in new:
                lazy_unmount(mp)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            pytest.fail("quorumfs %s instead of failing: %s\nstderr:\n%s" % (
                "mounted %s" % sorted(new) if new else
                "was still running after %.0fs" % timeout,
                shlex.join(cmd), err_path.read_text(errors="replace")))
        return rc, err_path.read_text(errors="replace")


# --- system calls Python does not wrap ---------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

SEEK_DATA = 3
SEEK_HOLE = 4


def _check(ret, what):
    if ret == -1:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))
    return ret


def renameat2(old, new, flags):
    _libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                ctypes.c_char_p, ctypes.c_uint]
    _check(_libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD,
                           os.fsencode(new), flags), "renameat2")


def fallocate(fd, mode, offset, length):
    _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                                ctypes.c_int64]
    _check(_libc.fallocate(fd, mode, offset, length), "fallocate")


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path, atime, mtime, follow=True):
    """atime/mtime: (sec, nsec) tuples, or UTIME_NOW / UTIME_OMIT."""
    ts = (_Timespec * 2)()
    for slot, t in zip(ts, (atime, mtime)):
        if isinstance(t, tuple):
            slot.tv_sec, slot.tv_nsec = t
        else:
            slot.tv_sec, slot.tv_nsec = 0, t
    flags = 0 if follow else 0x100  # AT_SYMLINK_NOFOLLOW
    _libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p,
                                ctypes.POINTER(_Timespec), ctypes.c_int]
    _check(_libc.utimensat(AT_FDCWD, os.fsencode(path), ts, flags),
           "utimensat")


def errno_name(e):
    return errno.errorcode.get(e, str(e))
