"""What a mount makes of its children before serving, and what survives a
restart (README "The record in each child"): a first mount of children
that differ, a child that cannot write its record, an option libfuse
refuses, the rules and states the record carries to the next mount, and
the events that tell of it.
"""

import json
import os
import subprocess

import pytest

import qfs
from control_util import (child_status, control, control_errno, status,
                          wait_child_state, wait_status)
from qfs import read_file, write_file

MiB = 1024 * 1024


def make_dirs(base, n):
    dirs = [base / ("c%d" % i) for i in range(n)]
    for d in dirs:
        d.mkdir()
    return dirs


def no_records(dirs):
    return not any(os.path.exists(d / ".quorumfs") for d in dirs)


# --- a first mount ----------------------------------------------------

def test_a_first_mount_of_children_that_differ_is_refused(
        tmp_path, run_daemon):
    dirs = make_dirs(tmp_path, 3)
    write_file(dirs[0] / "vm.img", b"an image" * 1000)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, err = run_daemon("-f", *dirs, mnt)
    assert rc != 0
    assert "differ" in err and "sync-from" in err, err
    assert str(dirs[0]) in err and "vm.img" in err and "is empty" in err, err
    assert no_records(dirs)
    assert read_file(dirs[0] / "vm.img") == b"an image" * 1000


def test_sync_from_fills_the_others_before_the_mount_serves(tmp_path, quorum):
    dirs = make_dirs(tmp_path, 3)
    data = os.urandom(3 * MiB)
    write_file(dirs[0] / "vm.img", data)
    os.mkdir(dirs[0] / "sub")
    write_file(dirs[0] / "sub" / "x", b"x")
    m = quorum(children=dirs, opts=["sync-from=%s" % dirs[0]])
    for d in dirs[1:]:
        assert read_file(d / "vm.img") == data
        assert read_file(d / "sub" / "x") == b"x"
    doc = status(m)
    assert [c["state"] for c in doc["children"]] == ["ok"] * 3
    assert doc["threshold"] == 2
    assert read_file(m.path("vm.img")) == data
    m.wait_event("RESYNC_COMPLETED", lambda d: d["node-name"] == str(dirs[1]))


def test_sync_from_is_refused_for_children_that_have_records(
        tmp_path, quorum, run_daemon):
    dirs = make_dirs(tmp_path, 3)
    quorum(children=dirs).unmount()
    mnt = tmp_path / "mnt2"
    mnt.mkdir()
    rc, err = run_daemon("-f", "-o", "sync-from=%s" % dirs[1], *dirs, mnt)
    assert rc != 0 and "only for a first mount" in err, err


def test_a_first_mount_of_identical_children_is_accepted(tmp_path, quorum):
    dirs = make_dirs(tmp_path, 3)
    for d in dirs:
        write_file(d / "same.img", b"same" * 4096)
    m = quorum(children=dirs)
    assert read_file(m.path("same.img")) == b"same" * 4096


def test_a_bad_libfuse_option_touches_no_child(tmp_path, run_daemon):
    dirs = make_dirs(tmp_path, 3)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, err = run_daemon("-f", "-o", "no_such_fuse_option", *dirs, mnt)
    assert rc != 0 and "no_such_fuse_option" in err, err
    assert no_records(dirs)


# --- a child on a read-only file system --------------------------------

@pytest.fixture
def read_only(tmp_path):
    """read_only(dir): dir bind-mounted read-only over itself, undone
    after the test."""
    made = []

    def make(d):
        subprocess.run(["mount", "--bind", str(d), str(d)], check=True)
        made.append(d)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(d)],
                       check=True)
        return d

    yield make
    for d in reversed(made):
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_a_read_only_child_is_failed_at_mount_with_its_reason(
        tmp_path, quorum, read_only):
    dirs = make_dirs(tmp_path, 3)
    read_only(dirs[2])
    m = quorum(children=dirs, threshold=2)
    c = child_status(status(m), str(dirs[2]))
    assert c["state"] == "failed", c
    assert "cannot write its .quorumfs record" in c["reason"], c
    assert "Read-only file system" in c["reason"], c
    write_file(m.path("f"), b"still served")
    assert read_file(m.path("f")) == b"still served"


def test_too_few_writable_children_refuse_the_mount(
        tmp_path, run_daemon, read_only):
    dirs = make_dirs(tmp_path, 3)
    read_only(dirs[1])
    read_only(dirs[2])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, err = run_daemon("-f", "-o", "threshold=2", *dirs, mnt)
    assert rc != 0 and "can write their .quorumfs record" in err, err


# --- what the record carries to the next mount --------------------------

def test_one_child_on_the_command_line_mounts_the_set_with_its_threshold(
        tmp_path, quorum):
    dirs = make_dirs(tmp_path, 4)
    m = quorum(children=dirs)
    assert status(m)["threshold"] == 3
    control(m, "threshold 2")
    control(m, "read-pattern fifo")
    m.unmount()
    # One child is what an fstab line with one device gives.
    one = quorum(children=dirs[:1], mountpoint=m.mnt)
    doc = status(one)
    assert len(doc["children"]) == 4 and doc["totals"]["voting"] == 4
    assert doc["threshold"] == 2 and doc["read-pattern"] == "fifo"
    one.unmount()
    given = quorum(children=dirs[:1], mountpoint=m.mnt, opts=["threshold=4"])
    assert status(given)["threshold"] == 4


def test_a_threshold_above_the_members_is_refused_with_the_bound(
        tmp_path, quorum, run_daemon):
    dirs = make_dirs(tmp_path, 3)
    quorum(children=dirs).unmount()
    mnt = tmp_path / "mnt2"
    mnt.mkdir()
    rc, err = run_daemon("-f", "-o", "threshold=4", dirs[0], mnt)
    assert rc != 0 and "from 1 to 3" in err, err


def test_a_failed_child_stays_failed_across_a_restart_until_resync(
        tmp_path, scratch_fs, quorum):
    dirs = make_dirs(tmp_path, 2)
    small = scratch_fs("tmpfs", size="1M")
    m = quorum(children=dirs + [small], threshold=2)
    for i in range(3):
        write_file(m.path("img%d" % i), os.urandom(512 * 1024))
    control(m, "resync %s" % small)
    doc = wait_child_state(m, str(small), "failed", timeout=30)
    c = child_status(doc, str(small))
    # A copy that failed shows no progress, and logs none afterwards.
    assert c["resync"]["percent"] == 0 and c["resync"]["bytes-done"] == 0
    names = [(e["event"], e["data"].get("new")) for e in m.events()
             if e["data"].get("node-name") == str(small)]
    failed_at = len(names) - 1 - names[::-1].index(
        ("CHILD_STATE_CHANGED", "failed"))
    assert ("RESYNC_PROGRESS", None) not in names[failed_at + 1:], names
    m.unmount()
    again = quorum(children=dirs + [small], threshold=2, mountpoint=m.mnt)
    c = child_status(status(again), str(small))
    assert c["state"] == "failed", c
    assert c["reason"].startswith("failed before the last unmount"), c
    assert not [d for d in again.events_named("RESYNC_PROGRESS")
                if d["node-name"] == str(small)]
    # The operator makes room and asks for it back.
    for name in os.listdir(small):
        if name != ".quorumfs":
            os.remove(small / name)
    for i in (1, 2):
        os.remove(again.path("img%d" % i))
    control(again, "resync %s" % small)
    wait_child_state(again, str(small), "ok", timeout=30)
    again.unmount()
    third = quorum(children=dirs + [small], threshold=2, mountpoint=m.mnt)
    assert child_status(status(third), str(small))["state"] == "ok"


def test_state_changes_of_a_child_are_logged_in_order(quorum, scratch_fs):
    m = quorum(n=3)
    write_file(m.path("f"), os.urandom(MiB))
    extra = scratch_fs("tmpfs")
    for _ in range(3):
        control(m, "add %s name=x" % extra)
        wait_child_state(m, "x", "ok", timeout=30)
        control(m, "resync x")
        wait_child_state(m, "x", "ok", timeout=30)
        control(m, "remove x")
    # Within each membership (from CHILD_ADDED on), every change starts
    # from the state the one before it left.
    state, seen = None, 0
    for e in m.events():
        if e["data"].get("node-name") != "x":
            continue
        if e["event"] == "CHILD_ADDED":
            state = "syncing"
        elif e["event"] == "CHILD_STATE_CHANGED":
            assert e["data"]["old"] == state, e
            state = e["data"]["new"]
            seen += 1
    assert seen >= 9


def test_resync_completed_counts_the_bytes_copied(quorum, scratch_fs):
    m = quorum(n=3)
    with open(m.path("sparse"), "wb") as f:
        f.truncate(64 * MiB)
        f.seek(8 * MiB)
        f.write(os.urandom(MiB))
    extra = scratch_fs("tmpfs")
    control(m, "add %s name=x" % extra)
    done = m.wait_event("RESYNC_COMPLETED", lambda d: d["node-name"] == "x",
                        timeout=60)
    assert MiB <= done["bytes"] <= 2 * MiB, done


def test_a_child_serves_one_mount_at_a_time(tmp_path, quorum, run_daemon):
    dirs = make_dirs(tmp_path, 3)
    m = quorum(children=dirs)
    write_file(m.path("f"), b"first")
    other = tmp_path / "other"
    other.mkdir()
    rc, err = run_daemon("-f", "-o", "control-socket=none", *dirs, other)
    assert rc == 1 and "in use by another quorumfs mount" in err, err
    assert str(dirs[0]) in err
    m.unmount()
    m.start()  # the lock went with the daemon
    assert read_file(m.path("f")) == b"first"


# --- a member's file system that is not mounted ------------------------

def members(child):
    with open(child / ".quorumfs" / "state") as f:
        return [m["path"] for m in json.load(f)["members"]]


def test_an_empty_directory_where_a_member_was_is_never_filled(
        tmp_path, quorum, run_daemon):
    """A network child whose file system did not come up leaves an empty
    mount point. On the command line it refuses the mount, with the
    reason; left out, the set mounts without it and keeps it a member;
    once its file system is back it only catches up."""
    dirs = make_dirs(tmp_path, 3)
    m = quorum(children=dirs, threshold=2)
    write_file(m.path("vm.img"), b"before" * 1000)
    m.unmount()
    real = dirs[2].rename(tmp_path / "c2.export")
    dirs[2].mkdir()     # the empty mount point
    mnt = tmp_path / "mnt2"
    mnt.mkdir()
    rc, err = run_daemon("-f", *dirs, mnt)
    assert rc != 0, err
    assert "empty directory" in err and "mounted" in err, err
    assert os.listdir(dirs[2]) == []

    two = quorum(children=dirs[:2], threshold=2, mountpoint=m.mnt)
    assert [c["path"] for c in status(two)["children"]] == \
        [str(d) for d in dirs[:2]]
    write_file(two.path("vm.img"), b"after" * 1000)
    two.unmount()
    assert os.listdir(dirs[2]) == []
    assert members(dirs[0]) == [str(d) for d in dirs]

    dirs[2].rmdir()     # its file system is mounted again
    real.rename(dirs[2])
    back = quorum(children=dirs, threshold=2, mountpoint=m.mnt)
    wait_status(back, lambda d: all(c["state"] == "ok"
                                    for c in d["children"]), 30,
                "the returning member to catch up")
    assert read_file(dirs[2] / "vm.img") == b"after" * 1000
    assert back.events_named("RESYNC_COMPLETED")[0]["files"] == 1


def test_add_enrols_an_empty_directory_where_a_member_was_anew(
        tmp_path, quorum):
    """A disk replaced by an empty one at the same path: the operator adds
    it; it is filled, and the old member it stood for is gone."""
    dirs = make_dirs(tmp_path, 3)
    m = quorum(children=dirs, threshold=2)
    write_file(m.path("vm.img"), b"data" * 1000)
    m.unmount()
    for name in os.listdir(dirs[2]):
        p = dirs[2] / name
        if p.is_dir():
            subprocess.run(["rm", "-rf", str(p)], check=True)
        else:
            p.unlink()
    two = quorum(children=dirs[:2], threshold=2, mountpoint=m.mnt)
    assert len(status(two)["children"]) == 2
    control(two, "add %s" % dirs[2])
    wait_child_state(two, str(dirs[2]), "ok", timeout=30)
    assert read_file(dirs[2] / "vm.img") == b"data" * 1000
    assert sorted(members(dirs[0])) == sorted(str(d) for d in dirs)
