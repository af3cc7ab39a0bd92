"""What the operator reads: libfuse's complaints as one line, an unknown
option named even when nothing else was given, and the mount's source
(the fsname df and /proc/mounts show): the operator's -o fsname=, else
the set itself, as an fstab line spells it (README "Command line")."""

import os
import re
import subprocess

import pytest

import qfs


def mount_source(mnt):
    """The source field of the mount on mnt in /proc/self/mountinfo,
    unescaped."""
    mnt = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if qfs._unescape_mountinfo(left.split()[4]) == mnt:
                return qfs._unescape_mountinfo(right.split()[1])
    pytest.fail("nothing is mounted on %s" % mnt)


def one_line(result):
    rc, err = result
    assert rc == 1, (rc, err)
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, "expected one line on stderr, got %r" % err
    assert lines[0].startswith("quorumfs: "), lines[0]
    assert lines[0].count("quorumfs:") == 1, lines[0]
    return lines[0]


@pytest.mark.timeout(30)
def test_an_unknown_option_alone_is_named(run_daemon):
    line = one_line(run_daemon("--bogus"))
    assert "--bogus" in line and "unknown option" in line


@pytest.mark.timeout(30)
def test_an_unknown_dash_o_option_without_paths_is_named(run_daemon):
    line = one_line(run_daemon("-o", "frobnicate=1"))
    assert "frobnicate=1" in line


@pytest.mark.timeout(30)
def test_libfuse_lists_unknown_options_on_one_line(run_daemon, tmp_path):
    dirs = [tmp_path / n for n in ("a", "b", "c", "mnt")]
    for d in dirs:
        d.mkdir()
    line = one_line(run_daemon("-f", "-o", "bogus=1,allow_other,frob",
                               *dirs))
    assert "bogus=1" in line and "frob" in line
    assert "allow_other" not in line  # libfuse knows that one
    assert not os.listdir(dirs[0]), "a child was touched"


@pytest.mark.timeout(60)
def test_the_default_source_is_the_set(quorum):
    m = quorum()
    assert mount_source(m.mnt) == ":".join(m.children)


@pytest.mark.timeout(60)
def test_a_colon_in_a_child_is_escaped_in_the_source(quorum, tmp_path):
    children = [tmp_path / "plain", tmp_path / "with:colon",
                tmp_path / "back\\slash"]
    for c in children:
        c.mkdir()
    # Given one by one, each written as the source spells it.
    escaped = [str(c).replace("\\", "\\\\").replace(":", "\\:")
               for c in children]
    m = quorum(children=escaped)
    assert mount_source(m.mnt) == ":".join(escaped)
    qfs.write_file(m.path("f"), b"x")
    assert all((c / "f").exists() for c in children)


@pytest.mark.timeout(60)
def test_fsname_names_the_mount(quorum):
    m = quorum(opts=["fsname=vmstore"])
    assert mount_source(m.mnt) == "vmstore"
    assert os.path.exists(m.path(".control"))


@pytest.mark.timeout(60)
def test_fsname_may_hold_an_escaped_comma(quorum):
    m = quorum(opts=["fsname=vm\\,store"])
    assert mount_source(m.mnt) == "vm,store"


def project_version():
    text = (qfs.REPO / "CMakeLists.txt").read_text()
    return re.search(r"project\(quorumfs VERSION (\d+\.\d+\.\d+)",
                     text).group(1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_names_the_project_and_libfuse(flag):
    res = subprocess.run([qfs.daemon_binary(), flag], capture_output=True,
                         text=True, timeout=10)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert lines[0] == "quorumfs " + project_version()
    assert re.fullmatch(r"libfuse 3\.\d+\.\d+", lines[1]), lines
