"""The command line: every invalid one is refused before anything is
mounted, with one line on stderr that starts with "quorumfs: " and names
the bad option or path (README "Command line"); the valid ones mount."""

import errno
import os
import subprocess
from types import SimpleNamespace

import pytest

import qfs


@pytest.fixture
def dirs(tmp_path):
    """Three child directories and an empty mount point, all absolute."""
    children = [tmp_path / ("c%d" % i) for i in range(3)]
    for c in children:
        c.mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    return SimpleNamespace(root=tmp_path, c=[str(c) for c in children],
                           mnt=str(mnt))


@pytest.fixture
def bind_mount():
    """Factory: bind_mount(src, dst); every bind is undone at teardown."""
    made = []

    def bind(src, dst):
        os.makedirs(dst, exist_ok=True)
        subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
        made.append(str(dst))

    yield bind
    for dst in reversed(made):
        subprocess.run(["umount", dst], check=True)


def assert_refused(result, *names, mnt=None):
    """quorumfs failed, printed exactly one "quorumfs: " line naming one of
    `names`, and left mnt unmounted."""
    rc, err = result
    lines = err.strip("\n").split("\n")
    assert rc != 0, "quorumfs exited 0 on a bad command line"
    assert rc > 0, "quorumfs died of signal %d" % -rc
    assert len(lines) == 1 and lines[0], \
        "expected one line on stderr, got %r" % err
    assert lines[0].startswith("quorumfs: "), lines[0]
    assert any(n in lines[0] for n in names), \
        "message %r names none of %r" % (lines[0], names)
    if mnt is not None:
        assert not qfs.is_fuse_mounted(mnt)


# --- threshold ---------------------------------------------------------

def test_threshold_zero_is_refused(run_daemon, dirs):
    r = run_daemon("-f", "-o", "threshold=0", *dirs.c, dirs.mnt)
    assert_refused(r, "threshold", mnt=dirs.mnt)


def test_threshold_above_the_number_of_children_is_refused(run_daemon, dirs):
    r = run_daemon("-f", "-o", "threshold=4", *dirs.c, dirs.mnt)
    assert_refused(r, "threshold", mnt=dirs.mnt)


def test_threshold_that_is_not_a_number_is_refused(run_daemon, dirs):
    r = run_daemon("-f", "-o", "threshold=abc", *dirs.c, dirs.mnt)
    assert_refused(r, "threshold", mnt=dirs.mnt)


def test_negative_threshold_is_refused(run_daemon, dirs):
    r = run_daemon("-f", "-o", "threshold=-1", *dirs.c, dirs.mnt)
    assert_refused(r, "threshold", mnt=dirs.mnt)


def test_threshold_with_trailing_garbage_is_refused(run_daemon, dirs):
    r = run_daemon("-f", "-o", "threshold=2x", *dirs.c, dirs.mnt)
    assert_refused(r, "threshold", mnt=dirs.mnt)


# --- read-pattern, blkverify, threads, unknown options -----------------

def test_unknown_read_pattern_is_refused(run_daemon, dirs):
    r = run_daemon("-f", "-o", "read-pattern=bogus", *dirs.c, dirs.mnt)
    assert_refused(r, "read-pattern", "bogus", mnt=dirs.mnt)


def test_blkverify_with_three_children_is_refused(run_daemon, dirs):
    r = run_daemon("-f", "-o", "blkverify", *dirs.c, dirs.mnt)
    assert_refused(r, "blkverify", mnt=dirs.mnt)


def test_blkverify_with_threshold_one_is_refused(run_daemon, dirs):
    r = run_daemon("-f", "-o", "blkverify,threshold=1", *dirs.c[:2],
                   dirs.mnt)
    assert_refused(r, "blkverify", "threshold", mnt=dirs.mnt)


@pytest.mark.parametrize("opts", ["blkverify,rewrite-corrupted",
                                  "rewrite-corrupted,blkverify"])
def test_blkverify_with_rewrite_corrupted_is_refused(run_daemon, dirs, opts):
    r = run_daemon("-f", "-o", opts + ",threshold=2", *dirs.c[:2], dirs.mnt)
    assert_refused(r, "blkverify", "rewrite-corrupted", mnt=dirs.mnt)


def test_blkverify_with_fifo_read_pattern_is_refused(run_daemon, dirs):
    r = run_daemon("-f", "-o", "blkverify,read-pattern=fifo,threshold=2",
                   *dirs.c[:2], dirs.mnt)
    assert_refused(r, "blkverify", "read-pattern", "fifo", mnt=dirs.mnt)


def test_zero_threads_is_refused(run_daemon, dirs):
    r = run_daemon("-f", "-o", "threads=0", *dirs.c, dirs.mnt)
    assert_refused(r, "threads", mnt=dirs.mnt)


def test_threads_that_is_not_a_number_is_refused(run_daemon, dirs):
    r = run_daemon("-f", "-o", "threads=abc", *dirs.c, dirs.mnt)
    assert_refused(r, "threads", mnt=dirs.mnt)


def test_unknown_mount_option_is_refused(run_daemon, dirs):
    r = run_daemon("-f", "-o", "frobnicate", *dirs.c, dirs.mnt)
    assert_refused(r, "frobnicate", mnt=dirs.mnt)


def test_log_in_a_missing_directory_is_refused(run_daemon, dirs):
    log = os.path.join(dirs.root, "no-such-dir", "events.jsonl")
    r = run_daemon("-f", "-o", "log=" + log, *dirs.c, dirs.mnt)
    assert_refused(r, log, "log", mnt=dirs.mnt)


# --- children ----------------------------------------------------------

def test_missing_child_directory_is_refused(run_daemon, dirs):
    missing = os.path.join(dirs.root, "missing")
    r = run_daemon("-f", dirs.c[0], missing, dirs.c[1], dirs.mnt)
    assert_refused(r, missing, mnt=dirs.mnt)


def test_child_that_is_a_regular_file_is_refused(run_daemon, dirs):
    regular = os.path.join(dirs.root, "regular")
    open(regular, "w").close()
    r = run_daemon("-f", dirs.c[0], regular, dirs.c[1], dirs.mnt)
    assert_refused(r, regular, mnt=dirs.mnt)


def test_same_child_given_twice_is_refused(run_daemon, dirs):
    r = run_daemon("-f", dirs.c[0], dirs.c[1], dirs.c[0], dirs.mnt)
    assert_refused(r, dirs.c[0], mnt=dirs.mnt)


def test_same_child_through_a_symlink_is_refused(run_daemon, dirs):
    link = os.path.join(dirs.root, "link-to-c0")
    os.symlink(dirs.c[0], link)
    r = run_daemon("-f", dirs.c[0], dirs.c[1], link, dirs.mnt)
    assert_refused(r, dirs.c[0], link, mnt=dirs.mnt)


def test_same_child_through_a_bind_mount_is_refused(run_daemon, dirs,
                                                    bind_mount):
    bound = os.path.join(dirs.root, "bound-c0")
    bind_mount(dirs.c[0], bound)
    r = run_daemon("-f", dirs.c[0], dirs.c[1], bound, dirs.mnt)
    assert_refused(r, dirs.c[0], bound, mnt=dirs.mnt)


def test_child_that_contains_the_mountpoint_is_refused(run_daemon, dirs):
    inner = os.path.join(dirs.c[1], "sub", "mnt")
    os.makedirs(inner)
    r = run_daemon("-f", *dirs.c, inner)
    assert_refused(r, dirs.c[1], inner, mnt=inner)


def test_child_that_is_the_mountpoint_is_refused(run_daemon, dirs):
    r = run_daemon("-f", dirs.c[0], dirs.c[1], dirs.c[2], dirs.c[2])
    assert_refused(r, dirs.c[2], mnt=dirs.c[2])


def test_child_inside_the_mountpoint_is_refused(run_daemon, dirs):
    inner = os.path.join(dirs.mnt, "child")
    os.mkdir(inner)
    r = run_daemon("-f", dirs.c[0], dirs.c[1], inner, dirs.mnt)
    assert_refused(r, inner, dirs.mnt, mnt=dirs.mnt)


def test_no_children_is_refused(run_daemon, dirs):
    r = run_daemon("-f", dirs.mnt)
    assert_refused(r, "child", "CHILD", mnt=dirs.mnt)


def test_no_arguments_at_all_is_refused(run_daemon):
    rc, err = run_daemon("-f")
    assert_refused((rc, err), "child", "CHILD", "mountpoint", "MOUNTPOINT",
                   "mount point")


# --- the mount point ---------------------------------------------------

def test_missing_mountpoint_is_refused(run_daemon, dirs):
    missing = os.path.join(dirs.root, "no-such-mnt")
    r = run_daemon("-f", *dirs.c, missing)
    assert_refused(r, missing)
    assert not os.path.exists(missing), "the mount point was created"


def test_mountpoint_that_is_a_regular_file_is_refused(run_daemon, dirs):
    regular = os.path.join(dirs.root, "regular-mnt")
    open(regular, "w").close()
    r = run_daemon("-f", *dirs.c, regular)
    assert_refused(r, regular, mnt=regular)


# --- valid command lines mount -----------------------------------------

def assert_mount_serves_files(m):
    """The mount is up, logged MOUNTED, and a write reaches every child."""
    m.wait_event("MOUNTED")
    with open(m.path("probe"), "wb") as f:
        f.write(b"probe")
    for i in range(len(m.children)):
        with open(m.child_file(i, "probe"), "rb") as f:
            assert f.read() == b"probe"


def test_three_children_mount_with_defaults(quorum):
    m = quorum()
    assert_mount_serves_files(m)
    m.unmount()


def test_a_single_child_mounts(quorum):
    assert_mount_serves_files(quorum(n=1))


@pytest.mark.parametrize("threshold", [1, 2, 3])
def test_every_threshold_from_one_to_n_mounts(quorum, threshold):
    assert_mount_serves_files(quorum(threshold=threshold))


@pytest.mark.parametrize("opt", ["read-pattern=quorum", "read-pattern=fifo",
                                 "rewrite-corrupted", "threads=1",
                                 "threads=16",
                                 "allow_other,default_permissions"])
def test_valid_option_mounts(quorum, opt):
    assert_mount_serves_files(quorum(opts=opt))


def test_blkverify_with_two_children_and_threshold_two_mounts(quorum):
    assert_mount_serves_files(quorum(n=2, threshold=2, opts=["blkverify"]))


@pytest.mark.parametrize("flag", ["-s", "-d"])
def test_libfuse_flag_mounts(quorum, flag):
    m = quorum(start=False)
    m.cmd.insert(m.cmd.index("-f") + 1, flag)
    m.start()
    assert_mount_serves_files(m)


@pytest.mark.parametrize("n", [3, 4])
def test_default_threshold_is_a_majority_of_children(quorum, n):
    # floor(n/2)+1 agreeing copies are needed: a minority of corrupt copies
    # is outvoted, while a 2-2 split of four children (or two different
    # corruptions of three) leaves no group big enough.
    m = quorum(n=n)
    good = b"g" * 4096
    with open(m.path("f"), "wb") as f:
        f.write(good)

    def corrupt(i, byte):
        with open(m.child_file(i, "f"), "r+b") as f:
            f.write(byte * 4096)

    corrupt(0, b"x")
    with open(m.path("f"), "rb") as f:
        assert f.read() == good
    corrupt(1, b"x" if n == 4 else b"y")
    with pytest.raises(OSError) as e:
        with open(m.path("f"), "rb") as f:
            f.read()
    assert e.value.errno == errno.EIO
    m.wait_event("QUORUM_FAILURE", lambda d: d.get("reference") == "f")
