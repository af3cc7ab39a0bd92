"""A child on a network file system: sshfs over ssh to 127.0.0.1
(README "Faults", "Children on other machines").

The test runs an sshd of its own (its own host key, a client key it
generates, port chosen free, internal-sftp) and mounts a directory
through it with sshfs, as an operator would mount a child on another
machine: `-o reconnect` with ServerAliveInterval. Two children are local,
the third is the sshfs mount; threshold 2, io-timeout=2. Under a writer
doing fsync'd writes and a reader checking every byte:
  - the server dies (sshd and its sessions killed): every call sshfs
    gets fails with EIO at once;
  - the server hangs (sshd and its sessions stopped with SIGSTOP): calls
    sshfs gets never answer.
Either way the writer and reader see no error and no call longer than
io-timeout plus a margin, the child is failed with the reason, and once
the server is back `resync NAME` brings it back identical.
"""

import os
import re
import shutil
import signal
import socket
import subprocess

import pytest

import qfs
from qfs import read_file, write_file
from control_util import (assert_same_tree, block, child_status, status,
                          wait_child_state)
from test_reliability import (IO_TIMEOUT, LIVE, LIVE_SIZE, SLOT, STALL_LIMIT,
                              STATIC, STATIC_SIZE, live_expected, live_writer,
                              resync_when_idle, static_reader, wait_progress)

SSHD = "/usr/sbin/sshd"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(SSHD) and shutil.which("sshfs")),
    reason="needs openssh-server and sshfs (scripts/test.sh installs them)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid):
    """pid and every process below it (sshd's sessions call setsid(), so
    a process group would miss them)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class Server:
    """An sshd on 127.0.0.1 serving sftp, and what the test does to it."""

    def __init__(self, workdir):
        self.dir = workdir
        self.port = free_port()
        self.key = str(workdir / "id")
        self.proc = None
        for key in ("hostkey", "id"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                            "-f", str(workdir / key)], check=True)
        shutil.copy(self.key + ".pub", workdir / "authorized_keys")
        os.chmod(workdir / "authorized_keys", 0o600)
        self.config = workdir / "sshd_config"
        self.config.write_text("\n".join([
            "Port %d" % self.port, "ListenAddress 127.0.0.1",
            "HostKey %s" % (workdir / "hostkey"),
            "AuthorizedKeysFile %s" % (workdir / "authorized_keys"),
            "PidFile %s" % (workdir / "sshd.pid"),
            "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "Subsystem sftp internal-sftp", ""]))
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation

    def start(self):
        with open(self.dir / "sshd.log", "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def listening():
            assert self.proc.poll() is None, (self.dir / "sshd.log").read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        qfs.wait_for(listening, 10 * qfs.deadline_scale(), "sshd to listen")

    def signal_all(self, sig):
        for pid in descendants(self.proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self):
        self.signal_all(signal.SIGCONT)
        self.signal_all(signal.SIGKILL)
        self.proc.wait()


class Sshfs:
    """sshfs of server:remote on mnt, the way a child on another machine
    is mounted: reconnect, and keepalives that notice a dead link."""

    def __init__(self, server, remote, mnt):
        self.mnt = str(mnt)
        self.cmd = ["sshfs", "-f", "-o", ",".join([
            "reconnect", "ServerAliveInterval=1", "ServerAliveCountMax=3",
            "IdentityFile=%s" % server.key, "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null", "BatchMode=yes",
            "port=%d" % server.port]),
            "root@127.0.0.1:%s" % remote, self.mnt]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        qfs.wait_for(lambda: qfs.is_fuse_mounted(self.mnt) or
                     self.proc.poll() is not None,
                     20 * qfs.deadline_scale(), "sshfs to mount")
        assert qfs.is_fuse_mounted(self.mnt), "sshfs did not mount"

    def close(self):
        qfs.lazy_unmount(self.mnt)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def network_child(tmp_path, scratch_fs):
    """(server, sshfs mount of a tmpfs directory through it). Name it
    before `quorum`, so that it outlives the daemon."""
    workdir = tmp_path / "ssh"
    workdir.mkdir()
    server = Server(workdir)
    server.start()
    mnt = tmp_path / "remote"
    mnt.mkdir()
    fs = None
    try:
        fs = Sshfs(server, scratch_fs("tmpfs"), mnt)
        yield server, fs
    finally:
        server.kill()
        if fs:
            fs.close()


def fault_kill(server):
    server.kill()


def fault_stop(server):
    server.signal_all(signal.SIGSTOP)


def heal_kill(server):
    server.start()


def heal_stop(server):
    server.signal_all(signal.SIGCONT)


FAULTS = {"server-killed": (fault_kill, heal_kill),
          "server-stopped": (fault_stop, heal_stop)}


def answers(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", list(FAULTS))
def test_a_network_child_that_dies_or_hangs_costs_callers_nothing(
        kind, network_child, tmpfs_dir, quorum):
    server, fs = network_child
    fault, heal = FAULTS[kind]
    children = [tmpfs_dir / "c0", tmpfs_dir / "c1"]
    for c in children:
        c.mkdir()
    m = quorum(children=children + [qfs.Path(fs.mnt)], threshold=2,
               opts=["io-timeout=%d" % IO_TIMEOUT])
    name = fs.mnt
    static = os.urandom(STATIC_SIZE)
    write_file(m.path(STATIC), static)
    write_file(m.path(LIVE), b"".join(block("init", 0, off, SLOT)
                                      for off in range(0, LIVE_SIZE, SLOT)))
    writer, reader = live_writer(m), static_reader(m, static)
    workers = (writer, reader)
    for w in workers:
        w.start()
    try:
        wait_progress(workers, 30, what="the load to start")
        fault(server)
        doc = wait_child_state(m, name, "failed", timeout=60)
        reason = child_status(doc, name)["reason"]
        assert re.search(r"Input/output error|within \d+ ms|timed out",
                         reason), reason
        wait_progress(workers, 50, what="the load to go on without it")

        heal(server)
        qfs.wait_for(lambda: answers(fs.mnt), 60 * qfs.deadline_scale(),
                     "the network child to answer again")
        resync_when_idle(m, name, timeout=60)
        wait_child_state(m, name, "ok", timeout=120)
        wait_progress(workers, 30, what="the load to go on after it")
    finally:
        for w in workers:
            w.stop()
    for w in workers:
        assert not w.errors, w.errors
        assert w.longest[0] < STALL_LIMIT, \
            "%s stalled %.1fs in %s" % (w.name, *w.longest)
    assert read_file(m.path(LIVE)) == live_expected(writer.state["last"])
    assert read_file(m.path(STATIC)) == static
    assert all(c["state"] == "ok" for c in status(m)["children"])
    ref = assert_same_tree(children[0], children[1])
    assert ref == assert_same_tree(children[0], fs.mnt)
    print("\n%s: %s %d calls, longest %.2fs (%s); %s %d calls, longest "
          "%.2fs (%s); the child failed with %r" % (
              kind, writer.name, writer.count, *writer.longest, reader.name,
              reader.count, *reader.longest, reason))
