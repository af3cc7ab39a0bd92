"""Logs where operators look (README "Logs"): once detached the daemon's
own messages go to syslog, -o events=syslog sends every event there too,
and -o event-program=PATH runs PATH for each event with its JSON on
stdin, bounded by a timeout and a queue, never holding up I/O."""

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

import qfs
from control_util import control, control_errno, status, wait_status
from test_quorumctl import ctl_binary

# What a syslog datagram from glibc looks like: <PRI>TIMESTAMP IDENT[PID]: MSG
SYSLOG_LINE = re.compile(r"^<(\d+)>.*? quorumfs\[(\d+)\]: (.*)$", re.S)
LOG_DAEMON = 3
LOG_ERR, LOG_WARNING, LOG_INFO = 3, 4, 6


class SyslogSocket:
    """A datagram socket standing in for /dev/log: what arrives, as
    (facility, priority, pid, message)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.got = []
        self.stop = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.stop:
            try:
                data = self.sock.recv(65536).decode(errors="replace")
            except socket.timeout:
                continue
            m = SYSLOG_LINE.match(data)
            if m:
                pri = int(m.group(1))
                self.got.append((pri // 8, pri % 8, int(m.group(2)),
                                 m.group(3)))

    def wait(self, pred, what, timeout=20):
        return qfs.wait_for(lambda: [g for g in list(self.got) if pred(g)],
                            timeout * qfs.deadline_scale(), what)

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


# In a private mount namespace /dev is a tmpfs of its own, holding the
# devices the daemon needs and /dev/log, a link to the test's socket;
# quorumfs is started there without -f (it detaches), the test's
# commands run, and the script waits for the test's word to unmount.
SYSLOG_SCRIPT = r"""
set -eu
mkdir -p "$T/olddev"
mount --rbind /dev "$T/olddev"
mount -t tmpfs -o mode=755 devtmp /dev
for d in null zero full fuse random urandom; do
    touch "/dev/$d"; mount --bind "$T/olddev/$d" "/dev/$d"
done
ln -s "$SOCK" /dev/log
"$QFS" -o events=syslog,log="$T/logs/events.jsonl",control-socket="$T/ctl.sock" "$SRC" "$MNT"
echo data > "$MNT/f"
"$QCTL" -s "$T/ctl.sock" threshold "$MNT" 9 || true
pid=$("$QCTL" -s "$T/ctl.sock" status --json "$MNT" | sed -n 's/^ *"pid":\([0-9]*\).*/\1/p')
echo "pid $pid"
# The event log's directory goes away and SIGHUP asks for a reopen: the
# daemon's own complaint has no terminal to go to.
mv "$T/logs" "$T/logs.gone"
kill -HUP "$pid"
for i in $(seq 400); do [ -e "$T/unmount" ] && break; sleep 0.05; done
umount "$MNT"
for i in $(seq 400); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.05; done
echo "the daemon did not exit"; exit 1
"""


@pytest.mark.timeout(120)
def test_a_detached_daemon_and_its_events_speak_to_syslog(tmp_path):
    if not shutil.which("unshare"):
        pytest.skip("needs unshare")
    children = []
    for n in ("a", "b", "c"):
        (tmp_path / n).mkdir()
        children.append(str(tmp_path / n))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "logs").mkdir()
    log = SyslogSocket(tmp_path / "log.sock")
    env = dict(os.environ, T=str(tmp_path), SOCK=str(tmp_path / "log.sock"),
               QFS=qfs.daemon_binary(), QCTL=ctl_binary(),
               SRC=":".join(children), MNT=str(mnt))
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                             "sh", "-c", SYSLOG_SCRIPT], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        log.wait(lambda g: g[3] == "serving %s" % mnt, "serving")
        log.wait(lambda g: "reopening event log" in g[3] and
                 g[1] == LOG_WARNING, "the daemon's own warning")
        log.wait(lambda g: '"event":"CONTROL_ERROR"' in g[3] and
                 g[1] == LOG_WARNING, "CONTROL_ERROR as a warning")
        (tmp_path / "unmount").touch()
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        log.wait(lambda g: '"event":"UNMOUNTED"' in g[3], "UNMOUNTED")
        log.wait(lambda g: g[3] == "unmounting %s" % mnt, "unmounting")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        log.close()
        qfs.lazy_unmount(mnt)
    pid = int(re.search(r"pid (\d+)", out).group(1))
    mine = [g for g in log.got if g[2] == pid]
    assert all(g[0] == LOG_DAEMON for g in mine)
    events = [json.loads(g[3][len("event "):]) for g in mine
              if g[3].startswith("event {")]
    names = [e["event"] for e in events]
    assert names[0] == "MOUNTED" and "UNMOUNTED" in names, names
    assert next(g for g in mine if "MOUNTED" in g[3])[1] == LOG_INFO


def event_program(tmp_path, body):
    """A program for event-program=: a shell script."""
    prog = tmp_path / "on-event"
    prog.write_text("#!/bin/sh\n" + body)
    prog.chmod(0o755)
    return prog


@pytest.mark.timeout(60)
def test_the_event_program_runs_for_each_event_with_its_json(quorum,
                                                             tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    # Each run's stdin lands whole under the event's name (written, then
    # renamed), after its arguments.
    prog = event_program(tmp_path, 'echo "$1 $2" >> "{o}/args"\n'
                         'cat > "{t}/run.$$"\nmv "{t}/run.$$" "{o}/$1.$$"\n'
                         .format(o=out, t=tmp_path))
    m = quorum(opts=["event-program=%s" % prog])
    control(m, "threshold 3")
    qfs.wait_for(lambda: list(out.glob("THRESHOLD_CHANGED.*")), 10,
                 "the program to run for THRESHOLD_CHANGED")
    ran = {p.name.split(".")[0]: json.loads(p.read_text())
           for p in out.glob("*.*")}
    assert ran["MOUNTED"]["data"]["mountpoint"] == m.mnt
    assert ran["THRESHOLD_CHANGED"]["data"] == {"old": 2, "new": 3}
    assert "MOUNTED %s" % m.mnt in (out / "args").read_text()
    # A run counts once the program has exited, which is after its last
    # file appeared: wait for the count, not just the files.
    doc = wait_status(m, lambda d: d["event-program"]["runs"] >= 2, 10,
                      "both runs of the event program to be counted")
    st = doc["event-program"]
    assert st["path"] == str(prog)
    assert st["failed"] == 0 and st["dropped"] == 0


@pytest.mark.timeout(90)
def test_a_hung_event_program_is_killed_and_holds_nothing_up(quorum,
                                                            tmp_path):
    prog = event_program(tmp_path, "exec sleep 600\n")
    m = quorum(opts=["event-program=%s" % prog, "event-program-timeout=1"])
    # Far more events than the queue holds, while the program hangs.
    for i in range(300):
        control_errno(m, "threshold %d" % (100 + i))
    start = time.monotonic()
    qfs.write_file(m.path("f"), b"x" * 65536)
    assert qfs.read_file(m.path("f")) == b"x" * 65536
    assert time.monotonic() - start < 1 * qfs.deadline_scale()
    st = qfs.wait_for(lambda: (lambda s: s["timed-out"] >= 2 and s)(
        status(m)["event-program"]), 20, "two runs killed")
    assert st["dropped"] >= 300 - 256 - 2, st
    # All 300 CONTROL_ERRORs are in the log: only the program missed any.
    assert len(m.events_named("CONTROL_ERROR")) == 300
    # Unmounting waits about one timeout for what is still queued.
    start = time.monotonic()
    m.unmount()
    assert time.monotonic() - start < 10 * qfs.deadline_scale()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("opt,named", [
    ("events=journal", "events="),
    ("event-program=relative/prog", "event-program="),
    ("event-program=/nonexistent/prog", "/nonexistent/prog"),
    ("event-program-timeout=0", "event-program-timeout="),
])
def test_bad_event_options_are_refused(run_daemon, tmp_path, opt, named):
    dirs = [tmp_path / n for n in ("a", "b", "mnt")]
    for d in dirs:
        d.mkdir()
    rc, err = run_daemon("-f", "-o", opt, *dirs)
    assert rc == 1 and err.count("\n") == 1 and named in err, err
