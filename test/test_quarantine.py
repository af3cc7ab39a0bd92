"""The quarantine (README "Quarantine"): every repair that overwrites a
child's bytes because a vote said so - scrub repair, rewrite-corrupted,
a returning child's resync of the regions it missed, settling after a
crash - first saves the bytes it replaces in that child's
.quorumfs/quarantine/, durably, with the file, range, time, why, the
child and the SHA-256 of the winning bytes. `quarantine list` (on the
control socket), `quarantine restore ID` (a voted write through the
mount), `quarantine purge ID|all`; a size limit per child drops the
oldest entries with QUARANTINE_DROPPED. `repair FILE from=CHILD [OFFSET
LENGTH]` makes every child hold one child's bytes, for blocks no version
could win.

Damage is planted by writing into the children directly; the proof is
the list, the children's bytes and the event log.
"""

import errno
import hashlib
import os
import random

import pytest

import qfs
from qfs import read_file, write_file
from control_util import (KiB, MiB, child_status, control, quarantine_list,
                          refused, socket_request, status, wait_child_state,
                          wait_status)

BLOCK = 4 * KiB


def corrupt(path, offset, count, mask=0xFF):
    """XOR count bytes of a child's file at offset (every byte changes)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ mask for b in old))


def sha(data):
    return hashlib.sha256(data).hexdigest()


def scrub(m, command="scrub repair rate=0"):
    first = len(m.events_named("SCRUB_COMPLETED"))
    control(m, command)
    qfs.wait_for(lambda: len(m.events_named("SCRUB_COMPLETED")) > first,
                 60 * qfs.deadline_scale(), "the scrub to complete")
    return m.events_named("SCRUB_COMPLETED")[-1]


def saved_bytes(child, entry_id):
    """What the entry's file on the child holds after its header line."""
    name = os.path.join(child, ".quorumfs", "quarantine", "%020d" % entry_id)
    raw = read_file(name)
    return raw[raw.index(b"\n") + 1:]


def quarantine_of(m, i):
    return child_status(status(m), m.children[i])["quarantine"]


# --- scrub repair, list, restore ------------------------------------------

@pytest.mark.timeout(90)
def test_scrub_repair_saves_the_bytes_it_overwrites_and_restore_puts_them_back(
        backing, quorum):
    m = quorum(n=3)
    data = random.Random(1).randbytes(MiB)
    write_file(m.path("img"), data)
    corrupt(m.child_file(1, "img"), 2 * BLOCK, BLOCK)
    bad = read_file(m.child_file(1, "img"))[2 * BLOCK:3 * BLOCK]
    assert quarantine_list(m) == []
    done = scrub(m)
    assert (done["mismatches"], done["repaired"]) == (1, 1), done
    for i in range(3):
        assert read_file(m.child_file(i, "img")) == data, i
    [e] = quarantine_list(m)
    assert (e["child"], e["file"], e["offset"], e["length"], e["why"]) == \
        (m.children[1], "img", 2 * BLOCK, BLOCK, "scrub"), e
    assert e["digest"] == sha(data[2 * BLOCK:3 * BLOCK]), e
    assert isinstance(e["id"], int) and e["id"] >= 1
    assert abs(e["time"] - qfs.time.time()) < 120, e
    assert saved_bytes(m.children[1], e["id"]) == bad
    assert quarantine_of(m, 1) == {"entries": 1, "bytes": BLOCK,
                                   "limit": 1 << 30}
    assert quarantine_of(m, 0) == {"entries": 0, "bytes": 0,
                                   "limit": 1 << 30}
    # .control alone shows it too, among the newest 64.
    assert status(m)["quarantine-entries"] == [e]
    # The entry outlives a remount: it is read back from the child.
    m.unmount()
    m.start()
    assert quarantine_list(m) == [e]
    # Restore: a voted write of the saved bytes to every child.
    control(m, "quarantine restore %d" % e["id"])
    want = data[:2 * BLOCK] + bad + data[3 * BLOCK:]
    for i in range(3):
        assert read_file(m.child_file(i, "img")) == want, i
    assert qfs.pread_at(m.path("img"), 2 * BLOCK, BLOCK) == bad
    # Restoring is no repair: nothing new is saved, the entry stays.
    assert quarantine_list(m) == [e]


@pytest.mark.timeout(60)
def test_identical_bytes_are_not_saved_only_the_blocks_that_differ(
        tmpfs_dir, quorum):
    m = quorum(n=3)
    data = random.Random(2).randbytes(MiB)
    write_file(m.path("img"), data)
    # Two damaged runs of one chunk on one child: two entries, each of
    # only its own blocks.
    corrupt(m.child_file(0, "img"), 5 * BLOCK + 10, 20)
    corrupt(m.child_file(0, "img"), 40 * BLOCK, 3 * BLOCK)
    scrub(m)
    got = [(e["child"], e["offset"], e["length"]) for e in quarantine_list(m)]
    assert got == [(m.children[0], 5 * BLOCK, BLOCK),
                   (m.children[0], 40 * BLOCK, 3 * BLOCK)], got
    # A scrub that finds nothing saves nothing.
    scrub(m)
    assert len(quarantine_list(m)) == 2


@pytest.mark.timeout(60)
def test_cutting_a_longer_copy_saves_its_tail_first(tmpfs_dir, quorum):
    m = quorum(n=3)
    data = random.Random(15).randbytes(MiB + 5000)
    write_file(m.path("img"), data)
    tail = random.Random(16).randbytes(MiB + 3000)  # two entries
    with open(m.child_file(0, "img"), "ab") as f:
        f.write(tail)
    done = scrub(m)
    assert done["repaired"] == done["mismatches"] == 1, done
    assert read_file(m.child_file(0, "img")) == data
    got = [(e["child"], e["offset"], e["length"], e["why"], e["digest"])
           for e in quarantine_list(m)]
    assert got == [(m.children[0], len(data), MiB, "scrub", sha(b"")),
                   (m.children[0], len(data) + MiB, 3000, "scrub",
                    sha(b""))], got
    saved = b"".join(saved_bytes(m.children[0], e["id"])
                     for e in quarantine_list(m))
    assert saved == tail


# --- rewrite-corrupted -------------------------------------------------

@pytest.mark.timeout(60)
def test_rewrite_corrupted_saves_what_it_overwrites(ext4_dir, quorum):
    m = quorum(n=3, threshold=2, opts="rewrite-corrupted")
    data = random.Random(3).randbytes(256 * KiB)
    write_file(m.path("f"), data)
    corrupt(m.child_file(1, "f"), 5000, 100)
    bad = read_file(m.child_file(1, "f"))[BLOCK:2 * BLOCK]
    assert qfs.pread_at(m.path("f"), BLOCK, 2 * BLOCK) == \
        data[BLOCK:3 * BLOCK]
    qfs.wait_for(lambda: read_file(m.child_file(1, "f")) == data, 10,
                 "the loser to be rewritten")
    [e] = quarantine_list(m)
    assert (e["child"], e["file"], e["offset"], e["length"], e["why"]) == \
        (m.children[1], "f", BLOCK, BLOCK, "rewrite"), e
    assert e["digest"] == sha(data[BLOCK:2 * BLOCK])
    assert saved_bytes(m.children[1], e["id"]) == bad


@pytest.mark.timeout(60)
def test_rewrite_after_a_per_block_vote_saves_each_losers_blocks(tmpfs_dir,
                                                                 quorum):
    m = quorum(n=3, threshold=2, opts="rewrite-corrupted")
    data = random.Random(14).randbytes(256 * KiB)
    write_file(m.path("f"), data)
    # No whole-request majority: each block is voted on its own.
    corrupt(m.child_file(0, "f"), BLOCK, BLOCK)
    corrupt(m.child_file(1, "f"), 2 * BLOCK + 100, 10)
    bad0 = read_file(m.child_file(0, "f"))[BLOCK:2 * BLOCK]
    bad1 = read_file(m.child_file(1, "f"))[2 * BLOCK:3 * BLOCK]
    assert qfs.pread_at(m.path("f"), 0, 4 * BLOCK) == data[:4 * BLOCK]
    qfs.wait_for(lambda: all(read_file(m.child_file(i, "f")) == data
                             for i in range(3)), 10,
                 "the losers to be rewritten")
    got = sorted((e["child"], e["offset"], e["length"], e["why"])
                 for e in quarantine_list(m))
    assert got == sorted([(m.children[0], BLOCK, BLOCK, "rewrite"),
                          (m.children[1], 2 * BLOCK, BLOCK, "rewrite")])
    for e in quarantine_list(m):
        want = bad0 if e["child"] == m.children[0] else bad1
        assert saved_bytes(e["child"], e["id"]) == want
        assert e["digest"] == sha(data[e["offset"]:e["offset"] + BLOCK])


# --- resync and settle ---------------------------------------------------

@pytest.mark.timeout(120)
def test_a_returning_childs_region_copy_saves_what_it_overwrites(quorum,
                                                                 ext4_dir):
    a, b, c = (ext4_dir / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    m = quorum(children=[a, b, c])
    old = random.Random(4).randbytes(2 * MiB)
    write_file(m.path("img"), old)
    m.unmount()
    # c is away while the first MiB of img is written.
    away = ext4_dir / "c.away"
    os.rename(c, away)
    m2 = quorum(children=[a, b])
    new = random.Random(5).randbytes(MiB)
    with open(m2.path("img"), "r+b") as f:
        f.write(new)
    m2.unmount()
    os.rename(away, c)
    m.start()
    wait_child_state(m, str(c), "ok", timeout=60)
    assert read_file(c / "img") == new + old[MiB:]
    [e] = quarantine_list(m)
    assert (e["child"], e["file"], e["offset"], e["length"], e["why"]) == \
        (str(c), "img", 0, MiB, "resync"), e
    assert e["digest"] == sha(new)
    assert saved_bytes(str(c), e["id"]) == old[:MiB]


@pytest.mark.timeout(90)
def test_settling_after_kill_9_saves_what_it_overwrites(tmpfs_dir, quorum):
    m = quorum(n=3)
    data = random.Random(6).randbytes(MiB)
    fd = os.open(m.path("img"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    m.kill()
    # The crash left a write on one child only: the settle's vote (at
    # threshold 1) makes it like the other two.
    corrupt(m.child_file(2, "img"), 7 * BLOCK, BLOCK)
    bad = read_file(m.child_file(2, "img"))[7 * BLOCK:8 * BLOCK]
    m.start()
    # The mount serves once the settle is done.
    [e] = quarantine_list(m)
    for i in range(3):
        assert read_file(m.child_file(i, "img")) == data, i
    assert (e["child"], e["file"], e["offset"], e["length"], e["why"]) == \
        (m.children[2], "img", 7 * BLOCK, BLOCK, "settle"), e
    assert e["digest"] == sha(data[7 * BLOCK:8 * BLOCK])
    assert saved_bytes(m.children[2], e["id"]) == bad


# --- the limit and purge ---------------------------------------------------

@pytest.mark.timeout(90)
def test_the_limit_drops_the_oldest_entries_and_says_so(tmpfs_dir, quorum):
    m = quorum(n=3, opts="quarantine-limit=1M")
    for name, seed in (("a", 7), ("b", 8)):
        write_file(m.path(name), random.Random(seed).randbytes(MiB))
    corrupt(m.child_file(0, "a"), 0, 768 * KiB)
    scrub(m)
    [first] = quarantine_list(m)
    assert (first["file"], first["length"]) == ("a", 768 * KiB)
    assert m.events_named("QUARANTINE_DROPPED") == []
    corrupt(m.child_file(0, "b"), 64 * KiB, 768 * KiB)
    scrub(m)
    [second] = quarantine_list(m)
    assert (second["file"], second["offset"], second["length"]) == \
        ("b", 64 * KiB, 768 * KiB)
    assert second["id"] > first["id"]
    dropped = m.wait_event("QUARANTINE_DROPPED")
    assert dropped == {"node-name": m.children[0], "entries": 1,
                       "bytes": 768 * KiB, "ids": [first["id"]],
                       "limit": MiB}, dropped
    assert not os.path.exists(os.path.join(
        m.children[0], ".quorumfs", "quarantine", "%020d" % first["id"]))
    assert quarantine_of(m, 0) == {"entries": 1, "bytes": 768 * KiB,
                                   "limit": MiB}


@pytest.mark.timeout(60)
def test_quarantine_limit_0_saves_nothing(tmpfs_dir, quorum):
    m = quorum(n=3, opts="quarantine-limit=0")
    data = random.Random(9).randbytes(MiB)
    write_file(m.path("img"), data)
    corrupt(m.child_file(1, "img"), 0, BLOCK)
    assert scrub(m)["repaired"] == 1
    assert read_file(m.child_file(1, "img")) == data
    assert quarantine_list(m) == []
    assert quarantine_of(m, 1) == {"entries": 0, "bytes": 0, "limit": 0}
    assert not os.path.exists(os.path.join(m.children[1], ".quorumfs",
                                           "quarantine"))


@pytest.mark.timeout(60)
def test_the_status_shows_the_newest_64_entries(tmpfs_dir, quorum):
    m = quorum(n=3)
    write_file(m.path("img"), random.Random(18).randbytes(MiB))
    # 70 single blocks apart: 70 entries on one child.
    for b in range(70):
        corrupt(m.child_file(b % 3, "img"), 2 * b * BLOCK, BLOCK)
    scrub(m)
    everything = quarantine_list(m)
    assert len(everything) == 70
    assert status(m)["quarantine-entries"] == everything[-64:]


@pytest.mark.timeout(60)
def test_purge_one_entry_or_all(tmpfs_dir, quorum):
    m = quorum(n=3)
    write_file(m.path("img"), random.Random(10).randbytes(MiB))
    for i in range(3):
        corrupt(m.child_file(i, "img"), (10 + 10 * i) * BLOCK, BLOCK)
    scrub(m)
    ids = [e["id"] for e in quarantine_list(m)]
    assert len(ids) == 3
    control(m, "quarantine purge %d" % ids[1])
    assert [e["id"] for e in quarantine_list(m)] == [ids[0], ids[2]]
    assert not os.path.exists(os.path.join(
        m.children[1], ".quorumfs", "quarantine", "%020d" % ids[1]))
    assert refused(m, "quarantine purge %d" % ids[1], errno.ENOENT) == \
        "no quarantine entry has id %d" % ids[1]
    control(m, "quarantine purge all")
    assert quarantine_list(m) == []
    for c in m.children:
        assert os.listdir(os.path.join(c, ".quorumfs", "quarantine")) == []
    m.unmount()
    m.start()
    assert quarantine_list(m) == []


# --- repair FILE from=CHILD ------------------------------------------------

@pytest.mark.timeout(90)
def test_repair_from_a_child_ends_a_two_against_two_split(backing, quorum):
    m = quorum(n=4)  # threshold 3: two against two has no winner
    data = random.Random(11).randbytes(MiB)
    write_file(m.path("img"), data)
    for i in (0, 1):
        corrupt(m.child_file(i, "img"), 10 * BLOCK, BLOCK, 0x5A)
    theirs = read_file(m.child_file(0, "img"))
    with pytest.raises(OSError) as e:
        qfs.pread_at(m.path("img"), 10 * BLOCK, BLOCK)
    assert e.value.errno == errno.EIO
    control(m, "repair img from=%s" % m.children[0])
    for i in range(4):
        assert read_file(m.child_file(i, "img")) == theirs, i
    assert qfs.pread_at(m.path("img"), 10 * BLOCK, BLOCK) == \
        theirs[10 * BLOCK:11 * BLOCK]
    # An operator's choice through the vote is not a repair by a vote:
    # nothing is quarantined.
    assert quarantine_list(m) == []


@pytest.mark.timeout(90)
def test_repair_a_lost_range_from_a_child(tmpfs_dir, quorum):
    m = quorum(n=3, threshold=2)
    data = random.Random(12).randbytes(2 * MiB)
    write_file(m.path("img"), data)
    corrupt(m.child_file(0, "img"), 10 * BLOCK + 7, 100, 0xFF)
    corrupt(m.child_file(1, "img"), 10 * BLOCK + 7, 100, 0x0F)
    corrupt(m.child_file(2, "img"), 300 * BLOCK, BLOCK)
    done = scrub(m, "scrub start rate=0")
    assert done["unrecoverable"] == 1, done
    heal = socket_request(status(m)["control-socket"], "heal-info")
    [lost] = heal["unrecoverable"]["files"]
    assert lost["path"] == "img"
    assert lost["ranges"][0]["offset"] == 10 * BLOCK
    source = read_file(m.child_file(1, "img"))
    control(m, "repair img from=%s %d %d" % (
        m.children[1], lost["ranges"][0]["offset"],
        lost["ranges"][0]["length"]))
    for i in range(3):
        got = read_file(m.child_file(i, "img"))
        assert got[10 * BLOCK:11 * BLOCK] == \
            source[10 * BLOCK:11 * BLOCK], i
        assert got[:10 * BLOCK] == data[:10 * BLOCK], i
    # Only that range was written: child 2's own damage elsewhere stays
    # for the scrub.
    assert read_file(m.child_file(2, "img"))[300 * BLOCK:301 * BLOCK] != \
        data[300 * BLOCK:301 * BLOCK]
    assert qfs.pread_at(m.path("img"), 10 * BLOCK, BLOCK) == \
        source[10 * BLOCK:11 * BLOCK]


@pytest.mark.timeout(90)
def test_a_child_that_is_not_in_step_is_refused_as_source_and_holder(
        faulty, quorum, scratch_fs):
    ffs = faulty(scratch_fs("tmpfs"))
    base = scratch_fs("tmpfs")
    kids = [base / "a", base / "b"]
    for k in kids:
        k.mkdir()
    m = quorum(children=kids + [ffs.mnt])
    write_file(m.path("f"), b"x" * 8192)
    corrupt(m.child_file(2, "f"), 0, BLOCK)
    scrub(m)
    [e] = quarantine_list(m)
    ffs.set("error=EIO op=read")
    for _ in range(3):
        assert qfs.pread_at(m.path("f"), 0, 4096) == b"x" * 4096
    wait_child_state(m, str(ffs.mnt), "failed", timeout=20)
    ffs.clear()
    assert refused(m, "repair f from=%s" % ffs.mnt, errno.EINVAL) == (
        "child '%s' is not in step (failed): repair copies only from a "
        "voting child" % ffs.mnt)
    # Its entries cannot be read while it is out of the set.
    assert refused(m, "quarantine restore %d" % e["id"], errno.EIO) == (
        "entry %d is on child '%s', which is failed or removed: resync it "
        "first" % (e["id"], ffs.mnt))
    assert quarantine_list(m) == [e]


# --- bad commands and options ----------------------------------------------

BAD = [
    ("quarantine", errno.EINVAL,
     "usage: quarantine list, quarantine restore ID, or quarantine purge "
     "ID|all"),
    ("quarantine show", errno.EINVAL,
     "usage: quarantine list, quarantine restore ID, or quarantine purge "
     "ID|all"),
    ("quarantine restore", errno.EINVAL,
     "usage: quarantine list, quarantine restore ID, or quarantine purge "
     "ID|all"),
    ("quarantine purge", errno.EINVAL,
     "usage: quarantine list, quarantine restore ID, or quarantine purge "
     "ID|all"),
    ("quarantine restore x1", errno.EINVAL,
     "quarantine restore needs an entry id (a whole number from 1, see "
     "quarantine list), not 'x1'"),
    ("quarantine restore 0", errno.EINVAL,
     "quarantine restore needs an entry id (a whole number from 1, see "
     "quarantine list), not '0'"),
    ("quarantine purge -3", errno.EINVAL,
     "quarantine purge needs an entry id (a whole number from 1, see "
     "quarantine list) or all, not '-3'"),
    ("quarantine restore 77", errno.ENOENT, "no quarantine entry has id 77"),
    ("quarantine purge 77", errno.ENOENT, "no quarantine entry has id 77"),
    ("quarantine list", errno.EINVAL,
     "quarantine list is a read: ask it on the control socket (quorumctl "
     "quarantine MOUNTPOINT list); the status shows the newest 64 "
     "entries"),
    ("repair", errno.EINVAL, "usage: repair FILE from=CHILD [OFFSET LENGTH]"),
    ("repair f", errno.EINVAL,
     "usage: repair FILE from=CHILD [OFFSET LENGTH]"),
    ("repair '' from=C", errno.EINVAL,
     "usage: repair FILE from=CHILD [OFFSET LENGTH]"),
    ("repair f from=C 0", errno.EINVAL,
     "usage: repair FILE from=CHILD [OFFSET LENGTH]"),
    ("repair f child=X", errno.EINVAL,
     "repair needs from=CHILD after the file, not 'child=X'"),
    ("repair f from=", errno.EINVAL,
     "repair needs from=CHILD after the file, not 'from='"),
    ("repair f from=C x 10", errno.EINVAL,
     "repair's OFFSET and LENGTH must be sizes in bytes (such as 4096 or "
     "1M), LENGTH at least 1, not 'x 10'"),
    ("repair f from=C 0 0", errno.EINVAL,
     "repair's OFFSET and LENGTH must be sizes in bytes (such as 4096 or "
     "1M), LENGTH at least 1, not '0 0'"),
    ("repair f from=nobody", errno.ENOENT, "no child is named 'nobody'"),
    ("repair missing from=C", errno.ENOENT,
     "no file 'missing' in the mount: No such file or directory"),
    ("repair d from=C", errno.EINVAL, "'d' is not a regular file"),
    ("repair ../f from=C", errno.EINVAL,
     "'../f' is not a path of a file in the mount"),
    ("repair f from=C 8000 200", errno.EINVAL,
     "the range 8000+200 lies past the end of 'f' on child 'C' (8192 "
     "bytes)"),
]


@pytest.mark.timeout(60)
def test_every_bad_command_is_refused_with_a_clear_reason(tmpfs_dir, quorum):
    m = quorum(n=3)
    write_file(m.path("f"), b"q" * 8192)
    os.mkdir(m.path("d"))
    child = m.children[0]
    for command, err, reason in BAD:
        command = command.replace("=C", "=" + child)
        reason = reason.replace("'C'", "'%s'" % child)
        assert refused(m, command, err) == reason, command
    # Nothing changed.
    for i in range(3):
        assert read_file(m.child_file(i, "f")) == b"q" * 8192
    assert quarantine_list(m) == []


@pytest.mark.parametrize("value", ["abc", "512K", "-1", "1X", ""])
def test_a_bad_quarantine_limit_is_refused(run_daemon, tmp_path, value):
    kids = [tmp_path / n for n in "abc"]
    for k in kids:
        k.mkdir()
    (tmp_path / "mnt").mkdir()
    rc, err = run_daemon("-o", "quarantine-limit=" + value,
                         *[str(k) for k in kids], str(tmp_path / "mnt"))
    assert rc != 0
    assert ("quarantine-limit=%s is invalid: it must be 0 (off) or a size "
            "of at least 1M, such as 512M or 2G" % value) in err, err


# --- quorumctl ---------------------------------------------------------------

@pytest.mark.timeout(60)
def test_quorumctl_lists_restores_purges_and_repairs(tmpfs_dir, quorum):
    import json
    from test_quorumctl import ctl
    m = quorum(n=3)
    data = random.Random(13).randbytes(MiB)
    write_file(m.path("img"), data)
    corrupt(m.child_file(2, "img"), 0, BLOCK)
    bad = read_file(m.child_file(2, "img"))[:BLOCK]
    scrub(m)
    rc, out, err = ctl("status", m.mnt)
    assert rc == 0, err
    assert "quarantine: 1 entries, 4.0 KiB of 1.0 GiB" in out, out
    rc, out, err = ctl("metrics", m.mnt)
    assert rc == 0, err
    for family, value in (("entries", 1), ("bytes", BLOCK),
                          ("limit_bytes", 1 << 30)):
        line = [x for x in out.splitlines()
                if x.startswith("quorumfs_child_quarantine_%s{" % family)
                and 'child="%s"' % m.children[2] in x]
        assert len(line) == 1 and line[0].endswith(" %d" % value), line
    rc, out, err = ctl("quarantine", m.mnt, "list")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["entries"] == quarantine_list(m)
    [e] = doc["entries"]
    rc, out, err = ctl("quarantine", m.mnt, "restore", "99")
    assert rc == 1
    assert "'quarantine restore 99' was refused: no quarantine entry has " \
        "id 99 (No such file or directory)" in err, err
    rc, out, err = ctl("quarantine", m.mnt, "restore", str(e["id"]))
    assert rc == 0, err
    assert qfs.pread_at(m.path("img"), 0, BLOCK) == bad
    # Every child holds the restored bytes now. Put the original back on
    # child 1 by hand and make every child hold child 1's range.
    with open(m.child_file(1, "img"), "r+b") as f:
        f.write(data[:BLOCK])
    rc, out, err = ctl("repair", m.mnt, "img", "from=" + m.children[1],
                       "0", "4K")
    assert rc == 0, err
    for i in range(3):
        assert read_file(m.child_file(i, "img")) == data, i
    rc, out, err = ctl("quarantine", m.mnt, "purge", "all")
    assert rc == 0, err
    assert quarantine_list(m) == []
    rc, out, err = ctl("quarantine", m.mnt)
    assert rc == 2 and "usage: quorumctl quarantine MOUNTPOINT list" in err


# --- a quarantine that cannot be written ---------------------------------

def faulty_third(faulty, quorum, scratch_fs, opts=()):
    """Three children, the last behind faultfs; a file of 1 MiB with one
    block of the faultfs child damaged. Returns (mount, faultfs, data)."""
    ffs = faulty(scratch_fs("tmpfs"))
    base = scratch_fs("tmpfs")
    kids = [base / "a", base / "b"]
    for k in kids:
        k.mkdir()
    m = quorum(children=kids + [ffs.mnt], opts=opts)
    data = random.Random(17).randbytes(MiB)
    write_file(m.path("img"), data)
    corrupt(m.child_file(2, "img"), 3 * BLOCK, BLOCK)
    return m, ffs, data


@pytest.mark.timeout(90)
def test_a_repair_whose_bytes_cannot_be_saved_does_not_overwrite(
        faulty, quorum, scratch_fs):
    m, ffs, data = faulty_third(faulty, quorum, scratch_fs)
    damaged = read_file(m.child_file(2, "img"))
    ffs.set("error=ENOSPC op=create path=/.quorumfs/quarantine/*")
    done = scrub(m)
    assert (done["mismatches"], done["repaired"]) == (1, 0), done
    assert read_file(m.child_file(2, "img")) == damaged
    assert quarantine_list(m) == []
    ffs.clear()
    done = scrub(m)
    assert (done["mismatches"], done["repaired"]) == (1, 1), done
    assert read_file(m.child_file(2, "img")) == data
    [e] = quarantine_list(m)
    assert e["child"] == str(ffs.mnt) and e["offset"] == 3 * BLOCK


@pytest.mark.timeout(90)
def test_a_quarantine_that_hangs_is_given_up_on_at_io_timeout(
        faulty, quorum, scratch_fs):
    m, ffs, data = faulty_third(faulty, quorum, scratch_fs,
                                opts=["io-timeout=2"])
    damaged = read_file(m.child_file(2, "img"))
    ffs.set("hang op=create path=/.quorumfs/quarantine/*")
    done = scrub(m)
    assert done["repaired"] == 0, done
    wait_child_state(m, str(ffs.mnt), "failed", timeout=20)
    assert child_status(status(m), str(ffs.mnt))["reason"] == \
        "did not answer a metadata call within 2000 ms"
    ffs.clear()
    assert read_file(m.child_file(2, "img")) == damaged
    assert qfs.pread_at(m.path("img"), 0, MiB) == data
