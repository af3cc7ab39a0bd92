"""Directories' own rules: `policy DIR threshold=N [read-pattern=P]
[rewrite-corrupted=on|off]` and `policy DIR clear` (README "A
directory's own rules").

One mount holds images of different worth: a file's writes and reads use
the rules of the nearest directory above it with a policy, else the
mount's. Policies are kept in the children's records (a restart keeps
them, a stale child's older record cannot bring an old list back), are
checked against the voting children like the mount's threshold (a
removal or resync that would break one is refused naming the directory),
and the status lists them. One child of three is a faultfs mount that
fails writes on command.
"""

import errno
import json
import os
import subprocess

import pytest

import qfs
from control_util import child_status, control, refused, status
from qfs import read_file, write_file


@pytest.fixture
def faulty_set(faulty, scratch_fs, quorum):
    """Two tmpfs children and a faultfs one (last), threshold 2."""
    ffs = faulty(scratch_fs("tmpfs"))
    base = scratch_fs("tmpfs")
    children = [base / "a", base / "b"]
    for c in children:
        c.mkdir()
    return quorum(children=children + [ffs.mnt], threshold=2), ffs


def pwrite_errno(path, data, off=0):
    """0 when the write went through, else its errno."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, off)
        return 0
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)


def rules(doc):
    """What a policy command may change: the rules, the policies, the
    members and their states (not the request counters, which a write
    just before may still be updating)."""
    return (doc["threshold"], doc["read-pattern"], doc["rewrite-corrupted"],
            doc["policies"], [(c["name"], c["state"])
                              for c in doc["children"]])


def policies(m):
    return {p["dir"]: p for p in status(m)["policies"]}


@pytest.mark.timeout(120)
def test_a_threshold_3_directory_fails_a_write_the_mount_takes_elsewhere(
        faulty_set):
    m, ffs = faulty_set
    for d in ("gold/a/b", "gold/silver/x", "plain"):
        os.makedirs(m.path(d))
    files = ["gold/a/b/f", "gold/silver/x/f", "plain/f", "top"]
    for f in files:
        write_file(m.path(f), b"0" * 4096)
    control(m, "policy gold threshold=3")
    control(m, "policy /gold/silver/ threshold=2")
    assert policies(m) == {
        "gold": {"dir": "gold", "threshold": 3, "read-pattern": None,
                 "rewrite-corrupted": None},
        "gold/silver": {"dir": "gold/silver", "threshold": 2,
                        "read-pattern": None, "rewrite-corrupted": None}}

    ffs.set("error=EIO op=write")
    # Below gold, two of three is not enough; the nearest policy wins.
    assert pwrite_errno(m.path("gold/a/b/f"), b"1" * 4096) == errno.EIO
    assert child_status(status(m), m.children[2])["state"] == "ok"
    assert pwrite_errno(m.path("gold/silver/x/f"), b"1" * 4096) == 0
    assert pwrite_errno(m.path("plain/f"), b"1" * 4096) == 0
    assert pwrite_errno(m.path("top"), b"1" * 4096) == 0
    assert read_file(m.path("gold/silver/x/f")) == b"1" * 4096
    # The child that missed writes left the vote: below gold's
    # threshold of 3 nothing reads until it is back.
    assert child_status(status(m), m.children[2])["votes"] is False
    with pytest.raises(OSError) as e:
        read_file(m.path("gold/a/b/f"))
    assert e.value.errno == errno.EIO
    ffs.clear()


@pytest.mark.timeout(120)
def test_a_renamed_file_follows_the_policy_of_where_it_is_now(faulty_set):
    m, ffs = faulty_set
    os.mkdir(m.path("gold"))
    write_file(m.path("f"), b"0" * 4096)
    control(m, "policy gold threshold=3")
    fd = os.open(m.path("f"), os.O_RDWR)
    try:
        os.rename(m.path("f"), m.path("gold/f"))
        ffs.set("error=EIO op=write")
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"1" * 4096, 0)
        assert e.value.errno == errno.EIO
        os.rename(m.path("gold"), m.path("renamed"))
        # gold's policy names a directory no longer there: the mount's.
        assert os.pwrite(fd, b"2" * 4096, 0) == 4096
    finally:
        os.close(fd)
    ffs.clear()
    assert read_file(m.path("renamed/f")) == b"2" * 4096


@pytest.mark.timeout(120)
def test_policies_survive_a_remount_and_a_stale_child_cannot_bring_one_back(
        faulty_set):
    m, ffs = faulty_set
    for d in ("gold", "silver"):
        os.mkdir(m.path(d))
    write_file(m.path("f"), b"0" * 4096)
    control(m, "policy gold threshold=3 read-pattern=fifo "
               "rewrite-corrupted=on")
    control(m, "policy silver threshold=2")
    # The faultfs child misses a write and falls out of step, keeping a
    # record that still names both policies while the writes to it fail.
    ffs.set("error=EIO op=write")
    assert pwrite_errno(m.path("f"), b"1" * 4096) == 0
    assert child_status(status(m), m.children[2])["votes"] is False
    control(m, "policy silver clear")
    with open(os.path.join(m.children[2], ".quorumfs", "state")) as f:
        stale = {p["dir"] for p in json.load(f)["policies"]}
    assert stale == {"gold", "silver"}

    m.unmount()
    m.start()
    assert policies(m) == {
        "gold": {"dir": "gold", "threshold": 3, "read-pattern": "fifo",
                 "rewrite-corrupted": True}}
    for c in m.children[:2]:
        with open(os.path.join(c, ".quorumfs", "state")) as f:
            assert [p["dir"] for p in json.load(f)["policies"]] == ["gold"]
    ffs.clear()


@pytest.mark.timeout(60)
def test_a_removal_or_resync_that_would_break_a_policy_is_refused(quorum):
    m = quorum(n=3, threshold=1)
    os.makedirs(m.path("imgs/gold"))
    control(m, "policy imgs/gold threshold=3")
    before = rules(status(m))
    reason = refused(m, "remove %s" % m.children[1], errno.EINVAL)
    assert reason == ("removing '%s' would leave 2 voting children, below "
                      "the threshold 3 of directory 'imgs/gold'"
                      % m.children[1])
    reason = refused(m, "resync %s" % m.children[1], errno.EINVAL)
    assert "directory 'imgs/gold'" in reason, reason
    assert rules(status(m)) == before
    control(m, "policy imgs/gold threshold=2")
    control(m, "remove %s" % m.children[1])
    assert refused(m, "policy imgs/gold threshold=3", errno.EINVAL) == (
        "threshold 3 of directory 'imgs/gold' is outside 1..2 (the voting "
        "children)")
    assert policies(m)["imgs/gold"]["threshold"] == 2


BAD = [
    ("policy", errno.EINVAL, "usage: policy DIR threshold=N"),
    ("policy gold", errno.EINVAL, "usage: policy DIR threshold=N"),
    ("policy gold read-pattern=fifo", errno.EINVAL,
     "a policy needs threshold=N"),
    ("policy gold threshold=0", errno.EINVAL,
     "a policy's threshold needs one whole number from 1"),
    ("policy gold threshold=two", errno.EINVAL,
     "a policy's threshold needs one whole number from 1"),
    ("policy gold threshold=4", errno.EINVAL,
     "threshold 4 of directory 'gold' is outside 1..3"),
    ("policy gold threshold=2 read-pattern=random", errno.EINVAL,
     "policy takes threshold=N, read-pattern=quorum|fifo and "
     "rewrite-corrupted=on|off, not 'read-pattern=random'"),
    ("policy gold threshold=2 rewrite-corrupted=yes", errno.EINVAL,
     "not 'rewrite-corrupted=yes'"),
    ("policy / threshold=2", errno.EINVAL,
     "policy needs a directory below the mount's root"),
    ("policy gold/../gold threshold=2", errno.EINVAL,
     "may not name . or .."),
    ("policy gold//x threshold=2", errno.EINVAL, "empty name"),
    ("policy missing threshold=2", errno.ENOENT,
     "'missing' is not a directory on the mount"),
    ("policy file threshold=2", errno.ENOTDIR,
     "'file' is not a directory on the mount"),
    ("policy gold clear", errno.EINVAL, "directory 'gold' has no policy"),
    ("policy gold clear now", errno.EINVAL,
     "policy DIR clear takes nothing after clear"),
    ("policy %s threshold=2" % ("d" * 256), errno.EINVAL,
     "at most 255 bytes"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command,err,reason", BAD,
                         ids=[b[0][:40] for b in BAD])
def test_a_bad_policy_command_is_refused_with_its_reason(quorum, command,
                                                         err, reason):
    m = quorum(n=3, threshold=2)
    os.mkdir(m.path("gold"))
    write_file(m.path("file"), b"x")
    before = rules(status(m))
    said = refused(m, command, err)
    assert reason in said, said
    assert rules(status(m)) == before
    assert status(m)["policies"] == []


@pytest.mark.timeout(60)
def test_at_most_16_directories_have_a_policy(quorum):
    m = quorum(n=3, threshold=2)
    for i in range(17):
        os.mkdir(m.path("d%d" % i))
    for i in range(16):
        control(m, "policy d%d threshold=1" % i)
    assert refused(m, "policy d16 threshold=1", errno.EINVAL) == (
        "at most 16 directories may have a policy")
    control(m, "policy d3 threshold=2")  # a change is not one more
    control(m, "policy d0 clear")
    control(m, "policy d16 threshold=1")
    assert len(status(m)["policies"]) == 16


@pytest.mark.timeout(60)
def test_quorumctl_sets_and_clears_a_policy(quorum):
    m = quorum(n=3, threshold=2)
    os.mkdir(m.path("gold"))
    ctl = os.path.join(os.path.dirname(qfs.daemon_binary()), "quorumctl")
    subprocess.run([ctl, "policy", m.mnt, "gold", "threshold=3",
                    "read-pattern=fifo"], check=True, timeout=60)
    assert policies(m)["gold"]["read-pattern"] == "fifo"
    table = subprocess.run([ctl, "status", m.mnt], capture_output=True,
                           text=True, timeout=60).stdout
    assert "  policy: gold threshold 3, read-pattern fifo\n" in table, table
    bad = subprocess.run([ctl, "policy", m.mnt, "gold", "threshold=9"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "threshold 9 of directory 'gold' is outside 1..3" in bad.stderr
    subprocess.run([ctl, "policy", m.mnt, "gold", "clear"], check=True,
                   timeout=60)
    assert status(m)["policies"] == []


def corrupt(path, offset, count):
    """Invert count bytes of a child's file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))


@pytest.mark.timeout(60)
def test_a_directorys_read_pattern_and_rewrite_switch_apply_below_it(
        backing, quorum):
    m = quorum(n=3, threshold=2)
    for d in ("fifo", "heal"):
        os.mkdir(m.path(d))
    data = os.urandom(64 * 1024)
    for f in ("fifo/f", "heal/f", "plain"):
        write_file(m.path(f), data)
        corrupt(m.child_file(0, f), 4096, 4096)
    control(m, "policy fifo threshold=2 read-pattern=fifo")
    control(m, "policy heal threshold=2 rewrite-corrupted=on")

    # fifo: child 0's bytes as they are; elsewhere the vote.
    assert read_file(m.path("fifo/f")) == read_file(m.child_file(0, "fifo/f"))
    assert read_file(m.path("fifo/f")) != data
    assert read_file(m.path("plain")) == data
    # heal: the losing copy is rewritten by the read; elsewhere it is not.
    assert read_file(m.path("heal/f")) == data
    assert read_file(m.child_file(0, "heal/f")) == data
    assert read_file(m.child_file(0, "plain")) != data
    # Cleared, the mount's rules again.
    control(m, "policy fifo clear")
    assert read_file(m.path("fifo/f")) == data
