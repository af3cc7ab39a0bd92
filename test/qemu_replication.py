"""QEMU's block replication driver (COLO) driven from Python, as the oracle
for the replication tests.

Two `qemu-system-x86_64 -M none` processes, no guest, no accelerator,
each with a QMP socket. The secondary holds the base image sec.raw behind
a writable NBD export; on top of it a replication node in secondary mode
over two empty qcow2 layers (active over hidden over sec), and a quorum
node `top` over that, which is what the secondary VM would see. The view
is exported read-only over NBD as `view` so a snapshot of it can be read
while replication runs. The primary holds pri.raw in a quorum `colo1`
with a replication node in primary mode, whose file is an NBD client of
the secondary's `sec` export; every write to colo1 goes to pri.raw and to
sec.raw through the secondary's NBD server, where the backup job first
copies the old bytes into the hidden layer.

Guest writes are HMP `qemu-io` commands on colo1 (primary) and top
(secondary). Replication commands map onto QMP as follows:

    start       xen-set-replication {"enable": true, "primary": P}
    checkpoint  xen-colo-do-checkpoint
    stop        xen-set-replication {"enable": false, "primary": P}
    failover    xen-set-replication {"enable": false, "primary": false,
                                     "failover": true}
    get-error   query-xen-replication-status

The active commit that failover starts is an internal job that
query-jobs does not list; it is over when the nodes named active and
hidden have left query-named-block-nodes.

Every subprocess and every QMP wait has a deadline. Both QEMUs are
killed on close(), on leaving the `with` block, and when setting up
fails half way.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"

MiB = 1 << 20


class QMPError(Exception):
    """A QMP command answered with an error; desc is QEMU's text and
    cls its error class."""

    def __init__(self, command, cls, desc):
        super().__init__("%s: %s" % (command, desc))
        self.command = command
        self.cls = cls
        self.desc = desc


class QemuFailure(Exception):
    """QEMU did not start, died, did not answer in time, or a helper
    process failed."""


def qemu_system_problem():
    """None when qemu-system-x86_64 can run a `-M none` machine here with
    the replication commands, else a sentence saying why not (for a skip
    message)."""
    exe = shutil.which(QEMU)
    if exe is None:
        return "%s is not installed (Debian package qemu-system-x86)" % QEMU
    if shutil.which(QEMU_IMG) is None:
        return "%s is not installed (Debian package qemu-utils)" % QEMU_IMG
    script = "".join(json.dumps({"execute": c}) + "\n" for c in (
        "qmp_capabilities", "query-xen-replication-status", "quit"))
    try:
        res = subprocess.run([exe, "-M", "none", "-nodefaults", "-display",
                              "none", "-S", "-qmp", "stdio"], input=script,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "%s cannot run: %s" % (QEMU, e)
    answers = [json.loads(line) for line in res.stdout.splitlines()
               if line.strip().startswith("{")]
    replies = [a for a in answers if "return" in a or "error" in a]
    if len(replies) < 2:
        return "%s -M none did not answer QMP: %s" % (
            QEMU, (res.stderr or res.stdout).strip()[-500:])
    if "error" in replies[1]:
        return "%s has no block replication: %s" % (
            QEMU, replies[1]["error"].get("desc"))
    return None


class QMP:
    """A small synchronous QMP client on a unix socket. execute() returns
    the command's "return" value or raises QMPError; events that arrive
    meanwhile are kept in .events, in order."""

    def __init__(self, path, timeout=10.0):
        self.path = path
        self.timeout = timeout
        self.events = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.buf = b""
        try:
            self.sock.connect(path)
            self.greeting = self._read()
            while "event" in self.greeting:
                # A machine that already runs may queue RESUME first.
                self.events.append(self.greeting)
                self.greeting = self._read()
            if "QMP" not in self.greeting:
                raise QemuFailure("no QMP greeting on %s: %r" % (
                    path, self.greeting))
            self.execute("qmp_capabilities")
        except BaseException:
            self.sock.close()
            raise

    def _read(self, deadline=None):
        """Read one JSON message, within the deadline."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QemuFailure("QMP %s: no answer within %.0fs" % (
                    self.path, self.timeout))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise QemuFailure("QMP %s: connection closed" % self.path)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command, timeout=None, **arguments):
        """Run command with arguments (Python names, "_" for "-"); return
        its "return" value. Raises QMPError with QEMU's desc."""
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = {k.replace("_", "-"): v
                                for k, v in arguments.items()}
        return self.execute_msg(msg, timeout)

    def execute_msg(self, msg, timeout=None):
        """Send one QMP message (a dict with "execute"), wait for its
        answer, return "return" or raise QMPError."""
        deadline = time.monotonic() + (timeout or self.timeout)
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            answer = self._read(deadline)
            if "event" in answer:
                self.events.append(answer)
                continue
            if "error" in answer:
                err = answer["error"]
                raise QMPError(msg["execute"], err.get("class"),
                               err.get("desc"))
            if "return" in answer:
                return answer["return"]
            raise QemuFailure("QMP %s: unexpected message %r" % (
                self.path, answer))

    def result(self, command, **arguments):
        """("ok", return value) or ("error", desc): one command's outcome
        as data, for recording texts."""
        try:
            return ("ok", self.execute(command, **arguments))
        except QMPError as e:
            return ("error", e.desc)

    def hmp(self, command_line):
        """Run an HMP command through human-monitor-command; its output."""
        return self.execute("human-monitor-command",
                            command_line=command_line)

    def close(self):
        self.sock.close()


class Qemu:
    """One qemu-system-x86_64 -M none process with a QMP socket."""

    def __init__(self, name, workdir, timeout=10.0):
        self.name = name
        self.sock_path = os.path.join(workdir, name + ".qmp")
        self.out_path = os.path.join(workdir, name + ".out")
        self.log_path = os.path.join(workdir, name + ".log")
        self.timeout = timeout
        self.out = open(self.out_path, "wb")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [QEMU, "-M", "none", "-nodefaults", "-display", "none",
             "-qmp", "unix:%s,server=on,wait=off" % self.sock_path],
            stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.log)
        self.qmp = None
        try:
            self._connect()
        except BaseException:
            self.kill()
            raise

    def _connect(self):
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise QemuFailure("%s qemu exited %d: %s" % (
                    self.name, self.proc.returncode, self.log_text()))
            if os.path.exists(self.sock_path):
                try:
                    self.qmp = QMP(self.sock_path, self.timeout)
                    return
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
            if time.monotonic() > deadline:
                raise QemuFailure("%s qemu: no QMP socket within %.0fs" % (
                    self.name, self.timeout))
            time.sleep(0.01)

    def log_text(self):
        """The end of QEMU's stderr (stdout holds qemu-io's output)."""
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def qemu_io(self, node, cmd):
        """HMP `qemu-io NODE "CMD"`; what it printed. qemu-io prints to
        QEMU's stdout, not to the monitor, and HMP runs it to completion
        before it answers, so the output is what the stdout file gained
        meanwhile."""
        start = os.path.getsize(self.out_path)
        self.qmp.hmp('qemu-io %s "%s"' % (node, cmd))
        with open(self.out_path, "rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        """SIGKILL and reap; safe to call twice."""
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            pass
        self.out.close()
        self.log.close()


def parse_qemu_io(output):
    """None when an HMP qemu-io command succeeded, else its error text
    (e.g. "Input/output error" from "write failed: ...")."""
    for line in output.splitlines():
        for verb in ("write", "read", "discard", "flush"):
            prefix = verb + " failed: "
            if line.startswith(prefix):
                return line[len(prefix):].strip()
    return None


def run(cmd, timeout=60):
    """Run a helper (qemu-img); its stdout, QemuFailure on failure."""
    try:
        res = subprocess.run(cmd, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise QemuFailure("%s: no exit within %ds" % (" ".join(cmd), timeout))
    if res.returncode != 0:
        raise QemuFailure("%s: exit %d: %s" % (
            " ".join(cmd), res.returncode, res.stderr.decode().strip()))
    return res.stdout


# The replication commands of one side, as QMP messages. "start-other"
# starts in the other side's mode and "start-failover" passes failover with
# enable, which QMP refuses before the driver sees it.
def side_commands(primary):
    return {
        "start": ("xen-set-replication",
                  {"enable": True, "primary": primary}),
        "start-other": ("xen-set-replication",
                        {"enable": True, "primary": not primary}),
        "start-failover": ("xen-set-replication",
                           {"enable": True, "primary": primary,
                            "failover": True}),
        "checkpoint": ("xen-colo-do-checkpoint", {}),
        "stop": ("xen-set-replication",
                 {"enable": False, "primary": primary}),
        "stop-failover": ("xen-set-replication",
                          {"enable": False, "primary": primary,
                           "failover": True}),
        "get-error": ("query-xen-replication-status", {}),
    }


COMMANDS = ("start", "start-other", "start-failover", "checkpoint", "stop",
            "stop-failover", "get-error")


class QemuReplication:
    """The primary/secondary pair of one raw image of `size` bytes, both
    sides starting from the same content (`fill` bytes, or a byte).

    setup(start=True) builds the graph; with start, both sides run
    (secondary first, as COLO requires). Afterwards:

    primary_write(off, length, byte) / secondary_write(...)
        HMP qemu-io "write -P byte off length" on colo1 / top; returns None
        or qemu-io's error text.
    checkpoint()          xen-colo-do-checkpoint on P (if alive) then S;
                          returns {"primary": r, "secondary": r}, each r
                          ("ok", None) or ("error", desc).
    command(side, name)   one of COMMANDS on "primary" or "secondary";
                          ("ok", value) or ("error", desc). get-error
                          gives ("ok", None) for no error and ("error",
                          desc) when the status says error.
    get_error(side)       command(side, "get-error").
    failover()            kill P, stop with failover on S, wait for the
                          commit; returns S's result.
    stop(side=None)       stop on one side or both (P first); results.
    start(side=None)      start on one side or both (S first); results.
    view_bytes()          the secondary VM's disk as bytes (NBD export of
                          top), or the qemu-img error text (a str).
    base_bytes()          sec.raw; primary_bytes(): pri.raw.
    layer_map(name)       [(offset, length)] allocated in active/hidden.
    break_inbound()       drop the NBD export the primary writes to.
    close()               kill both QEMUs, remove the directory.
    """

    def __init__(self, size=MiB, fill=b"\xaa", workdir=None, timeout=10.0):
        """Create the images in workdir (default: a new directory under
        /tmp, removed on close). timeout bounds each QMP answer and
        helper process; nothing runs until setup()."""
        self.size = size
        self.timeout = timeout
        self.own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="replqemu-", dir="/tmp")
        self.sec_raw = os.path.join(self.dir, "sec.raw")
        self.pri_raw = os.path.join(self.dir, "pri.raw")
        self.active = os.path.join(self.dir, "active.qcow2")
        self.hidden = os.path.join(self.dir, "hidden.qcow2")
        self.nbd_sock = os.path.join(self.dir, "nbd.sock")
        self.s = None
        self.p = None
        if len(fill) == 1:
            fill = fill * size
        assert len(fill) == size
        try:
            for path in (self.sec_raw, self.pri_raw):
                with open(path, "wb") as f:
                    f.write(fill)
            for path in (self.active, self.hidden):
                run([QEMU_IMG, "create", "-q", "-f", "qcow2", path,
                     str(size)], timeout)
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Kill both QEMUs; remove the directory if it was made here."""
        self.close_processes()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- building the graph ---------------------------------------------

    def setup(self, start=True):
        """Start both QEMUs and build the graph; with start, run
        xen-set-replication on S then P. Kills both on failure."""
        try:
            self._setup_secondary()
            self._setup_primary()
            if start:
                for side in ("secondary", "primary"):
                    r = self.command(side, "start")
                    if r[0] != "ok":
                        raise QemuFailure("%s start: %s" % (side, r[1]))
        except BaseException:
            self.close_processes()
            raise
        return self

    def close_processes(self):
        """Kill both QEMUs (safe to call again)."""
        for q in (self.p, self.s):
            if q is not None:
                q.kill()

    def _setup_secondary(self):
        self.s = Qemu("secondary", self.dir, self.timeout)
        q = self.s.qmp
        q.execute("blockdev-add", driver="raw", node_name="sec",
                  file={"driver": "file", "filename": self.sec_raw})
        q.execute("nbd-server-start",
                  addr={"type": "unix", "data": {"path": self.nbd_sock}})
        # The export gives sec the BlockBackend replication start checks.
        q.execute("nbd-server-add", device="sec", writable=True)
        q.execute("blockdev-add", driver="replication", node_name="rep",
                  mode="secondary", top_id="top",
                  file={"driver": "qcow2", "node-name": "active",
                        "file": {"driver": "file", "filename": self.active},
                        "backing": {"driver": "qcow2", "node-name": "hidden",
                                    "file": {"driver": "file",
                                             "filename": self.hidden},
                                    "backing": "sec"}})
        q.execute("blockdev-add", driver="quorum", node_name="top",
                  read_pattern="fifo", vote_threshold=1, children=["rep"])
        q.execute("block-export-add", type="nbd", id="view", node_name="top",
                  writable=False, name="view")

    def _setup_primary(self):
        self.p = Qemu("primary", self.dir, self.timeout)
        q = self.p.qmp
        q.execute("blockdev-add", driver="raw", node_name="pdisk",
                  file={"driver": "file", "filename": self.pri_raw})
        q.execute("blockdev-add", driver="quorum", node_name="colo1",
                  read_pattern="fifo", vote_threshold=1, children=["pdisk"])
        q.execute("blockdev-add", driver="replication",
                  node_name="nbd_client1", mode="primary",
                  file={"driver": "nbd",
                        "server": {"type": "unix", "path": self.nbd_sock},
                        "export": "sec"})
        q.execute("x-blockdev-change", parent="colo1", node="nbd_client1")

    # --- commands -------------------------------------------------------

    def _qmp(self, side):
        q = self.p if side == "primary" else self.s
        if q is None or q.qmp is None:
            raise QemuFailure("the %s QEMU is not running" % side)
        return q.qmp

    def command(self, side, name):
        """Issue one of COMMANDS on side; ("ok", value) or ("error",
        desc). For get-error, the status's error becomes ("error", desc)
        and no error ("ok", None)."""
        qmp = self._qmp(side)
        cmd, args = side_commands(side == "primary")[name]
        try:
            value = qmp.execute_msg({"execute": cmd, "arguments": args}
                                    if args else {"execute": cmd})
        except QMPError as e:
            return ("error", e.desc)
        if name == "get-error":
            if value.get("error"):
                return ("error", value.get("desc"))
            return ("ok", None)
        return ("ok", value or None)

    def get_error(self, side="primary"):
        return self.command(side, "get-error")

    def checkpoint(self):
        """Checkpoint P (when it runs) then S, as COLO does."""
        out = {}
        if self._running("primary"):
            out["primary"] = self.command("primary", "checkpoint")
        out["secondary"] = self.command("secondary", "checkpoint")
        return out

    def _running(self, side):
        q = self.p if side == "primary" else self.s
        return q is not None and q.qmp is not None

    def start(self, side=None):
        """start on side, or on S then P; {side: result}."""
        sides = [side] if side else ["secondary", "primary"]
        return {s: self.command(s, "start") for s in sides
                if self._running(s)}

    def stop(self, side=None):
        """stop (no failover) on side, or on P then S; {side: result}."""
        sides = [side] if side else ["primary", "secondary"]
        return {s: self.command(s, "stop") for s in sides
                if self._running(s)}

    def kill_primary(self):
        if self.p is not None:
            self.p.kill()

    def failover(self, timeout=None):
        """Kill P, stop S with failover, wait until the active commit has
        removed the active and hidden nodes. Returns S's result."""
        self.kill_primary()
        r = self.command("secondary", "stop-failover")
        if r[0] == "ok":
            self.wait_commit(timeout)
        return r

    def node_names(self):
        nodes = self._qmp("secondary").execute("query-named-block-nodes")
        return {n["node-name"] for n in nodes}

    def wait_commit(self, timeout=None):
        """Poll until the nodes active and hidden are gone."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while self.node_names() & {"active", "hidden"}:
            if time.monotonic() > deadline:
                raise QemuFailure("failover commit: active/hidden still "
                                  "present after %.0fs" % (timeout or
                                                           self.timeout))
            time.sleep(0.01)

    def break_inbound(self):
        """Remove the secondary's `sec` export at once (mode hard), as if
        the secondary's NBD server had gone: the primary's connection
        drops and every later forward fails. The view export stays."""
        self._qmp("secondary").execute("nbd-server-remove", name="sec",
                                       mode="hard")

    # --- guest writes ---------------------------------------------------

    def _qemu_io(self, side, node, cmd):
        self._qmp(side)
        q = self.p if side == "primary" else self.s
        out = q.qemu_io(node, cmd)
        if not out.strip():
            raise QemuFailure("%s qemu-io %s %r printed nothing" % (
                side, node, cmd))
        return parse_qemu_io(out)

    def primary_write(self, off, length, byte):
        """Write `length` bytes of `byte` at off through colo1; None or
        the error text."""
        return self._qemu_io("primary", "colo1",
                             "write -P 0x%02x %d %d" % (byte, off, length))

    def secondary_write(self, off, length, byte):
        """Write through top (the secondary VM's disk); None or the error
        text."""
        return self._qemu_io("secondary", "top",
                             "write -P 0x%02x %d %d" % (byte, off, length))

    # --- snapshots ------------------------------------------------------

    def view_bytes(self):
        """The secondary VM's disk, read over the view NBD export; bytes,
        or qemu-img's error text (a str) when the read fails."""
        out = os.path.join(self.dir, "view.raw")
        try:
            run([QEMU_IMG, "convert", "-f", "raw", "-O", "raw",
                 "nbd+unix:///view?socket=%s" % self.nbd_sock, out],
                self.timeout * 3)
        except QemuFailure as e:
            return str(e).rsplit(": ", 1)[-1]
        try:
            with open(out, "rb") as f:
                return f.read()
        finally:
            os.unlink(out)

    def base_bytes(self):
        """sec.raw as it is now. The raw file driver keeps no cache of its
        own, so a plain read sees every completed write."""
        with open(self.sec_raw, "rb") as f:
            return f.read()

    def primary_bytes(self):
        with open(self.pri_raw, "rb") as f:
            return f.read()

    def layer_map(self, which):
        """The clusters allocated in the active or hidden layer itself,
        as a list of (offset, length), from qemu-io's map on that node
        (the qcow2 files on disk lag behind QEMU's metadata cache). After
        failover the node is gone: [] then."""
        if which not in self.node_names():
            return []
        out = self.s.qemu_io(which, "map")
        extents = []
        for line in out.splitlines():
            m = _MAP_LINE.match(line)
            if m and m.group(2) is None:
                extents.append((int(m.group(3), 16), int(m.group(1), 16)))
        return extents


_MAP_LINE = re.compile(r"^.*\((0x[0-9a-f]+)\) bytes\s+(not )?allocated "
                       r"at offset .*\((0x[0-9a-f]+)\)$")


# --- the stage machine, probed -------------------------------------------

# How to bring one side to each stage that can be held still: a list of
# steps, each ("cmd", side, command) or ("failover",). FAILOVER lasts only
# as long as the commit; DONE-stopped is a secondary stopped without
# failover, which 7.2 leaves in DONE with its layers and an error.
_RUN = [("cmd", "secondary", "start"), ("cmd", "primary", "start")]
STAGE_RECIPES = {
    ("primary", "NONE"): [],
    ("primary", "RUNNING"): _RUN,
    ("primary", "DONE"): _RUN + [("cmd", "primary", "stop")],
    ("secondary", "NONE"): [],
    ("secondary", "RUNNING"): _RUN,
    ("secondary", "DONE"): _RUN + [("failover",)],
    ("secondary", "DONE-stopped"): _RUN + [("cmd", "secondary", "stop")],
}


def apply_step(pair, step):
    """Run one recipe step on a QemuReplication or a model with the same
    command()/failover() methods; returns the step's result."""
    if step[0] == "failover":
        return pair.failover()
    return pair.command(step[1], step[2])


def probe_stage_machine(size=MiB, recipes=None, commands=COMMANDS):
    """For every (side, stage) of recipes and every command: a fresh pair
    brought to the stage, the command issued on that side, then get-error
    on it. Returns {(side, stage, command): (result, get-error after)},
    results as QemuReplication.command() gives them."""
    out = {}
    for (side, stage), steps in (recipes or STAGE_RECIPES).items():
        for name in commands:
            with QemuReplication(size=size) as pair:
                pair.setup(start=False)
                for step in steps:
                    apply_step(pair, step)
                res = pair.command(side, name)
                out[(side, stage, name)] = (res, pair.command(side,
                                                              "get-error"))
    return out
