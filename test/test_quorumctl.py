"""quorumctl, the operator's tool (README "The operator's tool",
quorumctl(8)): a readable status whose exit status says whether the set
is whole, every control command as a subcommand with the reason of a
refusal, --wait for resyncs and scrubs, the event log readable and
followed, and metrics a Prometheus parser reads. It finds the daemon by
mountpoint through the control socket, which answers while a child
hangs, and falls back to .control."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import qfs
from control_util import child_status, status, wait_child_state


def ctl_binary():
    return os.environ.get("QCTL_BIN", os.path.join(
        os.path.dirname(qfs.daemon_binary()), "quorumctl"))


def ctl(*args, timeout=60):
    """Run quorumctl; (exit status, stdout, stderr)."""
    res = subprocess.run([ctl_binary()] + [str(a) for a in args],
                         capture_output=True, text=True,
                         timeout=timeout * qfs.deadline_scale())
    return res.returncode, res.stdout, res.stderr


def ok(*args, **kw):
    rc, out, err = ctl(*args, **kw)
    assert rc == 0, "quorumctl %s: %d\n%s%s" % (args, rc, out, err)
    return out


def table_row(out, name):
    """The table row of the child called name, split in words."""
    for line in out.split("\n"):
        words = line.split()
        if words and words[0] == name:
            return words
    pytest.fail("no row for %s in:\n%s" % (name, out))


@pytest.fixture
def with_faultfs(faulty, quorum, scratch_fs):
    """Factory: with_faultfs(opts=()) -> (mount, faultfs) of two tmpfs
    children and a faultfs one, last."""
    def make(opts=()):
        ffs = faulty(scratch_fs("tmpfs"))
        base = scratch_fs("tmpfs")
        children = [base / "a", base / "b"]
        for c in children:
            c.mkdir()
        return quorum(children=children + [ffs.mnt], opts=opts), ffs
    return make


def fail_child(m, ffs):
    """Make the faultfs child of m failed: three reads in a row fail."""
    qfs.write_file(m.path("f"), b"x" * 8192)
    ffs.set("error=EIO op=read")
    for _ in range(3):
        assert qfs.pread_at(m.path("f"), 0, 4096) == b"x" * 4096
    wait_child_state(m, str(ffs.mnt), "failed", timeout=20)
    ffs.clear()


# --- status ------------------------------------------------------------

@pytest.mark.timeout(60)
def test_status_is_a_table_and_exit_0_when_whole(quorum):
    m = quorum()
    out = ok("status", m.mnt)
    assert "state: ONLINE: 3 of 3 children vote, threshold 2" in out
    assert "mount: %s" % m.mnt in out
    assert "source: %s" % ":".join(m.children) in out
    for c in m.children:
        assert table_row(out, c)[1:3] == ["ok", "yes"]
    assert "scrub: none since the mount" in out


@pytest.mark.timeout(60)
def test_status_json_is_the_daemons_document(quorum):
    m = quorum()
    doc = json.loads(ok("status", "--json", m.mnt))
    assert doc == status(m)
    assert doc["pid"] == m.proc.pid and doc["log"] == m.log


@pytest.mark.timeout(60)
def test_status_through_a_relative_path_and_a_symlink(quorum, tmp_path):
    m = quorum()
    link = tmp_path / "link"
    link.symlink_to(m.mnt)
    rel = os.path.relpath(m.mnt)
    for name in (rel, str(link), m.mnt + "/"):
        assert "mount: %s" % m.mnt in ok("status", name)


@pytest.mark.timeout(30)
def test_a_path_that_is_no_quorumfs_mount_is_an_error(tmp_path):
    rc, out, err = ctl("status", tmp_path)
    assert rc == 2 and "is not a quorumfs mount" in err


@pytest.mark.timeout(90)
def test_a_failed_child_makes_status_exit_1_with_its_reason(with_faultfs):
    m, ffs = with_faultfs()
    fail_child(m, ffs)
    rc, out, err = ctl("status", m.mnt)
    assert rc == 1, out + err
    assert "state: DEGRADED: 2 of 3 children vote" in out
    assert table_row(out, str(ffs.mnt))[1:3] == ["failed", "no"]
    reason = child_status(status(m), str(ffs.mnt))["reason"]
    assert reason and reason in out
    # --wait on a resync that fails again: exit 1, the reason in words.
    ffs.set("error=EIO op=write,create,mkdir")
    rc, out, err = ctl("resync", m.mnt, ffs.mnt, "--wait")
    assert rc == 1 and "is failed" in err, out + err
    ffs.clear()
    out = ok("resync", m.mnt, ffs.mnt, "--wait")
    assert "in step and voting" in out
    assert ctl("status", m.mnt)[0] == 0


@pytest.mark.timeout(120)
def test_a_resync_in_progress_shows_its_rate_and_eta(faulty, quorum,
                                                     scratch_fs):
    ffs = faulty(scratch_fs("tmpfs"))
    m = quorum(n=2, base=scratch_fs("tmpfs", size="256M"))
    with open(m.path("img"), "wb") as f:
        f.write(os.urandom(1 << 20) * 48)
    ffs.set("hang=150 op=write path=/img")  # a slow disk: 150 ms a write
    ok("add", m.mnt, ffs.mnt)
    rc, out, err = ctl("status", m.mnt)
    assert rc == 1, out + err
    row = table_row(out, str(ffs.mnt))
    assert row[1:3] == ["syncing", "no"], out
    resync = [l for l in out.split("\n") if "resync " in l and "%:" in l]
    assert resync, out
    assert "/s" in resync[0] and "left" in resync[0], resync
    ffs.clear()
    wait_child_state(m, str(ffs.mnt), "ok", timeout=60)


# --- control commands ----------------------------------------------------

@pytest.mark.timeout(120)
def test_every_control_command_is_a_subcommand(quorum, tmp_path):
    m = quorum()
    qfs.write_file(m.path("f"), b"data" * 4096)
    new = tmp_path / "new child"
    new.mkdir()
    assert "in step and voting" in ok("add", m.mnt, new, "name=d", "--wait")
    assert child_status(status(m), "d")["state"] == "ok"
    assert qfs.read_file(new / "f") == b"data" * 4096
    ok("threshold", m.mnt, 3)
    assert status(m)["threshold"] == 3
    ok("read-pattern", m.mnt, "fifo")
    assert status(m)["read-pattern"] == "fifo"
    ok("rewrite-corrupted", m.mnt, "on")
    assert status(m)["rewrite-corrupted"] is True
    ok("threshold", m.mnt, 2)
    assert "in step and voting" in ok("resync", m.mnt, "d", "--wait")
    assert "scrub completed" in ok("scrub", m.mnt, "start", "rate=0",
                                   "--wait")
    assert status(m)["scrub"]["state"] == "completed"
    ok("remove", m.mnt, "d")
    assert child_status(status(m), "d") is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("through", ["socket", ".control"])
def test_a_refused_command_prints_its_reason_and_exits_1(quorum, through):
    m = quorum(opts=[] if through == "socket" else ["control-socket=none"])
    rc, out, err = ctl("threshold", m.mnt, 9)
    assert rc == 1
    assert "'threshold 9' was refused: threshold 9 is outside 1..3" in err
    rc, out, err = ctl("scrub", m.mnt, "stop")
    assert rc == 1 and "was refused" in err and "scrub" in err, err
    rc, out, err = ctl("remove", m.mnt, "/no/such/child")
    assert rc == 1 and "was refused" in err, err


@pytest.mark.timeout(30)
def test_a_wrong_number_of_words_is_a_usage_error(quorum):
    m = quorum()
    rc, out, err = ctl("threshold", m.mnt)
    assert rc == 2 and "usage: quorumctl threshold MOUNTPOINT N" in err
    rc, out, err = ctl("frobnicate", m.mnt)
    assert rc == 2 and "unknown command" in err


@pytest.mark.timeout(90)
def test_scrub_repair_wait_reports_and_repairs_a_corrupt_copy(quorum):
    m = quorum()
    qfs.write_file(m.path("img"), b"\1" * (1 << 20))
    with open(m.child_file(1, "img"), "r+b") as f:
        f.seek(4096)
        f.write(b"\2" * 4096)
    out = ok("scrub", m.mnt, "repair", "rate=0", "--wait")
    assert "1 mismatches, 1 repaired, 0 unrecoverable" in out
    assert qfs.read_file(m.child_file(1, "img")) == b"\1" * (1 << 20)
    out = ok("status", m.mnt)
    assert "img: data on %s, offset 4096, 4.0 KiB, repaired" % \
        m.children[1] in out


@pytest.mark.timeout(60)
def test_status_answers_and_a_child_is_removed_while_it_hangs(with_faultfs):
    m, ffs = with_faultfs(opts=["io-timeout=5"])
    # A change in the root first: its announcement in the children's
    # records is made, so the hang holds only the create itself.
    qfs.write_file(m.path("present"), b"here")
    ffs.set("hang op=create path=/new")
    held = subprocess.Popen([sys.executable, "-c",
                             "open(%r, 'w').write('z')" % m.path("new")])
    try:
        # The create waits in the kernel for the daemon's answer, which
        # waits for the hung child.
        qfs.wait_for(lambda: "request_wait_answer" in open(
            "/proc/%d/wchan" % held.pid).read() or held.poll() is not None,
                     10, "the create to be held")
        start = time.monotonic()
        out = ok("status", m.mnt, timeout=10)
        assert time.monotonic() - start < 2 * qfs.deadline_scale()
        assert "3 of 3 children vote" in out
        # The held create is answered from the others at io-timeout, the
        # child failed; the operator removes it while the hang lasts.
        assert held.wait(20) == 0
        wait_child_state(m, str(ffs.mnt), "failed", timeout=10)
        start = time.monotonic()
        ok("remove", m.mnt, ffs.mnt, timeout=20)
        assert time.monotonic() - start < 10 * qfs.deadline_scale()
    finally:
        ffs.clear()
        if held.poll() is None:
            held.kill()
            held.wait()
    out = ok("status", m.mnt)
    assert str(ffs.mnt) not in [l.split()[0] for l in out.split("\n")
                                if l.split()]
    assert "2 of 2 children vote" in out


# --- events --------------------------------------------------------------

@pytest.mark.timeout(60)
def test_events_are_readable_lines_or_the_raw_json(quorum):
    m = quorum()
    ctl("threshold", m.mnt, 9)
    ok("threshold", m.mnt, 3)
    out = ok("events", m.mnt)
    lines = out.strip().split("\n")
    assert " MOUNTED mountpoint=%s " % m.mnt in lines[0]
    assert any(" CONTROL_ERROR command=\"threshold 9\" " in l for l in lines)
    assert any(l.endswith(" THRESHOLD_CHANGED old=2 new=3") for l in lines)
    raw = ok("events", "--json", m.mnt).strip().split("\n")
    assert [json.loads(l)["event"] for l in raw] == [
        e["event"] for e in m.events()]
    last = ok("events", "-n", "1", m.mnt).strip().split("\n")
    assert len(last) == 1 and "THRESHOLD_CHANGED" in last[0]


@pytest.mark.timeout(60)
def test_events_follow_goes_on_across_a_rotation(quorum):
    m = quorum()
    out_path = m.workdir / "follow.out"
    with open(out_path, "w") as out:
        follower = subprocess.Popen([ctl_binary(), "events", "--follow",
                                     "-n", "1", m.mnt], stdout=out,
                                    stderr=subprocess.STDOUT)
    try:
        qfs.wait_for(lambda: "MOUNTED" in out_path.read_text(), 10,
                     "the follower to show the last event")
        ok("threshold", m.mnt, 3)
        qfs.wait_for(lambda: "THRESHOLD_CHANGED" in out_path.read_text(),
                     10, "the event to be followed")
        os.rename(m.log, m.log + ".1")  # logrotate moves it ...
        m.proc.send_signal(signal.SIGHUP)  # ... and the daemon reopens
        qfs.wait_for(lambda: os.path.exists(m.log), 10, "a new log")
        ok("threshold", m.mnt, 1)
        qfs.wait_for(lambda: "old=3 new=1" in out_path.read_text(), 10,
                     "the event after the rotation")
        assert out_path.read_text().count("MOUNTED") == 1
    finally:
        follower.kill()
        follower.wait()


@pytest.mark.timeout(30)
def test_events_of_a_mount_without_a_log_is_an_error(quorum):
    m = quorum(start=False)
    i = m.cmd.index("-o") + 1
    m.cmd[i] = ",".join(o for o in m.cmd[i].split(",")
                        if not o.startswith("log=")) or "io-timeout=10"
    m.start()
    rc, out, err = ctl("events", m.mnt)
    assert rc == 2 and "has no event log" in err


# --- metrics -------------------------------------------------------------

def parse_metrics(text):
    from prometheus_client.parser import text_string_to_metric_families
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, "%s%s not in the metrics" % (name, labels)
    return samples[key]


@pytest.mark.timeout(90)
def test_metrics_parse_with_a_prometheus_parser(with_faultfs, quorum):
    pytest.importorskip("prometheus_client")
    m, ffs = with_faultfs()
    whole = quorum()
    fail_child(m, ffs)
    ok("scrub", whole.mnt, "start", "rate=0", "--wait")
    rc, text, err = ctl("metrics", m.mnt, whole.mnt)
    assert rc == 0, err
    s = parse_metrics(text)
    for mnt in (m.mnt, whole.mnt):
        assert value(s, "quorumfs_up", mountpoint=mnt) == 1
        assert value(s, "quorumfs_threshold", mountpoint=mnt) == 2
        assert value(s, "quorumfs_children", mountpoint=mnt) == 3
    assert value(s, "quorumfs_degraded", mountpoint=m.mnt) == 1
    assert value(s, "quorumfs_degraded", mountpoint=whole.mnt) == 0
    assert value(s, "quorumfs_voting_children", mountpoint=m.mnt) == 2
    bad = dict(mountpoint=m.mnt, child=str(ffs.mnt))
    assert value(s, "quorumfs_child_state", state="failed", **bad) == 1
    assert value(s, "quorumfs_child_state", state="ok", **bad) == 0
    assert value(s, "quorumfs_child_errors_total", type="read", **bad) == 3
    assert value(s, "quorumfs_scrub_files_done", mountpoint=whole.mnt) >= 0
    assert value(s, "quorumfs_scrub_last_end_timestamp_seconds",
                 mountpoint=whole.mnt) > 1e9
    # The data requests: the writes and reads above, counted and timed.
    w = dict(mountpoint=m.mnt, op="write")
    r = dict(mountpoint=m.mnt, op="read")
    assert value(s, "quorumfs_requests_total", **w) >= 1
    assert value(s, "quorumfs_request_bytes_total", **w) >= 8192
    assert value(s, "quorumfs_requests_total", **r) >= 3
    assert value(s, "quorumfs_request_errors_total", **r) == 0
    for labels in (w, r):
        count = value(s, "quorumfs_request_duration_seconds_count", **labels)
        assert count == value(s, "quorumfs_requests_total", **labels)
        assert value(s, "quorumfs_request_duration_seconds_bucket",
                     le="+Inf", **labels) == count
        assert value(s, "quorumfs_request_duration_seconds_sum",
                     **labels) > 0
    ffs.clear()
    ok("resync", m.mnt, ffs.mnt, "--wait")


# --- heal-info -------------------------------------------------------------

MiB = 1 << 20
REGION = 64 * MiB


@pytest.mark.timeout(120)
def test_heal_info_names_what_a_child_that_missed_writes_needs(quorum,
                                                               tmp_path):
    from faultfs import FaultFS
    base = tmp_path / "kids"
    base.mkdir()
    a, b, c = (base / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    m = quorum(children=[a, b, c], opts=["io-timeout=30"])
    qfs.write_file(m.path("old"), b"o" * 4096)
    qfs.write_file(m.path("img"), b"")
    assert ctl("heal-info", m.mnt)[0] == 0
    m.unmount()
    # c is away for one mount, which writes two regions of img (a new
    # name would make it need the whole tree).
    away = base / "c.away"
    os.rename(c, away)
    c.mkdir()
    os.rmdir(c)
    m2 = quorum(children=[a, b], opts=["io-timeout=30"])
    with open(m2.path("img"), "r+b") as f:
        f.write(b"i" * MiB)
        f.seek(130 * MiB)
        f.write(b"j" * MiB)
    m2.unmount()
    # c comes back behind a faultfs whose writes to img hang: its resync
    # stalls there, and heal-info says what it still needs.
    c.mkdir()
    ffs = FaultFS(away, c).start()
    try:
        ffs.set("hang op=write path=/img")
        m.start()
        wait_child_state(m, str(c), "syncing", timeout=20)
        rc, out, err = ctl("heal-info", m.mnt)
        assert rc == 1, out + err
        doc = json.loads(ctl("heal-info", "--json", m.mnt)[1])
        kid = [k for k in doc["children"] if k["path"] == str(c)][0]
        assert kid["needs"] == "regions", kid
        files = {f["path"]: f["ranges"] for f in kid["files"]}
        assert files["img"] == [{"offset": 0, "length": REGION},
                                {"offset": 2 * REGION, "length": REGION}]
        assert set(files) == {"img"}, files
        assert [k["needs"] for k in doc["children"]
                if k["path"] != str(c)] == ["nothing", "nothing"]
        assert "img: offset 0, 64.0 MiB; offset 134217728, 64.0 MiB" in out
        ffs.clear()
        wait_child_state(m, str(c), "ok", timeout=60)
        assert ctl("heal-info", m.mnt)[0] == 0
        m.unmount()
    finally:
        ffs.clear()
        m.cleanup()
        ffs.stop()


def unwinnable(m, name, block=1):
    """name on m with one 4 KiB block that differs on every child."""
    qfs.write_file(m.path(name), b"\0" * 16384)
    for i in range(len(m.children)):
        with open(m.child_file(i, name), "r+b") as f:
            f.seek(block * 4096)
            f.write(bytes([i + 1]) * 4096)


@pytest.mark.timeout(120)
def test_heal_info_keeps_what_no_version_could_win_beyond_64(quorum):
    m = quorum()
    for k in range(80):
        unwinnable(m, "f%02d" % k)
    rc, out, err = ctl("scrub", m.mnt, "start", "rate=0", "--wait")
    assert rc == 1 and "80 unrecoverable" in out, out + err
    assert len(status(m)["scrub"]["findings"]) == 64
    doc = json.loads(ctl("heal-info", "--json", m.mnt)[1])
    u = doc["unrecoverable"]
    assert u["unrecoverable"] == 80 and u["kept"] == 80, u
    files = {f["path"]: f["ranges"] for f in u["files"]}
    assert len(files) == 80
    assert files["f00"] == [{"offset": 4096, "length": 4096}]
    # On disk in the children's .quorumfs/: a restart keeps it.
    m.unmount()
    m.start()
    rc, out, err = ctl("heal-info", m.mnt)
    assert rc == 1
    assert "80 blocks or names no version could win" in out
    assert "f79: offset 4096, 4.0 KiB" in out


@pytest.mark.timeout(60)
def test_replication_is_a_subcommand_with_qemus_refusals(quorum, tmp_path):
    m = quorum()
    rc, out, err = ctl("replication", m.mnt, "get-error")
    assert rc == 1 and "no replication child" in err, err
    sec = tmp_path / "sec"
    sec.mkdir()
    ok("add", m.mnt, sec, "name=sec", "mode=primary", "--wait")
    c = child_status(status(m), "sec")
    assert (c["kind"], c["state"]) == ("replication", "ok"), c
    rc, out, err = ctl("replication", m.mnt, "get-error")
    assert rc == 1 and "Block replication is not running" in err, err
    ok("replication", m.mnt, "start", "primary")
    ok("replication", m.mnt, "get-error")
    ok("replication", m.mnt, "stop", "sec")
    assert c and child_status(status(m), "sec")["replication"]["stage"] == \
        "DONE"
