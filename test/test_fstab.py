"""mount(8), fstab and systemd (README "Mounting at boot"): one source
names the whole set, colon-separated; quorumfs started in the background
returns only once the mount serves (or fails), as mount(8) and a
Type=forking unit need; under systemd it says READY=1 at that moment; an
fstab line mounts with `mount -a` and by its mountpoint, and
systemd-fstab-generator orders it as the line asks; the shipped
quorumfs@.service verifies and its command line mounts."""

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time

import pytest

import qfs
from control_util import socket_request

MiB = 1 << 20


def digest(path):
    return hashlib.sha256(qfs.read_file(path)).hexdigest()


def daemon_pids(mnt):
    """Processes whose command line ends in the mountpoint or names it
    as an argument: the daemons of this test's mount."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if os.fsencode(str(mnt)) in argv and any(
                a.endswith(b"quorumfs") for a in argv[:3]):
            pids.append(int(pid))
    return pids


@pytest.fixture
def background(tmp_path):
    """Factory: background(args) runs quorumfs without -f, as mount(8)
    does, and returns the finished process (its exit status is the
    started process's). Teardown unmounts what it mounted and waits for
    the daemons to exit; a daemon left behind by a failed test is killed
    by its id."""
    mounts = []

    def run(args, mnt):
        mounts.append(str(mnt))
        cmd = qfs.daemon_wrapper() + [qfs.daemon_binary()] + [
            str(a) for a in args]
        return subprocess.run(cmd, capture_output=True, text=True,
                              timeout=120 * qfs.deadline_scale())

    yield run
    for mnt in mounts:
        pids = daemon_pids(mnt)
        if qfs.is_fuse_mounted(mnt):
            subprocess.run(["fusermount3", "-u", mnt])
        end = time.monotonic() + 20
        while any(os.path.exists("/proc/%d" % p) for p in pids) and \
                time.monotonic() < end:
            time.sleep(0.05)
        for p in pids:
            if os.path.exists("/proc/%d" % p):
                os.kill(p, signal.SIGKILL)
        qfs.lazy_unmount(mnt)


def make_dirs(root, *names):
    out = []
    for n in names:
        d = root / n
        d.mkdir()
        out.append(d)
    return out


# --- one source, the whole set ----------------------------------------

@pytest.mark.timeout(60)
def test_one_source_names_the_whole_set(quorum, tmp_path):
    children = make_dirs(tmp_path, "a", "b", "c")
    m = quorum(children=[":".join(str(c) for c in children)])
    qfs.write_file(m.path("f"), b"one source")
    for c in children:
        assert qfs.read_file(c / "f") == b"one source"
    with open(m.path(".control")) as f:
        assert len(json.load(f)["children"]) == 3


@pytest.mark.timeout(60)
def test_a_colon_in_a_path_is_written_backslash_colon(quorum, tmp_path):
    children = make_dirs(tmp_path, "a", "odd:name", "c")
    source = ":".join(str(c).replace(":", "\\:") for c in children)
    m = quorum(children=[source])
    qfs.write_file(m.path("f"), b"escaped")
    assert qfs.read_file(children[1] / "f") == b"escaped"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("shape", ["{a}::{b}", "{a}:{b}:", ":{a}:{b}"])
def test_an_empty_child_in_the_list_is_refused(run_daemon, tmp_path, shape):
    a, b, mnt = make_dirs(tmp_path, "a", "b", "mnt")
    rc, err = run_daemon("-f", shape.format(a=a, b=b), mnt)
    assert rc == 1
    assert err.count("\n") == 1 and "empty" in err, err
    assert not os.listdir(a), "a child was touched"


# --- readiness ---------------------------------------------------------

def first_set(tmp_path, image_mib=64):
    """Three children for a first mount filled from the first: it holds
    an image, the others nothing yet."""
    a, b, c, mnt = make_dirs(tmp_path, "a", "b", "c", "mnt")
    with open(a / "vm.img", "wb") as f:
        for i in range(image_mib):
            f.write(bytes([i % 251]) * MiB)
    return [a, b, c], mnt


@pytest.mark.timeout(120)
def test_in_the_background_it_returns_once_the_mount_serves(background,
                                                            tmp_path):
    children, mnt = first_set(tmp_path)
    sock = tmp_path / "ctl.sock"
    res = background(["-o", "sync-from=%s,control-socket=%s" % (
        children[0], sock), ":".join(map(str, children)), mnt], mnt)
    assert res.returncode == 0, res.stderr
    # No waiting: when the started process has exited, the mount serves
    # and every child holds the image.
    assert qfs.is_fuse_mounted(mnt)
    status = socket_request(sock, "status")
    assert [c["state"] for c in status["children"]] == ["ok"] * 3, status
    want = digest(children[0] / "vm.img")
    assert digest(mnt / "vm.img") == want
    for c in children[1:]:
        assert digest(c / "vm.img") == want


@pytest.mark.timeout(60)
def test_a_start_that_fails_after_mounting_fails_the_command(
        background, quorum, tmp_path):
    sock = tmp_path / "shared.sock"
    quorum(opts=["control-socket=%s" % sock])
    b = tmp_path / "second"
    b.mkdir()
    children = make_dirs(b, "a", "b", "c")
    mnt = b / "mnt"
    mnt.mkdir()
    # The socket is taken, which only the started daemon finds out, after
    # the mount was made: the command must still fail, and nothing stay.
    res = background(["-o", "control-socket=%s" % sock,
                      ":".join(map(str, children)), mnt], mnt)
    assert res.returncode == 1, res
    assert "control socket" in res.stderr, res.stderr
    assert not qfs.is_fuse_mounted(mnt)


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def next(self, timeout=60):
        self.sock.settimeout(timeout * qfs.deadline_scale())
        return self.sock.recv(4096).decode()

    def close(self):
        self.sock.close()


@pytest.mark.timeout(120)
def test_systemd_hears_ready_once_the_mount_serves(quorum, tmp_path):
    root = tmp_path / "set"
    root.mkdir()
    children, _ = first_set(root)
    sock = tmp_path / "ctl.sock"
    notify = NotifySocket(tmp_path / "notify")
    m = quorum(children=children, start=False,
               opts=["sync-from=%s" % children[0],
                     "control-socket=%s" % sock])
    m.env = dict(os.environ, NOTIFY_SOCKET=notify.path)
    m.start()
    assert notify.next() == "READY=1"
    status = socket_request(sock, "status")
    assert [c["state"] for c in status["children"]] == ["ok"] * 3, status
    m.unmount()
    assert notify.next() == "STOPPING=1"
    notify.close()


# --- mount(8) and fstab --------------------------------------------------

def command_dir(tmp_path):
    """A directory holding `quorumfs` (the binary under test, behind its
    wrapper), to be bound over /usr/local/sbin in a private mount
    namespace: mount(8) clears PATH, and the shell mount.fuse3 runs
    finds programs in its default one, which starts there."""
    d = tmp_path / "sbin"
    d.mkdir()
    wrapper = " ".join(shlex.quote(w) for w in qfs.daemon_wrapper())
    (d / "quorumfs").write_text("#!/bin/sh\nexec %s %s \"$@\"\n" % (
        wrapper, shlex.quote(qfs.daemon_binary())))
    (d / "quorumfs").chmod(0o755)
    return d


FSTAB_SCRIPT = r"""
set -eu
count() { grep -c " $MNT " /proc/self/mountinfo || true; }
stop() {
    pids=$(pgrep -f -- " $MNT " || true)
    umount "$MNT"
    for i in $(seq 400); do
        alive=0
        for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && return 0
        sleep 0.05
    done
    echo "the daemon did not exit"; exit 1
}
mount --bind "$BIN" /usr/local/sbin
mount -T "$FSTAB" -a
echo "after mount -a: $(count)"
grep " $MNT " /proc/self/mountinfo | sed 's/.* - /source: /'
echo first > "$MNT/first"
mount -v -T "$FSTAB" -a 2>&1 | sed 's/^/again: /'
echo "after a second mount -a: $(count)"
stop
echo "after umount: $(count)"
mount -T "$FSTAB" "$MNT"
echo "after mount MNT: $(count)"
echo second > "$MNT/second"
stop
echo "done: $(count)"
"""


@pytest.mark.timeout(120)
def test_an_fstab_line_mounts_with_mount_a_and_by_its_mountpoint(tmp_path):
    if not shutil.which("unshare") or not os.path.exists(
            "/sbin/mount.fuse3") or not os.path.isdir("/usr/local/sbin"):
        pytest.skip("needs unshare, mount.fuse3 and /usr/local/sbin")
    children = make_dirs(tmp_path, "a", "b", "c")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "events.jsonl"
    source = ":".join(map(str, children))
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a quorumfs set\n%s %s fuse.quorumfs threshold=2,allow_other,"
        "nofail,_netdev,x-systemd.requires-mounts-for=%s,"
        "x-systemd.before=libvirtd.service,log=%s,control-socket=%s "
        "0 0\n" % (source, mnt, tmp_path, log, tmp_path / "ctl.sock"))
    env = dict(os.environ, BIN=str(command_dir(tmp_path)), FSTAB=str(fstab),
               MNT=str(mnt))
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         FSTAB_SCRIPT], env=env, capture_output=True, text=True,
        timeout=100)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "after mount -a: 1" in out
    assert "source: fuse.quorumfs %s " % source in out, out
    assert "already mounted" in out, out
    assert "after a second mount -a: 1" in out
    assert "after umount: 0" in out and "after mount MNT: 1" in out
    assert "done: 0" in out
    for c in children:
        assert qfs.read_file(c / "first") == b"first\n"
        assert qfs.read_file(c / "second") == b"second\n"
    events = [l for l in log.read_text().split("\n") if l]
    assert sum('"MOUNTED"' in l for l in events) == 2
    assert sum('"UNMOUNTED"' in l for l in events) == 2
    assert not qfs.is_fuse_mounted(mnt)


# --- systemd -------------------------------------------------------------

GENERATOR = "/lib/systemd/system-generators/systemd-fstab-generator"


def unit_settings(text):
    """{key: [values]} of a unit file."""
    out = {}
    for line in text.split("\n"):
        m = re.match(r"^(\w+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def analyze_verify(unit, mandir=None):
    """systemd-analyze verify: no complaint at all (it exits 0 even for
    a setting it had to ignore). With mandir, the unit's Documentation=
    man pages are looked up there too."""
    env = dict(os.environ, MANPATH="%s:" % mandir) if mandir else None
    res = subprocess.run(["systemd-analyze", "verify", str(unit)],
                         capture_output=True, text=True, timeout=60,
                         env=env)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


@pytest.mark.timeout(60)
def test_the_fstab_generator_orders_the_mount_as_the_line_asks(tmp_path):
    if not os.path.exists(GENERATOR):
        pytest.skip("no systemd-fstab-generator")
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "/srv/a:/srv/b:/srv/c /mnt/q fuse.quorumfs threshold=2,allow_other,"
        "nofail,_netdev,x-systemd.requires-mounts-for=/srv/nfs,"
        "x-systemd.before=libvirtd.service,"
        "x-systemd.before=virtqemud.service 0 0\n")
    out = tmp_path / "generated"
    out.mkdir()
    subprocess.run([GENERATOR, str(out), str(out), str(out)], check=True,
                   env=dict(os.environ, SYSTEMD_FSTAB=str(fstab)),
                   timeout=30)
    unit = out / "mnt-q.mount"
    s = unit_settings(unit.read_text())
    assert s["What"] == ["/srv/a:/srv/b:/srv/c"]
    assert s["Where"] == ["/mnt/q"] and s["Type"] == ["fuse.quorumfs"]
    assert "libvirtd.service" in " ".join(s["Before"])
    assert "virtqemud.service" in " ".join(s["Before"])
    assert s["RequiresMountsFor"] == ["/srv/nfs"]
    # _netdev: a network mount, started with the remote file systems;
    # nofail: wanted, not required, so boot goes on without it.
    assert (out / "remote-fs.target.wants" / "mnt-q.mount").exists()
    assert not (out / "remote-fs.target.requires").exists()
    assert not (out / "local-fs.target.wants" / "mnt-q.mount").exists()
    if shutil.which("systemd-analyze"):
        analyze_verify(unit)


def service_unit(tmp_path, bindir):
    """packaging/quorumfs@.service, its program named by its path in
    bindir (systemd-analyze verify wants it to exist; installed, the
    bare name finds /usr/sbin/quorumfs)."""
    text = (qfs.REPO / "packaging" / "quorumfs@.service").read_text()
    assert re.search(r"^ExecStart=quorumfs ", text, re.M)
    text = text.replace("ExecStart=quorumfs ",
                        "ExecStart=%s/quorumfs " % bindir)
    d = tmp_path / "units"
    d.mkdir()
    (d / "quorumfs@.service").write_text(text)
    (d / "quorumfs@mnt-q.service").symlink_to("quorumfs@.service")
    return d / "quorumfs@mnt-q.service", text


def exec_start(text, env, mountpoint):
    """ExecStart= as systemd runs it: ${VAR} one word each, %f the
    mountpoint."""
    line = unit_settings(text)["ExecStart"][0]
    words = []
    for w in shlex.split(line):
        w = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), w)
        words.append(w.replace("%f", str(mountpoint)))
    return words


def environment_file(path):
    """The KEY=VALUE lines of an EnvironmentFile."""
    env = {}
    for line in path.read_text().split("\n"):
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k] = v
    return env


@pytest.mark.timeout(120)
def test_the_service_unit_verifies_and_its_command_line_mounts(tmp_path):
    bindir = command_dir(tmp_path)
    unit, text = service_unit(tmp_path, bindir)
    if shutil.which("systemd-analyze"):
        # Its Documentation= names quorumfs(8) and quorumctl(8).
        mandir = tmp_path / "man"
        (mandir / "man8").mkdir(parents=True)
        for page in ("quorumfs.8", "quorumctl.8"):
            (mandir / "man8" / page).symlink_to(qfs.REPO / "man" / page)
        analyze_verify(unit, mandir)
    s = unit_settings(text)
    assert s["Type"] == ["notify"]
    assert "libvirtd.service" in " ".join(s["Before"])
    # The example settings file, with this test's paths.
    env = environment_file(qfs.REPO / "packaging" / "quorumfs.conf")
    assert set(env) == {"CHILDREN", "OPTIONS"}
    children = make_dirs(tmp_path, "a", "b", "c")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env["CHILDREN"] = ":".join(map(str, children))
    env["OPTIONS"] = re.sub(r"log=[^,]*", "log=%s" % (tmp_path / "ev.jsonl"),
                            env["OPTIONS"]) + ",control-socket=%s" % (
                                tmp_path / "ctl.sock")
    cmd = exec_start(text, env, mnt)
    notify = NotifySocket(tmp_path / "notify")
    proc = subprocess.Popen(cmd, env=dict(os.environ,
                                          NOTIFY_SOCKET=notify.path),
                            stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert notify.next() == "READY=1"
        assert qfs.is_fuse_mounted(mnt)
        qfs.write_file(mnt / "f", b"unit")
        # systemctl stop: SIGTERM to the main process (KillMode=mixed).
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()
        assert notify.next() == "STOPPING=1"
        assert not qfs.is_fuse_mounted(mnt)
        assert qfs.read_file(children[2] / "f") == b"unit"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        qfs.lazy_unmount(mnt)
        notify.close()
