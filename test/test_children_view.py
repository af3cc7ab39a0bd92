"""MOUNTPOINT/.children/NAME/: each child's own copy, read-only (README
"Each child's own copy").

When copies disagree an operator looks at each one before choosing:
every data member shows as a directory under .children with its own
bytes and attributes, never voted. Every change there fails with EROFS
and changes nothing; names resolve beneath the child's root without
following its links; its .quorumfs/ does not show; .children is reserved
at the root like .control; a member added at runtime appears and a
removed one disappears; a call a hung child holds is bounded by
io-timeout.
"""

import errno
import json
import os
import stat
import subprocess
import time

import pytest

import qfs
from control_util import (MiB, child_status, control, status, tree_state,
                          wait_child_state)
from qfs import read_file, write_file

CHILDREN = ".children"


def view(m, i, rel=""):
    """Path of rel in child i's copy on the mount, as status names it."""
    doc = child_status(status(m), m.children[i])
    assert doc["view"] == "%s/%s" % (CHILDREN, os.path.basename(
        m.children[i])), doc
    return os.path.join(m.mnt, doc["view"], rel)


def corrupt(path, offset, count):
    """Invert count bytes of a child's file in place, on its disk."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))
        os.fsync(f.fileno())


def errno_of(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno
    return 0


@pytest.mark.timeout(120)
def test_cmp_finds_the_copy_corrupted_on_disk_while_the_vote_reads_the_majority(
        backing, quorum):
    m = quorum(n=3, threshold=2)
    data = os.urandom(4 * MiB)
    write_file(m.path("vm.img"), data)
    corrupt(m.child_file(1, "vm.img"), 1 * MiB + 100, 8)

    assert read_file(m.path("vm.img")) == data
    same = subprocess.run(["cmp", view(m, 0, "vm.img"), view(m, 2, "vm.img")],
                          capture_output=True, text=True, timeout=60)
    assert same.returncode == 0, same.stdout + same.stderr
    differ = subprocess.run(
        ["cmp", view(m, 0, "vm.img"), view(m, 1, "vm.img")],
        capture_output=True, text=True, timeout=60)
    assert differ.returncode == 1, differ.stdout + differ.stderr
    assert "byte %d" % (1 * MiB + 101) in differ.stdout, differ.stdout
    assert read_file(view(m, 1, "vm.img")) == read_file(
        m.child_file(1, "vm.img"))

    # Attributes as the child has them, but a number of the view's own.
    for i in range(3):
        mine, theirs = os.stat(view(m, i, "vm.img")), os.stat(
            m.child_file(i, "vm.img"))
        for key in ("st_size", "st_mode", "st_uid", "st_gid", "st_nlink",
                    "st_mtime_ns", "st_blocks"):
            assert getattr(mine, key) == getattr(theirs, key), key
    inos = {os.stat(view(m, i, "vm.img")).st_ino for i in range(3)}
    assert len(inos) == 3, "one file system each may repeat numbers"


@pytest.mark.timeout(120)
def test_qemu_img_compare_and_info_work_on_a_childs_copy(quorum):
    m = quorum(n=3, threshold=2)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2",
                    m.path("vm.qcow2"), "64M"], check=True, timeout=60)
    write_file(m.path("vm.img"), os.urandom(2 * MiB))
    corrupt(m.child_file(2, "vm.img"), 65536, 512)

    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", view(m, 1, "vm.qcow2")],
        capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    assert doc["format"] == "qcow2" and doc["virtual-size"] == 64 * MiB

    same = subprocess.run(
        ["qemu-img", "compare", "-U", "-f", "raw", "-F", "raw",
         view(m, 0, "vm.img"), view(m, 1, "vm.img")],
        capture_output=True, text=True, timeout=60)
    assert same.returncode == 0, same.stdout + same.stderr
    differ = subprocess.run(
        ["qemu-img", "compare", "-U", "-f", "raw", "-F", "raw",
         view(m, 0, "vm.img"), view(m, 2, "vm.img")],
        capture_output=True, text=True, timeout=60)
    assert differ.returncode == 1, differ.stdout + differ.stderr
    assert "mismatch at offset 65536" in differ.stdout, differ.stdout


def each_change(base):
    """(what, call) for every kind of change, on paths under base."""
    f, d = os.path.join(base, "f"), os.path.join(base, "d")
    return [
        ("open for writing", lambda: os.open(f, os.O_WRONLY)),
        ("open for reading and writing", lambda: os.open(f, os.O_RDWR)),
        ("open with O_TRUNC", lambda: os.open(f, os.O_RDONLY | os.O_TRUNC)),
        ("create", lambda: os.open(os.path.join(base, "new"),
                                   os.O_WRONLY | os.O_CREAT, 0o644)),
        ("mkdir", lambda: os.mkdir(os.path.join(base, "newdir"))),
        ("mknod", lambda: os.mkfifo(os.path.join(base, "fifo"))),
        ("symlink", lambda: os.symlink("f", os.path.join(base, "ln"))),
        ("link", lambda: os.link(f, os.path.join(base, "hard"))),
        ("unlink", lambda: os.unlink(f)),
        ("rmdir", lambda: os.rmdir(d)),
        ("rename", lambda: os.rename(f, os.path.join(base, "g"))),
        ("truncate", lambda: os.truncate(f, 0)),
        ("chmod", lambda: os.chmod(f, 0o600)),
        ("chown", lambda: os.chown(f, 1234, 1234)),
        ("utime", lambda: os.utime(f, (1, 1))),
        ("setxattr", lambda: os.setxattr(f, "user.x", b"1")),
        ("removexattr", lambda: os.removexattr(f, "user.a")),
    ]


@pytest.mark.timeout(120)
def test_every_change_under_children_is_refused_with_erofs(backing, quorum):
    m = quorum(n=3, threshold=2)
    write_file(m.path("f"), b"the file")
    os.setxattr(m.path("f"), "user.a", b"kept")
    os.mkdir(m.path("d"))
    before = [tree_state(c) for c in m.children]
    mount_before = tree_state(m.mnt)

    for what, call in each_change(view(m, 1)):
        assert errno_of(call) == errno.EROFS, what
    # Across the boundary, both ways.
    assert errno_of(os.rename, m.path("f"), view(m, 1, "moved")) == \
        errno.EROFS
    assert errno_of(os.rename, view(m, 1, "f"), m.path("moved")) == \
        errno.EROFS
    assert errno_of(os.link, view(m, 1, "f"), m.path("hard")) == errno.EROFS
    # .children itself and a member's directory take nothing either.
    assert errno_of(os.mkdir, m.path(CHILDREN + "/new")) == errno.EROFS
    assert errno_of(os.rmdir, view(m, 1)) == errno.EROFS
    assert errno_of(os.chmod, view(m, 1), 0o700) == errno.EROFS

    assert [tree_state(c) for c in m.children] == before
    assert tree_state(m.mnt) == mount_before
    assert read_file(view(m, 1, "f")) == b"the file"
    assert os.getxattr(view(m, 1, "f"), "user.a") == b"kept"


@pytest.mark.timeout(60)
def test_children_is_reserved_like_control(quorum):
    m = quorum(n=3, threshold=2)
    names = os.listdir(m.mnt)
    assert ".control" not in names and CHILDREN not in names
    st = os.stat(m.path(CHILDREN))
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555
    assert st.st_uid == os.geteuid()
    assert sorted(os.listdir(m.path(CHILDREN))) == sorted(
        os.path.basename(c) for c in m.children)

    assert errno_of(os.mkdir, m.path(CHILDREN)) == errno.EEXIST
    assert errno_of(os.mkdir, m.path(".control")) == errno.EEXIST
    assert errno_of(os.rmdir, m.path(CHILDREN)) == errno.EPERM
    assert errno_of(os.unlink, m.path(".control")) == errno.EPERM
    os.mkdir(m.path("dir"))
    assert errno_of(os.rename, m.path("dir"), m.path(CHILDREN)) == errno.EPERM
    assert errno_of(os.rename, m.path("dir"), m.path(".control")) in (
        errno.EPERM, errno.ENOTDIR)
    assert errno_of(os.rename, m.path(CHILDREN), m.path("elsewhere")) == \
        errno.EPERM
    # Only the root's name is reserved.
    os.mkdir(m.path("dir/" + CHILDREN))
    assert os.listdir(m.path("dir")) == [CHILDREN]
    # A child's own .children at its root is hidden like its .control.
    for c in m.children:
        os.mkdir(os.path.join(c, CHILDREN))
    assert CHILDREN not in os.listdir(m.mnt)
    assert stat.S_IMODE(os.stat(m.path(CHILDREN)).st_mode) == 0o555


@pytest.mark.timeout(60)
def test_the_childs_quorumfs_directory_does_not_show(quorum):
    m = quorum(n=3, threshold=2)
    write_file(m.path("f"), b"x")
    assert os.path.isdir(m.child_file(0, ".quorumfs"))
    assert sorted(os.listdir(view(m, 0))) == ["f"]
    assert errno_of(os.stat, view(m, 0, ".quorumfs")) == errno.ENOENT
    assert errno_of(os.stat, view(m, 0, ".quorumfs/state")) == errno.ENOENT


@pytest.mark.timeout(120)
def test_a_child_added_at_runtime_appears_and_a_removed_one_disappears(
        tmpfs_dir, quorum):
    m = quorum(n=3, threshold=2)
    write_file(m.path("f"), b"voted")
    extra = tmpfs_dir / "extra-child"
    extra.mkdir()
    control(m, "add %s name=spare" % extra)
    assert child_status(status(m), "spare")["view"] == CHILDREN + "/spare"
    assert "spare" in os.listdir(m.path(CHILDREN))
    wait_child_state(m, "spare", "ok")
    assert read_file(m.path(CHILDREN + "/spare/f")) == b"voted"

    held = os.open(m.path(CHILDREN + "/spare/f"), os.O_RDONLY)
    try:
        control(m, "remove spare")
        assert "spare" not in os.listdir(m.path(CHILDREN))
        assert errno_of(os.stat, m.path(CHILDREN + "/spare")) == errno.ENOENT
        assert errno_of(os.pread, held, 5, 0) == errno.ESTALE
    finally:
        os.close(held)
    assert (extra / "f").read_bytes() == b"voted"


@pytest.mark.timeout(60)
def test_a_symlink_in_a_child_does_not_lead_outside_its_root(
        tmpfs_dir, quorum):
    m = quorum(n=3, threshold=2, base=tmpfs_dir)
    secret = tmpfs_dir / "secret"
    secret.write_bytes(b"outside every child")
    child = m.children[1]
    os.symlink("../secret", os.path.join(child, "esc"))
    os.symlink("..", os.path.join(child, "up"))
    os.symlink(str(secret), os.path.join(child, "abs"))

    assert os.readlink(view(m, 1, "esc")) == "../secret"
    # Relative to where the link is on the mount: .children/secret.
    assert errno_of(read_file, view(m, 1, "esc")) == errno.ENOENT
    assert errno_of(os.stat, view(m, 1, "up/secret")) == errno.ENOENT
    assert sorted(os.listdir(view(m, 1, "up"))) == sorted(
        os.path.basename(c) for c in m.children)
    # The daemon never opens through a link: the link itself is the entry.
    assert stat.S_ISLNK(os.lstat(view(m, 1, "abs")).st_mode)
    assert os.readlink(view(m, 1, "abs")) == str(secret)


@pytest.mark.timeout(60)
def test_a_file_the_caller_cannot_read_in_the_child_cannot_be_read_there(
        quorum):
    m = quorum(n=3, threshold=2, opts=["allow_other"])
    write_file(m.path("open"), b"anyone")
    write_file(m.path("private"), b"root only")
    for c in m.children:
        os.chmod(c, 0o755)
    os.chmod(m.child_file(2, "private"), 0o600)
    os.chmod(m.child_file(2, "open"), 0o644)
    nobody = 65534
    # cwd is entered before the user changes: only the copy is checked.
    out = qfs.run_as(nobody, nobody, view(m, 2), """
try:
    open("private", "rb").read()
    print("read")
except PermissionError:
    print("EACCES")
print(open("open", "rb").read().decode())
""")
    assert out.split() == ["EACCES", "anyone"]


@pytest.fixture
def hung_copy(faulty, tmpfs_dir, scratch_fs, quorum):
    ffs = faulty(scratch_fs("tmpfs"))
    children = [tmpfs_dir / "c0", tmpfs_dir / "c1"]
    for c in children:
        c.mkdir()
    m = quorum(children=children + [ffs.mnt], threshold=2,
               opts=["io-timeout=2"])
    return m, ffs


@pytest.mark.timeout(120)
def test_a_read_a_hung_child_holds_ends_at_io_timeout(hung_copy):
    m, ffs = hung_copy
    write_file(m.path("vm.img"), os.urandom(MiB))
    copy = view(m, 2, "vm.img")
    fd = os.open(copy, os.O_RDONLY)
    try:
        ffs.set("hang op=read path=/vm.img")
        start = time.monotonic()
        assert errno_of(os.pread, fd, 4096, 0) == errno.ETIMEDOUT
        assert time.monotonic() - start < 8 * qfs.deadline_scale()
    finally:
        os.close(fd)
    # Like any request it missed: the child is failed, the mount serves.
    wait_child_state(m, m.children[2], "failed")
    assert len(read_file(m.path("vm.img"))) == MiB
    ffs.clear()
    assert stat.S_ISDIR(os.stat(view(m, 2)).st_mode)


@pytest.mark.timeout(60)
def test_children_of_one_last_component_get_their_slot_after_it(
        tmp_path, quorum):
    children = [tmp_path / side / "disk" for side in ("x", "y", "z")]
    for c in children:
        c.mkdir(parents=True)
    m = quorum(children=children, threshold=2)
    write_file(m.path("f"), b"same")
    doc = status(m)
    views = [child_status(doc, str(c))["view"] for c in children]
    assert views == [CHILDREN + "/disk", CHILDREN + "/disk~1",
                     CHILDREN + "/disk~2"]
    assert sorted(os.listdir(m.path(CHILDREN))) == ["disk", "disk~1",
                                                    "disk~2"]
    for v in views:
        assert read_file(m.path(v + "/f")) == b"same"


@pytest.mark.timeout(120)
def test_a_replication_child_has_no_copy_under_children(quorum, tmp_path):
    m = quorum(n=3, threshold=2)
    write_file(m.path("f"), b"voted")
    inbound = tmp_path / "inbound"
    inbound.mkdir()
    control(m, "add %s mode=primary name=sec" % inbound)
    wait_child_state(m, "sec", "ok")
    assert child_status(status(m), "sec")["view"] is None
    assert "sec" not in os.listdir(m.path(CHILDREN))
    assert errno_of(os.stat, m.path(CHILDREN + "/sec")) == errno.ENOENT
    assert len(os.listdir(m.path(CHILDREN))) == 3


@pytest.mark.timeout(120)
def test_a_child_out_of_step_shows_what_it_still_holds(faulty, tmpfs_dir,
                                                       scratch_fs, quorum):
    ffs = faulty(scratch_fs("tmpfs"))
    children = [tmpfs_dir / "c0", tmpfs_dir / "c1"]
    for c in children:
        c.mkdir()
    m = quorum(children=children + [ffs.mnt], threshold=2)
    old, new = os.urandom(64 * 1024), os.urandom(64 * 1024)
    write_file(m.path("vm.img"), old)
    ffs.set("error=EIO op=write")
    fd = os.open(m.path("vm.img"), os.O_WRONLY)
    try:
        assert os.pwrite(fd, new, 0) == len(new)
    finally:
        os.close(fd)
    assert child_status(status(m), m.children[2])["votes"] is False
    assert read_file(m.path("vm.img")) == new
    assert read_file(view(m, 0, "vm.img")) == new
    assert read_file(view(m, 2, "vm.img")) == old
    ffs.clear()
