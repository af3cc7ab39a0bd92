"""Set-user-ID and set-group-ID bits through a real mount, compared with
the children's own file system (README "Behaving like a local
filesystem").

A write by a caller without CAP_FSETID must clear S_ISUID, and S_ISGID
where it means "run as the group" (group execute set) or where the caller
is not in the file's group; otherwise a non-owner could plant code that
still runs as root. Each case runs the same steps in a directory of the
backing file system itself and on the mount, and requires the same mode
on the mount and on every child.
"""

import os
import stat

import pytest

import qfs

CALLER = 1234
OTHER_GROUP = 4321

APPEND = """
with open("prog", "ab") as f:
    f.write(b"appended by a user")
"""

DIRECT = """
import mmap, os
buf = mmap.mmap(-1, 4096)
buf.write(b"x" * 4096)
fd = os.open("prog", os.O_WRONLY | os.O_DIRECT)
os.pwrite(fd, buf, 0)
os.close(fd)
"""

TRUNCATE = """
import os
os.truncate("prog", 1)
"""

FALLOCATE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open("prog", os.O_WRONLY)
assert libc.fallocate(fd, 0, ctypes.c_long(0), ctypes.c_long(65536)) == 0
os.close(fd)
"""


def make_prog(directory, mode, gid):
    path = os.path.join(directory, "prog")
    qfs.write_file(path, b"\0" * 8192)
    os.chown(path, 0, gid)
    os.chmod(path, mode)
    os.chmod(directory, 0o777)
    return path


def mode_after(directory, mode, gid, code, groups=()):
    """Make prog with mode and group gid as root, run code as CALLER
    (also in groups) in directory; the mode that results."""
    path = make_prog(directory, mode, gid)
    qfs.run_as(CALLER, CALLER, directory, code, groups=groups)
    return stat.S_IMODE(os.stat(path).st_mode)


CASES = [
    # (name, mode, group, caller's extra groups, code)
    ("buffered write, setuid and setgid", 0o6777, 0, (), APPEND),
    ("O_DIRECT write, setuid and setgid", 0o6777, 0, (), DIRECT),
    ("write, setgid with group execute, caller in the group", 0o2777,
     OTHER_GROUP, (OTHER_GROUP,), APPEND),
    ("write, setgid without group execute, caller not in the group", 0o2767,
     OTHER_GROUP, (), APPEND),
    ("write, setgid without group execute, caller in the group", 0o2767,
     OTHER_GROUP, (OTHER_GROUP,), APPEND),
    ("truncate", 0o6777, 0, (), TRUNCATE),
    ("fallocate", 0o6777, 0, (), FALLOCATE),
]


@pytest.mark.parametrize("name,mode,gid,groups,code", CASES,
                         ids=[c[0] for c in CASES])
def test_a_write_by_another_user_clears_set_id_bits_as_locally(
        ext4_dir, quorum, name, mode, gid, groups, code):
    local = ext4_dir / "local"
    local.mkdir()
    expected = mode_after(str(local), mode, gid, code, groups)
    m = quorum(base=ext4_dir, opts=["allow_other", "default_permissions"])
    pub = m.path("pub")
    os.mkdir(pub)
    got = mode_after(pub, mode, gid, code, groups)
    assert oct(got) == oct(expected), name
    for child in m.children:
        assert oct(stat.S_IMODE(os.stat(
            os.path.join(child, "pub", "prog")).st_mode)) == oct(expected)


def test_a_write_by_root_keeps_set_id_bits(quorum):
    m = quorum(opts=["allow_other"])
    path = make_prog(m.path(), 0o6777, 0)
    with open(path, "ab") as f:
        f.write(b"root may")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o6777
    for child in m.children:
        assert stat.S_IMODE(os.stat(os.path.join(child, "prog")).st_mode) \
            == 0o6777


def test_a_chown_clears_set_id_bits_as_locally(ext4_dir, quorum):
    local = ext4_dir / "local"
    local.mkdir()
    m = quorum(base=ext4_dir, opts=["allow_other"])
    for directory in (str(local), m.path()):
        path = make_prog(directory, 0o6775, 0)
        os.chown(path, CALLER, CALLER)
    want = stat.S_IMODE(os.stat(local / "prog").st_mode)
    assert stat.S_IMODE(os.stat(m.path("prog")).st_mode) == want
