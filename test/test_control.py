"""MOUNTPOINT/.control: runtime membership and rules, refusals and the
status document (README "Runtime control" and
"Event log").

Each write() to .control is one command. A refused command fails that
write with the errno an administrator would expect (EINVAL for a
malformed line or an impossible request, ENOENT/ENOTDIR/EEXIST for a bad
path), changes nothing, keeps the daemon up and logs CONTROL_ERROR; the
status shows it as last-control-error. Accepted commands take effect on
the next request: a threshold or read-pattern change is visible to the
very next read.

The status is read back after every step and compared with what the
test did (children, states, votes, threshold, counters, totals).
"""

import errno
import json
import os
import stat
import subprocess
import sys
import threading

import pytest

import qfs
from qfs import read_file, write_file
from control_util import (KiB, MiB, RESERVED, AlignedBuffer, Writer, assert_same_tree,
                          block, check_status_shape, child_status, control,
                          control_errno, control_errors, stable_status,
                          status, status_text, tree_mtimes, tree_state,
                          wait_child_state, wait_status, wait_writes,
                          walk)


def corrupt(path, offset=0, count=4096):
    """Invert count bytes of a child's file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))


def printable(command):
    """The command as the daemon logs it: one trailing newline dropped,
    other bytes outside printable ASCII shown as '?'."""
    if command.endswith(b"\n"):
        command = command[:-1]
    return "".join(chr(b) if 0x20 <= b < 0x7f else "?" for b in command)


def wait_control_errors(m, count):
    qfs.wait_for(lambda: len(control_errors(m)) >= count,
                 10 * qfs.deadline_scale(),
                 "%d CONTROL_ERROR events" % count)
    return control_errors(m)


def run_as(uid, code, cwd):
    def drop():
        os.chdir(cwd)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    res = subprocess.run([sys.executable, "-I", "-c", code], preexec_fn=drop,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


# --- the file itself --------------------------------------------------

def test_control_is_a_private_file_of_the_mounting_user_not_listed(quorum):
    m = quorum(n=3)
    write_file(m.path("f"), b"x")
    st = os.stat(m.path(".control"))
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert sorted(os.listdir(m.mnt)) == ["f"]
    for i in range(3):
        assert not os.path.lexists(m.child_file(i, ".control"))
    # Its mode and owner are not for changing.
    for change in (lambda: os.chmod(m.path(".control"), 0o666),
                   lambda: os.chown(m.path(".control"), 1234, 1234)):
        with pytest.raises(OSError) as e:
            change()
        assert e.value.errno == errno.EPERM, qfs.errno_name(e.value.errno)
    st = os.stat(m.path(".control"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.geteuid())
    # Nothing a command wrote ever reaches a child.
    control(m, "threshold 2")
    for i in range(3):
        assert sorted(set(os.listdir(m.children[i])) - RESERVED) == ["f"]


ATTEMPT = """
import errno, os
for flags, what in ((os.O_RDONLY, "read"), (os.O_WRONLY, "write"),
                    (os.O_RDWR, "rdwr")):
    try:
        fd = os.open(".control", flags)
    except OSError as e:
        print(what, errno.errorcode[e.errno])
    else:
        os.close(fd)
        print(what, "opened")
st = os.stat(".control")
print("stat", oct(st.st_mode & 0o7777), st.st_uid)
"""


def test_another_user_can_neither_read_nor_write_control(quorum):
    m = quorum(n=3, opts=["allow_other"])
    os.chmod(m.mnt, 0o755)
    out = run_as(1234, ATTEMPT, m.mnt).split("\n")
    assert out[:3] == ["read EACCES", "write EACCES", "rdwr EACCES"], out
    assert out[3] == "stat 0o600 %d" % os.geteuid(), out
    doc = status(m)
    assert doc["threshold"] == 2 and doc["last-control-error"] is None


# --- the status document ----------------------------------------------

def test_status_matches_the_real_state_at_every_step(tmpfs_dir, scratch_fs,
                                                     quorum):
    m = quorum(n=3)
    doc = status(m)
    check_status_shape(doc)
    assert doc["threshold"] == 2
    assert doc["read-pattern"] == "quorum"
    assert doc["rewrite-corrupted"] is False
    assert doc["blkverify"] is False
    assert doc["mountpoint"] == m.mnt
    assert doc["last-control-error"] is None
    assert doc["events-dropped"] == 0
    assert [(c["name"], c["path"], c["state"], c["votes"])
            for c in doc["children"]] == [(p, p, "ok", True)
                                          for p in m.children]
    assert doc["totals"] == {"children": 3, "voting": 3, "read-errors": 0,
                             "write-errors": 0, "flush-errors": 0}

    # A named fourth child.
    extra = scratch_fs("tmpfs")
    write_file(m.path("f"), block("f", 0, 0, 64 * KiB))
    control(m, "add %s name=n4" % extra)
    doc = wait_child_state(m, "n4", "ok")
    check_status_shape(doc)
    c = child_status(doc, "n4")
    assert c["path"] == str(extra) and c["votes"] is True
    assert c["resync"]["files-done"] == 1
    assert doc["totals"]["children"] == 4 and doc["totals"]["voting"] == 4
    assert [x["name"] for x in doc["children"]] == m.children + ["n4"]

    # Rules.
    control(m, "threshold 3")
    control(m, "read-pattern fifo")
    control(m, "rewrite-corrupted on")
    doc = status(m)
    assert (doc["threshold"], doc["read-pattern"],
            doc["rewrite-corrupted"]) == (3, "fifo", True)
    control(m, "read-pattern quorum")
    control(m, "rewrite-corrupted off")

    # Error counters: child 0 loses a read vote, child 1 cannot open a
    # file for writing (a directory stands in its place there).
    corrupt(m.child_file(0, "f"))
    assert read_file(m.path("f")) == block("f", 0, 0, 64 * KiB)
    for i in (0, 2):
        write_file(m.child_file(i, "w"), b"w")
    write_file(os.path.join(extra, "w"), b"w")
    os.mkdir(m.child_file(1, "w"))
    with open(m.path("w"), "r+b") as f:
        f.write(b"W")
    doc = status(m)
    check_status_shape(doc)
    errs = {c["name"]: c["errors"] for c in doc["children"]}
    assert errs[m.children[0]]["read"] >= 1, errs
    assert errs[m.children[1]]["write"] >= 1, errs
    assert errs[m.children[2]] == {"read": 0, "write": 0, "flush": 0}
    assert errs["n4"]["read"] == 0 and errs["n4"]["write"] == 0, errs
    assert doc["totals"]["read-errors"] == sum(e["read"] for e in errs.values())
    # Child 1 missed that write: it stopped voting. Its automatic resync
    # fails while child 0 holds a corrupt f (threshold 3 leaves no quorum
    # to copy f from); once f is mended, a requested resync brings it back.
    wait_status(m, lambda d: child_status(d, m.children[1])["state"] in
                ("failed", "ok"), 60, "child 1's automatic resync to end")
    write_file(m.child_file(0, "f"), block("f", 0, 0, 64 * KiB))
    control(m, "resync %s" % m.children[1])
    wait_child_state(m, m.children[1], "ok")
    assert read_file(m.child_file(1, "w")) == b"W"

    # Removal by name.
    control(m, "remove n4")
    doc = status(m)
    check_status_shape(doc)
    assert [x["name"] for x in doc["children"]] == m.children
    assert doc["totals"]["children"] == 3 and doc["threshold"] == 3
    assert doc["last-control-error"] is None


def test_status_is_a_snapshot_taken_at_open(quorum):
    m = quorum(n=3)
    with open(m.path(".control"), "rb") as before:
        control(m, "threshold 3")
        # Read it in small pieces: offsets must work too.
        raw = b""
        while True:
            piece = before.read(7)
            if not piece:
                break
            raw += piece
    assert json.loads(raw)["threshold"] == 2
    assert status(m)["threshold"] == 3
    assert status_text(m) == status_text(m)


# --- threshold --------------------------------------------------------

def test_a_threshold_change_decides_the_very_next_read(quorum):
    m = quorum(n=3, threshold=2)
    data = block("f", 0, 0, 128 * KiB)
    write_file(m.path("f"), data)
    corrupt(m.child_file(0, "f"), 8 * KiB)
    assert read_file(m.path("f")) == data

    control(m, "threshold 3")
    with pytest.raises(OSError) as e:
        read_file(m.path("f"))
    assert e.value.errno == errno.EIO, qfs.errno_name(e.value.errno)
    m.wait_event("QUORUM_FAILURE", lambda d: d.get("reference") == "f")
    assert status(m)["threshold"] == 3

    control(m, "threshold 2\n")
    assert read_file(m.path("f")) == data
    assert status(m)["threshold"] == 2

    changes = [(d["old"], d["new"])
               for d in m.events_named("THRESHOLD_CHANGED")]
    assert changes == [(2, 3), (3, 2)], changes
    assert control_errno(m, "threshold 4") == errno.EINVAL
    assert status(m)["threshold"] == 2
    # Writes follow the threshold too: at 1, one child suffices.
    control(m, "threshold 1")
    assert status(m)["threshold"] == 1
    m.wait_event("THRESHOLD_CHANGED", lambda d: d["new"] == 1)


@pytest.mark.timeout(90)
def test_a_syncing_child_does_not_count_toward_the_threshold(
        tmpfs_dir, scratch_fs, quorum):
    m = quorum(n=3, threshold=2)
    extra = scratch_fs("tmpfs", size="1G")
    with open(m.path("big.img"), "wb") as f:
        for off in range(0, 192 * MiB, 4 * MiB):
            f.write(block("big", 0, off, 4 * MiB))
    control(m, "add %s name=late" % extra)
    for attempt in range(5):
        err = None
        try:
            control(m, "threshold 4")
        except OSError as e:
            err = e.errno
        doc = status(m)
        if child_status(doc, "late")["state"] == "syncing":
            # The command was decided while the child was still syncing.
            assert err == errno.EINVAL, qfs.errno_name(err or 0)
            assert doc["threshold"] == 2
            assert doc["totals"]["voting"] == 3
            break
        # The copy won the race: make it copy again and retry.
        if err is None:
            control(m, "threshold 2")
        control(m, "resync late")
    else:
        pytest.fail("never caught the child syncing")
    wait_child_state(m, "late", "ok", timeout=60)
    control(m, "threshold 4")
    assert status(m)["threshold"] == 4


# --- read-pattern and rewrite-corrupted at runtime ----------------------

def test_read_pattern_fifo_at_runtime_returns_child_0_as_it_is(quorum):
    m = quorum(n=3, threshold=2)
    data = block("f", 0, 0, 64 * KiB)
    write_file(m.path("f"), data)
    corrupt(m.child_file(0, "f"), 0, 64 * KiB)
    bad = read_file(m.child_file(0, "f"))
    assert read_file(m.path("f")) == data
    control(m, "read-pattern fifo")
    assert status(m)["read-pattern"] == "fifo"
    assert read_file(m.path("f")) == bad
    control(m, "read-pattern quorum")
    assert status(m)["read-pattern"] == "quorum"
    assert read_file(m.path("f")) == data


def test_rewrite_corrupted_switched_on_at_runtime_repairs_on_read(quorum):
    m = quorum(n=3, threshold=2)
    data = block("f", 0, 0, 64 * KiB)
    write_file(m.path("f"), data)
    corrupt(m.child_file(0, "f"), 4 * KiB)
    assert read_file(m.path("f")) == data
    assert read_file(m.child_file(0, "f")) != data, \
        "repaired although rewrite-corrupted is off"
    control(m, "rewrite-corrupted on")
    assert status(m)["rewrite-corrupted"] is True
    assert read_file(m.path("f")) == data
    assert read_file(m.child_file(0, "f")) == data
    control(m, "rewrite-corrupted off")
    assert status(m)["rewrite-corrupted"] is False
    corrupt(m.child_file(0, "f"), 4 * KiB)
    assert read_file(m.path("f")) == data
    assert read_file(m.child_file(0, "f")) != data


# --- remove -----------------------------------------------------------

SLOT = 64 * KiB
IMG = 16 * MiB


def image_writer(m, rel):
    def setup(w):
        w.state["fd"] = os.open(m.path(rel), os.O_WRONLY | os.O_DIRECT)
        w.state["buf"] = AlignedBuffer(SLOT)
        w.state["last"] = {}

    def step(w, seq):
        off = w.rng.randrange(IMG // SLOT) * SLOT
        view = w.state["buf"].fill(block(rel, seq, off, SLOT))
        try:
            assert os.pwrite(w.state["fd"], view, off) == SLOT
        finally:
            view.release()
        w.state["last"][off] = seq

    def teardown(w):
        os.close(w.state["fd"])
        w.state["buf"].close()

    return Writer(rel, step, setup, teardown)


def full_snapshot(root):
    """Contents and every time of every entry: nothing may change."""
    state = tree_state(root)
    rels = [r for r, _, _ in walk(root)] + [""]
    return state, tree_mtimes(root, rels)


@pytest.mark.timeout(120)
def test_a_child_removed_during_sustained_writes_is_never_written_again(
        backing, quorum):
    m = quorum(n=3, threshold=2)
    for rel in ("vm1.img", "vm2.img"):
        write_file(m.path(rel), block(rel + "-0", 0, 0, IMG))
    os.mkdir(m.path("logs"))
    writers = [image_writer(m, "vm1.img"), image_writer(m, "vm2.img")]

    def log_step(w, seq):
        with open(m.path("logs/l%d" % (seq % 50)), "ab") as f:
            f.write(block("log", seq, 0, 512))

    writers.append(Writer("log", log_step))
    for w in writers:
        w.start()
    gone = m.children[2]
    try:
        wait_writes(writers, 20, 30, "the writers to get going")
        control(m, "remove %s" % gone)
        # From the moment remove returns, the child is the operator's.
        snap = full_snapshot(gone)
        doc = status(m)
        wait_writes(writers, 100, 60, "writes after the remove")
    finally:
        for w in writers:
            w.stop()
    errors = [e for w in writers for e in w.errors]
    assert not errors, "a writer saw an error:\n" + "\n".join(errors)
    after = full_snapshot(gone)
    assert after[0] == snap[0], "the removed child's data changed"
    assert after[1] == snap[1], "the removed child's times changed"

    removed = m.wait_event("CHILD_REMOVED", lambda d: d["node-name"] == gone)
    assert removed["path"] == gone
    check_status_shape(doc)
    assert [c["name"] for c in doc["children"]] == m.children[:2]
    assert doc["totals"]["children"] == 2 and doc["totals"]["voting"] == 2
    assert_same_tree(m.children[0], m.children[1])
    for w in writers[:2]:
        with open(m.path(w.name), "rb") as f:
            for off, seq in w.state["last"].items():
                f.seek(off)
                assert f.read(SLOT) == block(w.name, seq, off, SLOT), off
    assert not m.events_named("QUORUM_FAILURE")

    # Two voters at threshold 2: neither may go.
    before = stable_status(status(m))
    for victim in m.children[:2]:
        assert control_errno(m, "remove %s" % victim) == errno.EINVAL
    assert stable_status(status(m)) == before
    errs = wait_control_errors(m, 2)
    assert [e["command"] for e in errs] == [
        "remove %s" % c for c in m.children[:2]]
    assert all("threshold" in e["reason"] for e in errs), errs
    assert status(m)["last-control-error"] == {
        "command": errs[-1]["command"], "reason": errs[-1]["reason"]}
    # At threshold 1 one may go, the last may not.
    control(m, "threshold 1")
    control(m, "remove %s" % m.children[1])
    assert control_errno(m, "remove %s" % m.children[0]) == errno.EINVAL
    write_file(m.path("still"), b"works")
    assert read_file(m.path("still")) == b"works"
    assert [c["name"] for c in status(m)["children"]] == m.children[:1]


# --- refusals ---------------------------------------------------------

@pytest.fixture
def refusal_setup(tmp_path, scratch_fs, quorum):
    m = quorum(n=3, threshold=2)
    write_file(m.path("f"), block("f", 0, 0, 16 * KiB))
    os.mkdir(m.path("inner"))
    out = tmp_path / "outside"
    out.mkdir()
    (out / "regular").write_bytes(b"not a directory")
    (out / "spare").mkdir()
    (out / "spare2").mkdir()
    os.symlink(m.children[0], out / "link-to-child0")
    os.symlink(m.mnt, out / "link-to-mount")
    os.symlink(m.path("inner"), out / "link-into-mount")
    # A named member, to collide with.
    named = scratch_fs("tmpfs")
    control(m, "add %s name=extra" % named)
    wait_child_state(m, "extra", "ok")
    return m, out


def refusals(m, out):
    """(command bytes, errno, a word the reason must contain)."""
    c0 = m.children[0]
    mnt = m.mnt
    parent = os.path.dirname(mnt)
    huge = b"add /" + b"a" * MiB
    return [
        (b"frobnicate", errno.EINVAL, "frobnicate"),
        (b"THRESHOLD 2", errno.EINVAL, "THRESHOLD"),
        (b"threshold 0", errno.EINVAL, "threshold"),
        (b"threshold -1", errno.EINVAL, "threshold"),
        (b"threshold abc", errno.EINVAL, "threshold"),
        (b"threshold 2.0", errno.EINVAL, "threshold"),
        (b"threshold 99", errno.EINVAL, "threshold"),
        (b"threshold 99999999999999999999", errno.EINVAL, "threshold"),
        (b"threshold 5", errno.EINVAL, "threshold"),  # 4 voting children
        (b"threshold", errno.EINVAL, "threshold"),
        (b"threshold 2 3", errno.EINVAL, "threshold"),
        (b"read-pattern sideways", errno.EINVAL, "sideways"),
        (b"read-pattern", errno.EINVAL, "read-pattern"),
        (b"rewrite-corrupted yes", errno.EINVAL, "yes"),
        (b"add", errno.EINVAL, "add"),
        (b"add relative/dir", errno.EINVAL, "relative/dir"),
        (b"add ./spare", errno.EINVAL, "./spare"),
        (b"add %s name=" % bytes(out / "spare"), errno.EINVAL, "name="),
        (b"add %s nom=x" % bytes(out / "spare"), errno.EINVAL, "nom=x"),
        (b"add %s name=a name=b" % bytes(out / "spare"), errno.EINVAL,
         "add"),
        (b"add %s" % bytes(out / "missing"), errno.ENOENT, "missing"),
        (b"add %s" % bytes(out / "regular"), errno.ENOTDIR, "regular"),
        (b"add %s" % mnt.encode(), errno.EINVAL, mnt),
        (b"add %s/" % mnt.encode(), errno.EINVAL, mnt),
        (b"add %s/inner" % mnt.encode(), errno.EINVAL, "inner"),
        (b"add %s/../%s" % (mnt.encode(), os.path.basename(mnt).encode()),
         errno.EINVAL, mnt),
        (b"add %s" % bytes(out / "link-to-mount"), errno.EINVAL,
         "link-to-mount"),
        (b"add %s" % bytes(out / "link-into-mount"), errno.EINVAL,
         "link-into-mount"),
        (b"add %s" % parent.encode(), errno.EINVAL, parent),
        (b"add /", errno.EINVAL, "/"),
        (b"add %s" % c0.encode(), errno.EEXIST, c0),
        (b"add %s/" % c0.encode(), errno.EEXIST, c0),
        (b"add %s/." % c0.encode(), errno.EEXIST, c0),
        (b"add %s" % bytes(out / "link-to-child0"), errno.EEXIST,
         "link-to-child0"),
        (b"add %s name=extra" % bytes(out / "spare"), errno.EEXIST, "extra"),
        (b"add %s name=%s" % (bytes(out / "spare"), m.children[1].encode()),
         errno.EEXIST, m.children[1]),
        (b"remove", errno.EINVAL, "remove"),
        (b"remove nobody", errno.ENOENT, "nobody"),
        (b"remove extra extra", errno.EINVAL, "remove"),
        (b"remove ''", errno.EINVAL, "remove"),
        (b'resync ""', errno.EINVAL, "resync"),
        (b"resync nobody", errno.ENOENT, "nobody"),
        (b"threshold 2\x00", errno.EINVAL, "NUL"),
        (b"add \x00/etc", errno.EINVAL, "NUL"),
        (b"threshold 2\nthreshold 3\n", errno.EINVAL, "one command"),
        (b"threshold 2\nthreshold 3", errno.EINVAL, "one command"),
        (b"threshold 3\n\n", errno.EINVAL, "one command"),
        (b"\n", errno.EINVAL, "empty"),
        (b"  \t \n", errno.EINVAL, "empty"),
        (b"threshold 2" + b" " * 4085, errno.EINVAL, "4095"),
        (huge, errno.EINVAL, "4095"),
    ]


@pytest.mark.timeout(90)
def test_every_bad_command_is_refused_with_its_errno_and_changes_nothing(
        refusal_setup):
    m, out = refusal_setup
    doc = status(m)
    check_status_shape(doc)
    assert doc["totals"]["voting"] == 4
    before = stable_status(doc)
    failures = []
    for command, want, word in refusals(m, out):
        n_events = len(control_errors(m))
        got = control_errno(m, command)
        if got != want:
            failures.append("%r: %s, expected %s" % (
                command[:80], qfs.errno_name(got), qfs.errno_name(want)))
            continue
        assert m.running(), "the daemon died on %r" % command[:80]
        doc = status(m)
        assert stable_status(doc) == before, \
            "%r changed the status" % command[:80]
        events = wait_control_errors(m, n_events + 1)
        assert len(events) == n_events + 1, events[n_events:]
        ev = events[-1]
        shown = printable(command)
        assert ev["command"] == shown[:len(ev["command"])], ev
        assert len(ev["command"]) >= min(len(shown), 200), ev
        assert ev["error"] == os.strerror(want), ev
        assert ev["reason"], ev
        if word not in ev["reason"] and word not in ev["command"]:
            failures.append("%r: reason %r does not say %r" % (
                command[:80], ev["reason"], word))
        assert doc["last-control-error"] == {"command": ev["command"],
                                             "reason": ev["reason"]}
    assert not failures, "\n".join(failures)
    # Still fully working.
    assert read_file(m.path("f")) == block("f", 0, 0, 16 * KiB)
    control(m, "threshold 3")
    assert status(m)["threshold"] == 3
    for i in range(3):
        assert sorted(set(os.listdir(m.children[i])) - RESERVED) == \
            ["f", "inner"]


def test_commands_at_the_length_limit_and_in_other_spellings_work(quorum):
    m = quorum(n=3, threshold=2)
    # 4095 bytes is the longest command, with or without its newline.
    control(m, b"threshold 3" + b" " * 4084)
    assert status(m)["threshold"] == 3
    control(m, b"threshold 2" + b" " * 4084 + b"\n")
    assert status(m)["threshold"] == 2
    control(m, b"threshold\t3")
    control(m, b"  threshold   2  \n")
    assert status(m)["threshold"] == 2
    # A write of nothing reaches no one: it is not a command.
    fd = os.open(m.path(".control"), os.O_WRONLY)
    try:
        assert os.write(fd, b"") == 0
        # Several commands through one open file, one write each.
        assert os.write(fd, b"threshold 3\n") == 12
        assert os.write(fd, b"read-pattern fifo\n") == 18
    finally:
        os.close(fd)
    doc = status(m)
    assert (doc["threshold"], doc["read-pattern"]) == (3, "fifo")
    assert doc["last-control-error"] is None
    assert not control_errors(m)
    # The shell way.
    subprocess.run("echo 'threshold 2' > %s" % m.path(".control"),
                   shell=True, check=True)
    assert status(m)["threshold"] == 2


def test_bind_mount_of_a_child_is_the_same_child(tmp_path, quorum):
    m = quorum(n=3)
    bind = tmp_path / "bind"
    bind.mkdir()
    subprocess.run(["mount", "--bind", m.children[1], str(bind)],
                   check=True)
    try:
        assert control_errno(m, "add %s" % bind) == errno.EEXIST
    finally:
        subprocess.run(["umount", str(bind)], check=True)
    assert status(m)["totals"]["children"] == 3


def test_blkverify_refuses_every_membership_and_rule_change(tmp_path,
                                                            quorum):
    m = quorum(n=2, threshold=2, opts=["blkverify"])
    spare = tmp_path / "spare"
    spare.mkdir()
    os.mkdir(m.path("dir"))
    before = stable_status(status(m))
    assert before["blkverify"] is True
    for command in ("add %s" % spare, "threshold 1",
                    "read-pattern fifo", "rewrite-corrupted on",
                    "resync %s" % m.children[0],
                    "remove %s" % m.children[1],
                    "policy dir threshold=1 read-pattern=fifo"):
        assert control_errno(m, command) == errno.EINVAL, command
        assert stable_status(status(m)) == before, command
    errs = wait_control_errors(m, 7)
    assert "blkverify" in errs[-1]["reason"], errs[-1]
    assert "blkverify" in errs[0]["reason"], errs[0]
    assert not os.listdir(spare)


def test_unmounted_names_the_children_and_threshold_in_force(tmp_path,
                                                             quorum):
    m = quorum(n=3, threshold=2)
    spare = tmp_path / "spare"
    spare.mkdir()
    control(m, "add %s name=late" % spare)
    wait_child_state(m, "late", "ok")
    control(m, "remove %s" % m.children[0])
    control(m, "threshold 3")
    m.unmount()
    unmounted = m.events_named("UNMOUNTED")[-1]
    assert unmounted["threshold"] == 3, unmounted
    assert unmounted["children"] == [m.children[1], m.children[2], "late"] \
        or unmounted["children"] == [m.children[1], m.children[2],
                                     str(spare)], unmounted


@pytest.mark.timeout(90)
def test_commands_status_reads_and_io_from_many_threads_at_once(tmp_path,
                                                                quorum):
    m = quorum(n=3, threshold=2)
    write_file(m.path("f"), block("f", 0, 0, 256 * KiB))
    spare = tmp_path / "spare"
    spare.mkdir()

    def flip_threshold(w, seq):
        control(m, "threshold %d" % (1 + seq % 3))

    def flip_switches(w, seq):
        control(m, "read-pattern %s" % ("fifo" if seq % 2 else "quorum"))
        control(m, "rewrite-corrupted %s" % ("on" if seq % 3 else "off"))

    def read_status(w, seq):
        check_status_shape(status(m))

    def io(w, seq):
        data = block("io", seq, 0, 64 * KiB)
        with open(m.path("f"), "r+b") as f:
            f.seek((seq % 4) * 64 * KiB)
            f.write(data)
            f.flush()
            f.seek((seq % 4) * 64 * KiB)
            assert f.read(64 * KiB) == data

    def refused(w, seq):
        assert control_errno(m, "threshold %d" % (10 + seq % 20)) == \
            errno.EINVAL

    threads = [Writer(n, f) for n, f in (
        ("threshold", flip_threshold), ("switches", flip_switches),
        ("status", read_status), ("io", io), ("refused", refused))]
    for t in threads:
        t.start()
    try:
        wait_writes(threads, 200, 60, "200 rounds of every thread")
        # Two adds of the same directory at once: one wins.
        results = []

        def add():
            try:
                control(m, "add %s name=spare" % spare)
                results.append(0)
            except OSError as e:
                results.append(e.errno)

        racers = [threading.Thread(target=add)
                  for _ in range(2)]
        for r in racers:
            r.start()
        for r in racers:
            r.join(30)
        assert sorted(results) == [0, errno.EEXIST], results
        wait_writes(threads, 50, 60, "more rounds with four children")
    finally:
        for t in threads:
            t.stop()
    errors = [e for t in threads for e in t.errors]
    assert not errors, "\n".join(errors)
    assert m.running()
    wait_child_state(m, "spare", "ok")
    control(m, "threshold 4")
    doc = status(m)
    check_status_shape(doc)
    assert doc["totals"]["children"] == 4 and doc["totals"]["voting"] == 4
    assert [c["name"] for c in doc["children"]] == m.children + ["spare"]
    assert_same_tree(m.children[0], str(spare))


# --- paths with blanks -------------------------------------------------

def test_a_path_with_blanks_is_added_and_removed_when_quoted(
        quorum, scratch_fs):
    m = quorum()
    write_file(m.path("f"), b"quoted" * 1000)
    base = scratch_fs("tmpfs")
    spaced = base / "my disk"
    spaced.mkdir()
    control(m, 'add "%s" name="disk two"' % spaced)
    doc = wait_child_state(m, "disk two", "ok")
    assert child_status(doc, "disk two")["path"] == str(spaced)
    assert read_file(spaced / "f") == b"quoted" * 1000
    control(m, "remove %s" % str(spaced).replace(" ", "\\ "))
    assert "disk two" not in [c["name"] for c in status(m)["children"]]


def test_an_unclosed_quote_is_refused_and_changes_nothing(quorum):
    m = quorum()
    before = stable_status(status(m))
    assert control_errno(m, 'add "/srv/my disk') == errno.EINVAL
    doc = status(m)
    assert "quote" in doc["last-control-error"]["reason"]
    assert stable_status(doc) == before
