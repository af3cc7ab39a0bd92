"""Start, command and stop faultfs, the fault-injecting pass-through file
system (test/faultfs/), so that a test can mount it as a quorumfs child.

    with FaultFS(backing_dir, mountpoint) as ffs:
        ffs.set("error=EIO op=read path=/disk.img offset=0 length=4096")
        ...                     # reads of that range fail with EIO
        ffs.clear()             # pure pass-through again

With powercut=True faultfs runs in power-cut mode (test/faultfs/README.md,
"Power cuts"): power_cut() then drops whatever was not made durable and
leaves a dead disk, and power_on() boots it again over the same backing
directory:

    ffs = FaultFS(backing_dir, mountpoint, powercut=True).start()
    ...                     # writes, fsyncs, renames on ffs.mnt
    ffs.power_cut()         # backing_dir now holds what survived
    ffs.power_on()          # mounted again, serving that

On a clean exit from the with-block (or stop()) faultfs is unmounted
*checked*: rules cleared, fusermount3 -u, the process must exit 0 and print
no sanitizer report. After an exception (or cleanup()) teardown is
best-effort: lazy unmount, terminate, kill.

Rules are put in force by replacing the rules file with rename() after
faultfs --check-rules accepted them, each version with its own mtime, so
they apply to every operation that starts after set() returns. See
test/faultfs/README.md for the syntax.

The binary is FAULTFS_BIN, else faultfs next to QFS_BIN (so a sanitizer
build tests its own faultfs), else build/faultfs.
"""

import errno
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SANITIZER_PATTERNS = ("ERROR: AddressSanitizer", "runtime error:",
                      "LeakSanitizer")


class FaultFSError(Exception):
    pass


def faultfs_binary():
    if os.environ.get("FAULTFS_BIN"):
        return os.environ["FAULTFS_BIN"]
    if os.environ.get("QFS_BIN"):
        return str(Path(os.environ["QFS_BIN"]).parent / "faultfs")
    return str(REPO / "build" / "faultfs")


def _unescape(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def fuse_mounted(path):
    """True when a FUSE file system is mounted exactly on path."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype = right.split()[0]
            if (_unescape(left.split()[4]) == path and
                    (fstype == "fuse" or fstype.startswith("fuse."))):
                return True
    return False


def rule(action, op=None, path=None, offset=None, length=None):
    """One rule line: rule("error=EIO", op="read", path="/f", offset=0,
    length=4096). op may be a list of operation names."""
    words = [action]
    if op is not None:
        words.append("op=" + (op if isinstance(op, str) else ",".join(op)))
    if path is not None:
        words.append("path=%s" % path)
    if offset is not None:
        words.append("offset=%d" % offset)
    if length is not None:
        words.append("length=%d" % length)
    return " ".join(words)


class FaultFS:
    """faultfs over `backing`, mounted on `mnt`. The rules file and
    faultfs's stderr live in a private temporary directory, removed by
    stop() and cleanup(), unless `control` names the rules file (the
    stderr file is then next to it and stays). powercut=True adds
    -o powercut."""

    def __init__(self, backing, mnt, control=None, opts=(), binary=None,
                 powercut=False):
        self.backing = str(backing)
        self.mnt = str(mnt)
        self.powercut = powercut
        self._tmp = None
        if control is None:
            self._tmp = tempfile.mkdtemp(prefix="faultfs-")
            control = os.path.join(self._tmp, "rules")
        self.control = str(control)
        self.opts = list(opts)
        self.binary = binary or faultfs_binary()
        self.proc = None
        self._rules = []
        self._generation = 0
        self._stderr_path = self.control + ".stderr"

    def __repr__(self):
        return "FaultFS(%s on %s%s)" % (self.backing, self.mnt,
                                        ", powercut" if self.powercut else "")

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.stop()
        else:
            self.cleanup()
        return False

    # -- life cycle --

    def command(self):
        opts = ["control=" + self.control] + (
            ["powercut"] if self.powercut else []) + self.opts
        return [self.binary, "-f", "-o", ",".join(opts), self.backing,
                self.mnt]

    def start(self, timeout=10):
        """Start faultfs and wait until it is mounted."""
        self._install([])
        with open(self._stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.command(),
                                         stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err)
        end = time.monotonic() + timeout
        while not fuse_mounted(self.mnt):
            if self.proc.poll() is not None:
                msg = ("faultfs exited with status %d before mounting\n"
                       "command: %s\nstderr:\n%s" % (
                           self.proc.returncode, shlex.join(self.command()),
                           self.stderr()))
                self.cleanup()
                raise FaultFSError(msg)
            if time.monotonic() > end:
                msg = "faultfs did not mount %s within %.0fs\nstderr:\n%s" % (
                    self.mnt, timeout, self.stderr())
                self.cleanup()
                raise FaultFSError(msg)
            time.sleep(0.01)
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr(self):
        try:
            with open(self._stderr_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self, timeout=10):
        """The checked path: clear the rules (releasing every stalled
        operation), unmount, and require exit status 0 within timeout and
        no sanitizer report. On failure, clean up and raise."""
        self._stop_checked(timeout)
        self._remove_tmp()

    def _stop_checked(self, timeout):
        try:
            self.clear()
            self._unmount(timeout)
            if self.proc is not None:
                try:
                    rc = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    raise FaultFSError("faultfs did not exit within %.0fs "
                                       "of unmount\nstderr:\n%s" % (
                                           timeout, self.stderr()))
                if rc != 0:
                    raise FaultFSError("faultfs exited with status %d\n"
                                       "stderr:\n%s" % (rc, self.stderr()))
            text = self.stderr()
            for pat in SANITIZER_PATTERNS:
                if pat in text:
                    raise FaultFSError("faultfs stderr has %r:\n%s" %
                                       (pat, text))
        except BaseException:
            self.cleanup()
            raise

    def _unmount(self, timeout):
        # Callers that a stall released may still hold files open for a
        # moment: "busy" is retried until the deadline.
        end = time.monotonic() + timeout
        while fuse_mounted(self.mnt):
            res = subprocess.run(["fusermount3", "-u", self.mnt],
                                 stderr=subprocess.PIPE, text=True)
            if res.returncode == 0:
                break
            if "busy" not in res.stderr or time.monotonic() > end:
                raise FaultFSError("fusermount3 -u %s failed: %s" % (
                    self.mnt, res.stderr.strip()))
            time.sleep(0.05)

    def cleanup(self):
        """Best effort, for a failed test: kill first, so that no caller
        stays blocked on a stalled operation, then detach the mount."""
        if self.running():
            self.proc.kill()
            self.proc.wait()
        if fuse_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt],
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        self._remove_tmp()

    def _remove_tmp(self):
        # Only a directory of our own making; read stderr() before.
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # -- power cuts --

    def power_cut(self, timeout=10):
        """Cut the power now: a powercut rule, and one operation (a stat of
        the mount's root) to meet it. Returns once the cut is done: the
        backing directory holds what survived, and every operation on the
        mount fails with EIO. Without powercut=True nothing is lost; the
        disk just stops."""
        self.add("powercut")
        end = time.monotonic() + timeout
        while True:
            try:
                os.stat(self.mnt)
            except OSError as e:
                if e.errno == errno.EIO:
                    return
                raise
            # Only a hang rule that also matches can hold the stat this
            # long, or a faultfs that never saw the new rules.
            if time.monotonic() > end:
                raise FaultFSError("no power cut within %.0fs\nstderr:\n%s" %
                                   (timeout, self.stderr()))
            time.sleep(0.01)

    def power_on(self, timeout=10):
        """After power_cut(): unmount the dead disk (checked: exit status
        0) and mount faultfs again over the same backing directory, with
        no rules, an empty journal and no handle left from before."""
        self._stop_checked(timeout)
        return self.start(timeout)

    # -- rules --

    def rules(self):
        """The rules in force, as lines."""
        return list(self._rules)

    def set(self, *rules, **kw):
        """Replace every rule. Each positional argument is a rule line;
        keywords build one more with rule(): set(action="hang", op="read").
        Raises ValueError (and changes nothing) when faultfs refuses a
        line."""
        lines = list(rules)
        if kw:
            lines.append(rule(**kw))
        self._install(lines)

    def add(self, *rules, **kw):
        """Append rules to those in force."""
        lines = list(rules)
        if kw:
            lines.append(rule(**kw))
        self._install(self._rules + lines)

    def clear(self):
        """Back to pure pass-through; stalled operations resume."""
        self._install([])

    def _install(self, lines):
        for line in lines:
            if "\n" in line:
                raise ValueError("one rule per line: %r" % line)
        text = "".join(line + "\n" for line in lines)
        tmp = "%s.new" % self.control
        with open(tmp, "w") as f:
            f.write(text)
        if lines:
            res = subprocess.run([self.binary, "--check-rules", tmp],
                                 stderr=subprocess.PIPE, text=True)
            if res.returncode != 0:
                os.unlink(tmp)
                raise ValueError(res.stderr.strip())
        # faultfs tells versions apart by (inode, size, mtime, ctime); a
        # strictly increasing mtime of our own makes every one distinct,
        # however coarse the file system's clock.
        self._generation = max(time.time_ns(), self._generation + 1)
        os.utime(tmp, ns=(self._generation, self._generation))
        os.replace(tmp, self.control)
        self._rules = list(lines)

    # -- paths --

    def path(self, relpath=""):
        """Path of relpath on the mount."""
        return os.path.join(self.mnt, str(relpath).lstrip("/"))

    def backing_path(self, relpath=""):
        """Path of relpath in the backing directory."""
        return os.path.join(self.backing, str(relpath).lstrip("/"))
