"""The file-system surface through a real mount (README "How
requests are decided" and "Behaving like a local filesystem").

Each operation is checked on the mount and on every child: the children
must end up holding the same names, contents and metadata, exactly as if
the operation had been done on each of them directly. Tests whose outcome
depends on the child file system run over tmpfs and ext4 (`backing`).
"""

import errno
import mmap
import os
import stat
import subprocess
import sys
import time

import pytest

import qfs

KiB = 1024
MiB = 1024 * KiB


# --- helpers -----------------------------------------------------------

def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def children_of(m, rel):
    return [m.child_file(i, rel) for i in range(len(m.children))]


def assert_content(m, rel, data):
    """The mount and every child hold exactly `data` at rel."""
    assert read(m.path(rel)) == data, "mount content differs"
    for p in children_of(m, rel):
        assert read(p) == data, "child %s differs" % p


def shape(st):
    """The metadata every child and the mount must agree on."""
    fmt = stat.S_IFMT(st.st_mode)
    size = st.st_size if fmt in (stat.S_IFREG, stat.S_IFLNK) else None
    return (fmt, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size)


def assert_same_metadata(m, rel):
    """Type, mode, owner and size are equal on the mount and every child.
    Returns the mount's lstat."""
    want = shape(os.lstat(m.path(rel)))
    for p in children_of(m, rel):
        assert shape(os.lstat(p)) == want, "child %s differs" % p
    return os.lstat(m.path(rel))


def assert_absent(m, rel):
    assert not os.path.lexists(m.path(rel)), "still on the mount"
    for p in children_of(m, rel):
        assert not os.path.lexists(p), "still on child %s" % p


def wait_for_clock_past(ns):
    """Wait until a new timestamp would be later than `ns` (the kernel's
    timestamps are coarse), so a changed ctime is observable."""
    qfs.wait_for(lambda: time.time_ns() > ns + 20_000_000, 5,
                 "the clock to pass a timestamp")


def child_dir_probe(m):
    """A scratch path on the children's file system, outside any child,
    to learn what that file system itself does."""
    return os.path.join(os.path.dirname(m.children[0]), "probe")


# --- files and data ----------------------------------------------------

def test_created_file_holds_written_data_on_mount_and_every_child(
        backing, quorum):
    m = quorum()
    write(m.path("f"), b"hello quorum")
    assert_content(m, "f", b"hello quorum")
    assert_same_metadata(m, "f")


def test_new_file_has_requested_mode_and_root_owner_on_every_child(
        backing, quorum):
    m = quorum()
    old = os.umask(0)
    try:
        write(m.path("f"), b"x", mode=0o640)
    finally:
        os.umask(old)
    st = assert_same_metadata(m, "f")
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_exclusive_create_of_existing_file_fails_with_eexist(quorum):
    m = quorum()
    write(m.path("f"), b"keep")
    with pytest.raises(FileExistsError):
        os.open(m.path("f"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert_content(m, "f", b"keep")


def test_overwrite_in_the_middle_reaches_every_child(backing, quorum):
    m = quorum()
    write(m.path("f"), b"a" * 10000)
    fd = os.open(m.path("f"), os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"B" * 100, 5000) == 100
    finally:
        os.close(fd)
    assert_content(m, "f", b"a" * 5000 + b"B" * 100 + b"a" * 4900)


def test_write_past_end_of_file_leaves_zeros_on_every_child(backing, quorum):
    m = quorum()
    fd = os.open(m.path("f"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert os.pwrite(fd, b"tail", 70000) == 4
    finally:
        os.close(fd)
    assert_content(m, "f", bytes(70000) + b"tail")


def test_one_mebibyte_write_arrives_whole_on_every_child(backing, quorum):
    m = quorum()
    data = os.urandom(MiB)
    fd = os.open(m.path("big"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        assert os.pwrite(fd, data, 0) == MiB
        assert os.pread(fd, MiB, 0) == data
    finally:
        os.close(fd)
    assert_content(m, "big", data)
    assert not [e for e in m.events() if e["event"].startswith("QUORUM_")]


def test_write_beyond_4_gib_lands_at_that_offset_on_every_child(
        backing, quorum):
    m = quorum()
    far = 5 * 1024 * MiB + 7
    fd = os.open(m.path("f"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        assert os.pwrite(fd, b"far", far) == 3
        assert os.pread(fd, 3, far) == b"far"
    finally:
        os.close(fd)
    for p in children_of(m, "f") + [m.path("f")]:
        assert os.stat(p).st_size == far + 3, p
        fd = os.open(p, os.O_RDONLY)
        try:
            assert os.pread(fd, 3, far) == b"far", p
        finally:
            os.close(fd)


def test_open_with_o_creat_of_an_existing_file_keeps_its_content(quorum):
    m = quorum()
    write(m.path("f"), b"keep")
    os.close(os.open(m.path("f"), os.O_CREAT | os.O_RDWR, 0o644))
    assert_content(m, "f", b"keep")


def test_append_mode_writes_go_to_end_on_every_child(quorum):
    m = quorum()
    write(m.path("f"), b"one,")
    fd = os.open(m.path("f"), os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"two")
    finally:
        os.close(fd)
    assert_content(m, "f", b"one,two")


def test_open_file_stays_usable_after_it_is_unlinked(backing, quorum):
    m = quorum()
    fd = os.open(m.path("f"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"before")
        os.unlink(m.path("f"))
        assert os.pwrite(fd, b"AFTER", 0) == 5
        assert os.pread(fd, 6, 0) == b"AFTERe"
    finally:
        os.close(fd)
    assert_absent(m, "f")


def test_open_file_follows_its_rename(backing, quorum):
    m = quorum()
    fd = os.open(m.path("a"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"old")
        os.rename(m.path("a"), m.path("b"))
        os.pwrite(fd, b"new", 0)
    finally:
        os.close(fd)
    assert_absent(m, "a")
    assert_content(m, "b", b"new")


def test_write_updates_mtime_on_the_mount(backing, quorum):
    m = quorum()
    write(m.path("f"), b"x")
    before = os.stat(m.path("f")).st_mtime_ns
    wait_for_clock_past(before)
    fd = os.open(m.path("f"), os.O_WRONLY)
    try:
        os.pwrite(fd, b"y", 0)
    finally:
        os.close(fd)
    assert os.stat(m.path("f")).st_mtime_ns > before


# --- directories -------------------------------------------------------

def test_mkdir_creates_directory_on_every_child(backing, quorum):
    m = quorum()
    old = os.umask(0)
    try:
        os.mkdir(m.path("d"), 0o750)
    finally:
        os.umask(old)
    st = assert_same_metadata(m, "d")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750


def test_file_in_new_subdirectory_reaches_every_child(quorum):
    m = quorum()
    os.makedirs(m.path("a/b/c"))
    write(m.path("a/b/c/f"), b"deep")
    assert_content(m, "a/b/c/f", b"deep")


def test_directory_link_count_counts_its_subdirectories(quorum):
    m = quorum()
    os.mkdir(m.path("d"))
    os.mkdir(m.path("d/a"))
    os.mkdir(m.path("d/b"))
    want = os.stat(m.child_file(0, "d")).st_nlink
    assert want == 4
    assert os.stat(m.path("d")).st_nlink == want


def test_rmdir_removes_directory_from_every_child(backing, quorum):
    m = quorum()
    os.mkdir(m.path("d"))
    os.rmdir(m.path("d"))
    assert_absent(m, "d")


def test_rmdir_of_non_empty_directory_fails_and_keeps_it(quorum):
    m = quorum()
    os.mkdir(m.path("d"))
    write(m.path("d/f"), b"x")
    with pytest.raises(OSError) as e:
        os.rmdir(m.path("d"))
    assert e.value.errno == errno.ENOTEMPTY
    assert_content(m, "d/f", b"x")


# --- unlink ------------------------------------------------------------

def test_unlink_removes_file_from_every_child(backing, quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.unlink(m.path("f"))
    assert_absent(m, "f")


def test_unlink_of_missing_file_fails_with_enoent(quorum):
    m = quorum()
    with pytest.raises(FileNotFoundError):
        os.unlink(m.path("nothing"))


# --- rename ------------------------------------------------------------

def test_rename_moves_file_on_every_child(backing, quorum):
    m = quorum()
    os.mkdir(m.path("d"))
    write(m.path("f"), b"moving")
    os.rename(m.path("f"), m.path("d/g"))
    assert_absent(m, "f")
    assert_content(m, "d/g", b"moving")


def test_rename_over_existing_file_replaces_it_on_every_child(
        backing, quorum):
    m = quorum()
    write(m.path("src"), b"new")
    write(m.path("dst"), b"old")
    os.rename(m.path("src"), m.path("dst"))
    assert_absent(m, "src")
    assert_content(m, "dst", b"new")


def test_rename_noreplace_over_existing_file_fails_with_eexist(
        backing, quorum):
    m = quorum()
    write(m.path("src"), b"src")
    write(m.path("dst"), b"dst")
    with pytest.raises(OSError) as e:
        qfs.renameat2(m.path("src"), m.path("dst"), qfs.RENAME_NOREPLACE)
    assert e.value.errno == errno.EEXIST
    assert_content(m, "src", b"src")
    assert_content(m, "dst", b"dst")


def test_rename_noreplace_to_a_free_name_moves_the_file(backing, quorum):
    m = quorum()
    write(m.path("src"), b"src")
    qfs.renameat2(m.path("src"), m.path("dst"), qfs.RENAME_NOREPLACE)
    assert_absent(m, "src")
    assert_content(m, "dst", b"src")


def test_rename_exchange_swaps_two_files_on_every_child(backing, quorum):
    m = quorum()
    write(m.path("a"), b"content of a")
    os.mkdir(m.path("b"))
    write(m.path("b/inside"), b"in b")
    qfs.renameat2(m.path("a"), m.path("b"), qfs.RENAME_EXCHANGE)
    assert_content(m, "b", b"content of a")
    assert_content(m, "a/inside", b"in b")
    assert stat.S_ISDIR(assert_same_metadata(m, "a").st_mode)


def test_rename_between_two_links_of_one_file_changes_nothing(quorum):
    # POSIX: if old and new are links to the same file, rename does
    # nothing and succeeds.
    m = quorum()
    write(m.path("a"), b"x")
    os.link(m.path("a"), m.path("b"))
    os.rename(m.path("a"), m.path("b"))
    assert_content(m, "a", b"x")
    assert_content(m, "b", b"x")
    assert os.stat(m.path("a")).st_nlink == 2


def test_rename_updates_ctime_of_the_moved_file(backing, quorum):
    m = quorum()
    write(m.path("f"), b"x")
    before = os.stat(m.path("f")).st_ctime_ns
    wait_for_clock_past(before)
    os.rename(m.path("f"), m.path("g"))
    assert os.stat(m.path("g")).st_ctime_ns > before
    for p in children_of(m, "g"):
        assert os.stat(p).st_ctime_ns > before


def test_rename_of_a_directory_over_an_empty_one_replaces_it(quorum):
    m = quorum()
    os.mkdir(m.path("src"))
    write(m.path("src/f"), b"x")
    os.mkdir(m.path("dst"))
    os.rename(m.path("src"), m.path("dst"))
    assert_absent(m, "src")
    assert_content(m, "dst/f", b"x")


def test_rename_of_a_directory_over_a_non_empty_one_fails(quorum):
    m = quorum()
    os.mkdir(m.path("src"))
    os.mkdir(m.path("dst"))
    write(m.path("dst/keep"), b"k")
    with pytest.raises(OSError) as e:
        os.rename(m.path("src"), m.path("dst"))
    assert e.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    assert stat.S_ISDIR(assert_same_metadata(m, "src").st_mode)
    assert_content(m, "dst/keep", b"k")


# --- names and paths -----------------------------------------------------

def test_a_255_byte_name_works(backing, quorum):
    m = quorum()
    name = "n" * 255
    write(m.path(name), b"long name")
    assert_content(m, name, b"long name")
    assert name in os.listdir(m.mnt)


def test_a_name_longer_than_the_child_allows_fails_with_enametoolong(
        backing, quorum):
    m = quorum()
    with pytest.raises(OSError) as e:
        write(m.path("n" * 256), b"x")
    assert e.value.errno == errno.ENAMETOOLONG
    for c in m.children:
        assert not [n for n in os.listdir(c) if n.startswith("nnn")], c


def open_deep(root, names, create=False):
    """Walk (or make) root/names[0]/names[1]/... with *at() calls, so the
    whole path may be longer than PATH_MAX. Returns an O_DIRECTORY fd."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        if create:
            os.mkdir(name, dir_fd=fd)
        nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


def test_paths_longer_than_path_max_work_on_the_mount(backing, quorum):
    # README "Behaving like a local filesystem": no path-length ceiling of our own. 25 levels of 200-byte
    # names make a path of over 5000 bytes below the mount.
    m = quorum()
    names = ["%02d" % i + "d" * 198 for i in range(25)]
    fd = open_deep(m.mnt, names, create=True)
    try:
        f = os.open("f", os.O_CREAT | os.O_RDWR, 0o644, dir_fd=fd)
        try:
            os.write(f, b"deep")
            assert os.pread(f, 4, 0) == b"deep"
        finally:
            os.close(f)
    finally:
        os.close(fd)
    for c in m.children:
        fd = open_deep(c, names)
        try:
            f = os.open("f", os.O_RDONLY, dir_fd=fd)
            try:
                assert os.read(f, 100) == b"deep", c
            finally:
                os.close(f)
        finally:
            os.close(fd)


def test_a_symlink_target_of_4095_bytes_reads_back_whole(quorum):
    m = quorum()
    target = "t" * 4095
    os.symlink(target, m.path("l"))
    assert os.readlink(m.path("l")) == target
    for p in children_of(m, "l"):
        assert os.readlink(p) == target, p


# --- symlinks ----------------------------------------------------------

def test_symlink_is_created_on_every_child_with_the_same_target(
        backing, quorum):
    m = quorum()
    os.symlink("some/../target", m.path("l"))
    assert os.readlink(m.path("l")) == "some/../target"
    for p in children_of(m, "l"):
        assert os.readlink(p) == "some/../target"
    assert stat.S_ISLNK(assert_same_metadata(m, "l").st_mode)


def test_symlink_resolves_to_a_file_on_the_mount(quorum):
    m = quorum()
    write(m.path("target"), b"via link")
    os.symlink("target", m.path("l"))
    assert read(m.path("l")) == b"via link"


def test_symlink_to_outside_is_shown_as_a_link_not_followed(quorum,
                                                            tmp_path):
    m = quorum()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), m.path("escape"))
    st = os.lstat(m.path("escape"))
    assert stat.S_ISLNK(st.st_mode)
    assert os.readlink(m.path("escape")) == str(outside)


def test_lchown_changes_the_link_and_not_its_target(backing, quorum):
    m = quorum()
    write(m.path("target"), b"t")
    os.symlink("target", m.path("l"))
    os.chown(m.path("l"), 1234, 1234, follow_symlinks=False)
    for p in children_of(m, "l"):
        assert (os.lstat(p).st_uid, os.lstat(p).st_gid) == (1234, 1234)
    for p in children_of(m, "target") + [m.path("target")]:
        assert (os.stat(p).st_uid, os.stat(p).st_gid) == (0, 0)


def test_utime_without_following_changes_the_link_and_not_its_target(
        backing, quorum):
    m = quorum()
    write(m.path("target"), b"t")
    os.symlink("target", m.path("l"))
    # Each child wrote the target at its own instant: compare each copy
    # with itself.
    targets = children_of(m, "target") + [m.path("target")]
    before = [os.stat(p).st_mtime_ns for p in targets]
    os.utime(m.path("l"), ns=(1_000_000_000, 2_000_000_000),
             follow_symlinks=False)
    for p in children_of(m, "l") + [m.path("l")]:
        assert os.lstat(p).st_mtime_ns == 2_000_000_000
    assert [os.stat(p).st_mtime_ns for p in targets] == before


def test_xattr_on_a_symlink_fails_as_on_the_child_and_spares_the_target(
        backing, quorum):
    m = quorum()
    probe = child_dir_probe(m)
    os.symlink("nowhere", probe)
    try:
        os.setxattr(probe, "user.k", b"v", follow_symlinks=False)
        child_errno = 0
    except OSError as e:
        child_errno = e.errno
    write(m.path("target"), b"t")
    os.symlink("target", m.path("l"))
    try:
        os.setxattr(m.path("l"), "user.k", b"v", follow_symlinks=False)
        mount_errno = 0
    except OSError as e:
        mount_errno = e.errno
    assert qfs.errno_name(mount_errno) == qfs.errno_name(child_errno)
    for p in children_of(m, "target"):
        assert "user.k" not in os.listxattr(p)


# --- hard links --------------------------------------------------------

def test_hard_link_shares_inode_and_counts_two_links(backing, quorum):
    m = quorum()
    write(m.path("a"), b"shared")
    os.link(m.path("a"), m.path("b"))
    sa, sb = os.stat(m.path("a")), os.stat(m.path("b"))
    assert sa.st_ino == sb.st_ino
    assert sa.st_nlink == sb.st_nlink == 2
    for pa, pb in zip(children_of(m, "a"), children_of(m, "b")):
        assert os.stat(pa).st_ino == os.stat(pb).st_ino
        assert os.stat(pa).st_nlink == 2


def test_write_through_one_hard_link_is_read_through_the_other(quorum):
    m = quorum()
    write(m.path("a"), b"before")
    os.link(m.path("a"), m.path("b"))
    fd = os.open(m.path("b"), os.O_WRONLY)
    try:
        os.pwrite(fd, b"AFTER!", 0)
    finally:
        os.close(fd)
    assert_content(m, "a", b"AFTER!")


def test_unlinking_one_hard_link_leaves_the_other_with_one_link(quorum):
    m = quorum()
    write(m.path("a"), b"x")
    os.link(m.path("a"), m.path("b"))
    os.unlink(m.path("a"))
    assert os.stat(m.path("b")).st_nlink == 1
    for p in children_of(m, "b"):
        assert os.stat(p).st_nlink == 1
    assert_content(m, "b", b"x")


def test_link_updates_ctime_of_the_file(backing, quorum):
    m = quorum()
    write(m.path("a"), b"x")
    before = os.stat(m.path("a")).st_ctime_ns
    wait_for_clock_past(before)
    os.link(m.path("a"), m.path("b"))
    assert os.stat(m.path("a")).st_ctime_ns > before


# --- chmod, chown, utimens ---------------------------------------------

def test_chmod_changes_mode_on_every_child(backing, quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.chmod(m.path("f"), 0o4751)
    st = assert_same_metadata(m, "f")
    assert stat.S_IMODE(st.st_mode) == 0o4751


def test_chown_changes_owner_on_every_child(backing, quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.chown(m.path("f"), 1234, 1234)
    st = assert_same_metadata(m, "f")
    assert (st.st_uid, st.st_gid) == (1234, 1234)


def test_chown_of_uid_only_keeps_the_group(quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.chown(m.path("f"), 0, 77)
    os.chown(m.path("f"), 1234, -1)
    st = assert_same_metadata(m, "f")
    assert (st.st_uid, st.st_gid) == (1234, 77)


def test_utime_sets_exact_nanosecond_times_on_every_child(backing, quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.utime(m.path("f"), ns=(1_500_000_000_123_456_789,
                              1_600_000_000_987_654_321))
    for p in children_of(m, "f") + [m.path("f")]:
        st = os.stat(p)
        assert st.st_atime_ns == 1_500_000_000_123_456_789, p
        assert st.st_mtime_ns == 1_600_000_000_987_654_321, p


def test_utime_omit_leaves_that_time_unchanged_on_every_child(
        backing, quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.utime(m.path("f"), ns=(1_000_000_000, 2_000_000_000))
    qfs.utimensat(m.path("f"), (3, 0), qfs.UTIME_OMIT)
    for p in children_of(m, "f") + [m.path("f")]:
        st = os.stat(p)
        assert (st.st_atime_ns, st.st_mtime_ns) == (3_000_000_000,
                                                    2_000_000_000), p


def test_utime_now_sets_current_time_and_omit_keeps_the_other(
        backing, quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.utime(m.path("f"), ns=(1_000_000_000, 2_000_000_000))
    start = time.time_ns() - 2_000_000_000
    qfs.utimensat(m.path("f"), qfs.UTIME_OMIT, qfs.UTIME_NOW)
    end = time.time_ns() + 2_000_000_000
    for p in children_of(m, "f") + [m.path("f")]:
        st = os.stat(p)
        assert st.st_atime_ns == 1_000_000_000, p
        assert start <= st.st_mtime_ns <= end, p


def test_utime_with_no_times_sets_both_to_now(quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.utime(m.path("f"), ns=(1_000_000_000, 2_000_000_000))
    start = time.time_ns() - 2_000_000_000
    os.utime(m.path("f"))
    for p in children_of(m, "f") + [m.path("f")]:
        st = os.stat(p)
        assert st.st_atime_ns >= start and st.st_mtime_ns >= start, p


# --- truncate ----------------------------------------------------------

def test_truncate_up_extends_with_zeros_on_every_child(backing, quorum):
    m = quorum()
    write(m.path("f"), b"abc")
    os.truncate(m.path("f"), 100000)
    assert_content(m, "f", b"abc" + bytes(100000 - 3))
    assert os.stat(m.path("f")).st_size == 100000


def test_truncate_down_cuts_content_on_every_child(backing, quorum):
    m = quorum()
    write(m.path("f"), b"0123456789" * 1000)
    os.truncate(m.path("f"), 15)
    assert_content(m, "f", b"012345678901234")
    assert os.stat(m.path("f")).st_size == 15


def test_ftruncate_through_an_open_file_reaches_every_child(quorum):
    m = quorum()
    write(m.path("f"), b"x" * 5000)
    fd = os.open(m.path("f"), os.O_RDWR)
    try:
        os.ftruncate(fd, 10)
        assert os.fstat(fd).st_size == 10
    finally:
        os.close(fd)
    assert_content(m, "f", b"x" * 10)


def test_open_with_o_trunc_empties_the_file_on_every_child(quorum):
    m = quorum()
    write(m.path("f"), b"x" * 5000)
    os.close(os.open(m.path("f"), os.O_WRONLY | os.O_TRUNC))
    assert_content(m, "f", b"")


# --- fallocate ---------------------------------------------------------

def allocated(path):
    return os.stat(path).st_blocks * 512


def test_posix_fallocate_allocates_blocks_on_every_child(backing, quorum):
    m = quorum()
    fd = os.open(m.path("f"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.posix_fallocate(fd, 0, MiB)
    finally:
        os.close(fd)
    assert_content(m, "f", bytes(MiB))
    for p in children_of(m, "f"):
        assert allocated(p) >= MiB, p


def test_fallocate_keep_size_allocates_without_growing_the_file(
        backing, quorum):
    m = quorum()
    write(m.path("f"), b"x" * 4096)
    fd = os.open(m.path("f"), os.O_RDWR)
    try:
        qfs.fallocate(fd, qfs.FALLOC_FL_KEEP_SIZE, 0, MiB)
    finally:
        os.close(fd)
    assert os.stat(m.path("f")).st_size == 4096
    assert_content(m, "f", b"x" * 4096)
    for p in children_of(m, "f"):
        assert allocated(p) >= MiB, p


def test_punch_hole_zeroes_the_range_and_frees_blocks_on_every_child(
        backing, quorum):
    m = quorum()
    write(m.path("f"), b"\xaa" * MiB)
    before = [allocated(p) for p in children_of(m, "f")]
    fd = os.open(m.path("f"), os.O_RDWR)
    try:
        qfs.fallocate(fd, qfs.FALLOC_FL_PUNCH_HOLE | qfs.FALLOC_FL_KEEP_SIZE,
                      256 * KiB, 256 * KiB)
    finally:
        os.close(fd)
    want = b"\xaa" * (256 * KiB) + bytes(256 * KiB) + b"\xaa" * (512 * KiB)
    assert_content(m, "f", want)
    for p, b in zip(children_of(m, "f"), before):
        assert allocated(p) <= b - 256 * KiB, p
        fd = os.open(p, os.O_RDONLY)
        try:
            assert os.lseek(fd, 0, os.SEEK_HOLE) == 256 * KiB, p
        finally:
            os.close(fd)


def test_zero_range_behaves_as_on_the_child_file_system(backing, quorum):
    # tmpfs has no FALLOC_FL_ZERO_RANGE (EOPNOTSUPP), ext4 has: the mount
    # must answer as its children do, never with a silent success.
    m = quorum()
    probe = child_dir_probe(m)
    write(probe, b"\xaa" * (64 * KiB))
    fd = os.open(probe, os.O_RDWR)
    try:
        qfs.fallocate(fd, qfs.FALLOC_FL_ZERO_RANGE, 4 * KiB, 8 * KiB)
        child_errno = 0
    except OSError as e:
        child_errno = e.errno
    finally:
        os.close(fd)

    write(m.path("f"), b"\xaa" * (64 * KiB))
    fd = os.open(m.path("f"), os.O_RDWR)
    try:
        qfs.fallocate(fd, qfs.FALLOC_FL_ZERO_RANGE, 4 * KiB, 8 * KiB)
        mount_errno = 0
    except OSError as e:
        mount_errno = e.errno
    finally:
        os.close(fd)
    assert qfs.errno_name(mount_errno) == qfs.errno_name(child_errno)
    if child_errno == 0:
        want = b"\xaa" * (4 * KiB) + bytes(8 * KiB) + b"\xaa" * (52 * KiB)
    else:
        want = b"\xaa" * (64 * KiB)
    assert_content(m, "f", want)


def zero_range(path, offset, length):
    fd = os.open(path, os.O_RDWR)
    try:
        qfs.fallocate(fd, qfs.FALLOC_FL_ZERO_RANGE, offset, length)
    finally:
        os.close(fd)


def test_zero_range_succeeds_when_a_quorum_of_children_supports_it(
        scratch_fs, quorum):
    # Two ext4 children can zero a range, the tmpfs one cannot: 2 of 3
    # is a quorum, so the caller sees success and the tmpfs child is
    # reported with its errno.
    tmpfs = scratch_fs("tmpfs")
    m = quorum(children=[scratch_fs("ext4"), scratch_fs("ext4"), tmpfs])
    write(m.path("f"), b"\xaa" * (64 * KiB))
    zero_range(m.path("f"), 4 * KiB, 8 * KiB)
    want = b"\xaa" * (4 * KiB) + bytes(8 * KiB) + b"\xaa" * (52 * KiB)
    assert read(m.path("f")) == want
    for p in children_of(m, "f")[:2]:
        assert read(p) == want, p
    m.wait_event("QUORUM_REPORT_BAD", lambda d: d.get("type") == "write" and
                 d.get("node-name") == str(tmpfs) and d.get("file") == "f" and
                 d.get("error") == os.strerror(errno.EOPNOTSUPP) and
                 (d.get("sector-num"), d.get("sectors-count")) == (8, 16))


def test_zero_range_fails_with_the_childrens_errno_without_a_quorum(
        scratch_fs, quorum):
    m = quorum(children=[scratch_fs("ext4"), scratch_fs("tmpfs"),
                         scratch_fs("tmpfs")])
    write(m.path("f"), b"\xaa" * (64 * KiB))
    with pytest.raises(OSError) as e:
        zero_range(m.path("f"), 4 * KiB, 8 * KiB)
    assert e.value.errno == errno.EOPNOTSUPP, qfs.errno_name(e.value.errno)
    m.wait_event("QUORUM_FAILURE", lambda d: d.get("reference") == "f" and
                 (d.get("sector-num"), d.get("sectors-count")) == (8, 16))


# --- SEEK_DATA / SEEK_HOLE ---------------------------------------------

def make_sparse(m, rel):
    """4 KiB of data at 0 and at 1 MiB, a hole between."""
    fd = os.open(m.path(rel), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.pwrite(fd, b"a" * 4096, 0)
        os.pwrite(fd, b"b" * 4096, MiB)
        os.fsync(fd)
    finally:
        os.close(fd)


def seek(path, offset, whence):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, offset, whence)
    finally:
        os.close(fd)


def test_seek_hole_and_seek_data_match_the_children(backing, quorum):
    m = quorum()
    make_sparse(m, "f")
    hole = seek(m.path("f"), 0, os.SEEK_HOLE)
    data = seek(m.path("f"), hole, os.SEEK_DATA)
    assert 4096 <= hole < MiB
    assert hole < data <= MiB
    for p in children_of(m, "f"):
        assert seek(p, 0, os.SEEK_HOLE) == hole, p
        assert seek(p, hole, os.SEEK_DATA) == data, p


def test_seek_data_past_the_last_data_fails_with_enxio(backing, quorum):
    m = quorum()
    make_sparse(m, "f")
    os.truncate(m.path("f"), 4 * MiB)
    with pytest.raises(OSError) as e:
        seek(m.path("f"), 2 * MiB, os.SEEK_DATA)
    assert e.value.errno == errno.ENXIO


def test_range_is_a_hole_only_where_every_child_has_a_hole(backing, quorum):
    m = quorum()
    make_sparse(m, "f")
    # Child 0 allocates zeros inside the hole: same content, but the range
    # is data there, so the mount must not call it a hole.
    fd = os.open(m.child_file(0, "f"), os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(4096), 512 * KiB)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert seek(m.path("f"), 4096, os.SEEK_DATA) <= 512 * KiB
    assert seek(m.path("f"), 512 * KiB, os.SEEK_HOLE) > 512 * KiB


# --- fsync, statfs -----------------------------------------------------

def test_fsync_and_fdatasync_succeed_after_a_write(backing, quorum):
    m = quorum()
    fd = os.open(m.path("f"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    assert_content(m, "f", b"durable")
    assert not m.events_named("QUORUM_REPORT_BAD")


def test_fsync_of_a_directory_succeeds(quorum):
    m = quorum()
    os.mkdir(m.path("d"))
    fd = os.open(m.path("d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_statvfs_reports_the_children_file_system(backing, quorum):
    m = quorum()
    mnt = os.statvfs(m.mnt)
    child = os.statvfs(m.children[0])
    assert mnt.f_frsize * mnt.f_blocks == child.f_frsize * child.f_blocks
    slack = 4 * MiB
    assert abs(mnt.f_frsize * mnt.f_bavail -
               child.f_frsize * child.f_bavail) <= slack
    assert mnt.f_namemax > 0


def test_statvfs_reports_the_smallest_free_space_of_the_children(
        scratch_fs, quorum):
    children = [scratch_fs("tmpfs", size)
                for size in ("64M", "16M", "32M")]
    m = quorum(children=children)
    mnt = os.statvfs(m.mnt)
    free = [os.statvfs(c) for c in children]
    smallest = min(s.f_frsize * s.f_bavail for s in free)
    assert abs(mnt.f_frsize * mnt.f_bavail - smallest) <= 64 * KiB


# --- a child's errno reaches the caller ----------------------------------

def test_write_to_full_children_fails_with_enospc(scratch_fs, quorum):
    # ENOSPC must reach a VM unchanged: QEMU pauses the guest on ENOSPC
    # but fails its disk on EIO.
    m = quorum(children=[scratch_fs("tmpfs", "1M") for _ in range(3)])
    chunk = b"z" * (64 * KiB)
    fd = os.open(m.path("f"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        with pytest.raises(OSError) as e:
            for _ in range(64):
                os.write(fd, chunk)
    finally:
        os.close(fd)
    assert e.value.errno == errno.ENOSPC, qfs.errno_name(e.value.errno)
    m.wait_event("QUORUM_REPORT_BAD", lambda d: d.get("type") == "write" and
                 d.get("error") == os.strerror(errno.ENOSPC) and
                 d.get("file") == "f")


@pytest.fixture
def read_only_binds(tmp_path):
    """Three bind mounts to use as children; ro() turns them read-only."""
    binds = []
    for i in range(3):
        src, dst = tmp_path / ("src%d" % i), tmp_path / ("bind%d" % i)
        src.mkdir()
        dst.mkdir()
        subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
        binds.append(dst)

    def ro():
        # FUSE_RELEASE is asynchronous: the daemon may still hold a child
        # file open for writing for a moment after close(), and until then
        # the remount is refused as busy.
        for dst in binds:
            qfs.wait_for(lambda: subprocess.run(
                ["mount", "-o", "remount,bind,ro", str(dst)],
                stderr=subprocess.DEVNULL).returncode == 0,
                10 * qfs.deadline_scale(), "%s to turn read-only" % dst)

    yield binds, ro
    for dst in binds:
        if qfs.is_mounted(dst):
            subprocess.run(["umount", "-l", str(dst)], check=True)


def test_create_on_read_only_children_fails_with_erofs(read_only_binds,
                                                        quorum):
    binds, ro = read_only_binds
    m = quorum(children=binds)
    write(m.path("existing"), b"x")
    ro()
    with pytest.raises(OSError) as e:
        write(m.path("new"), b"x")
    assert e.value.errno == errno.EROFS, qfs.errno_name(e.value.errno)
    with pytest.raises(OSError) as e:
        os.open(m.path("existing"), os.O_WRONLY | os.O_APPEND)
    assert e.value.errno == errno.EROFS, qfs.errno_name(e.value.errno)


@pytest.fixture
def children_with_inner_mounts(tmp_path):
    """Three children, each with a tmpfs mounted on its "sub"."""
    children = []
    for i in range(3):
        sub = tmp_path / ("c%d" % i) / "sub"
        sub.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs",
                        str(sub)], check=True)
        children.append(sub.parent)
    yield children
    for c in children:
        if qfs.is_mounted(c / "sub"):
            subprocess.run(["umount", "-l", str(c / "sub")], check=True)


def test_rename_and_link_across_a_mount_inside_the_children_fail_with_exdev(
        children_with_inner_mounts, quorum):
    m = quorum(children=children_with_inner_mounts)
    write(m.path("a"), b"x")
    write(m.path("sub/inner"), b"inside")
    assert_content(m, "sub/inner", b"inside")
    with pytest.raises(OSError) as e:
        os.rename(m.path("a"), m.path("sub/b"))
    assert e.value.errno == errno.EXDEV, qfs.errno_name(e.value.errno)
    with pytest.raises(OSError) as e:
        os.link(m.path("a"), m.path("sub/b"))
    assert e.value.errno == errno.EXDEV, qfs.errno_name(e.value.errno)
    assert_content(m, "a", b"x")
    assert_absent(m, "sub/b")


# --- extended attributes -----------------------------------------------

def test_setxattr_is_visible_on_the_mount_and_every_child(backing, quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.setxattr(m.path("f"), "user.color", b"blue")
    assert os.getxattr(m.path("f"), "user.color") == b"blue"
    for p in children_of(m, "f"):
        assert os.getxattr(p, "user.color") == b"blue", p


def test_listxattr_lists_the_same_names_as_every_child(backing, quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.setxattr(m.path("f"), "user.a", b"1")
    os.setxattr(m.path("f"), "user.b", b"")
    names = sorted(os.listxattr(m.path("f")))
    assert {"user.a", "user.b"} <= set(names)
    for p in children_of(m, "f"):
        assert sorted(os.listxattr(p)) == names, p


def test_removexattr_removes_it_from_every_child(backing, quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.setxattr(m.path("f"), "user.gone", b"1")
    os.removexattr(m.path("f"), "user.gone")
    for p in children_of(m, "f") + [m.path("f")]:
        assert "user.gone" not in os.listxattr(p), p


def test_getxattr_of_a_missing_attribute_fails_with_enodata(quorum):
    m = quorum()
    write(m.path("f"), b"x")
    with pytest.raises(OSError) as e:
        os.getxattr(m.path("f"), "user.none")
    assert e.value.errno == errno.ENODATA


def test_setxattr_create_of_an_existing_attribute_fails_with_eexist(quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.setxattr(m.path("f"), "user.k", b"1")
    with pytest.raises(OSError) as e:
        os.setxattr(m.path("f"), "user.k", b"2", os.XATTR_CREATE)
    assert e.value.errno == errno.EEXIST
    for p in children_of(m, "f"):
        assert os.getxattr(p, "user.k") == b"1", p


def test_xattr_on_a_directory_reaches_every_child(quorum):
    m = quorum()
    os.mkdir(m.path("d"))
    os.setxattr(m.path("d"), "user.dir", b"yes")
    for p in children_of(m, "d"):
        assert os.getxattr(p, "user.dir") == b"yes", p


def test_a_large_xattr_value_is_accepted_or_refused_as_the_child_does(
        backing, quorum):
    # ext4 keeps a value in one block and refuses 60 KB; tmpfs takes it.
    m = quorum()
    value = os.urandom(60000)
    probe = child_dir_probe(m)
    write(probe, b"")
    try:
        os.setxattr(probe, "user.big", value)
        child_errno = 0
    except OSError as e:
        child_errno = e.errno
    write(m.path("f"), b"")
    try:
        os.setxattr(m.path("f"), "user.big", value)
        mount_errno = 0
    except OSError as e:
        mount_errno = e.errno
    assert qfs.errno_name(mount_errno) == qfs.errno_name(child_errno)
    if child_errno == 0:
        for p in children_of(m, "f") + [m.path("f")]:
            assert os.getxattr(p, "user.big") == value, p


def test_many_xattr_names_are_all_listed(quorum):
    m = quorum()
    write(m.path("f"), b"")
    names = {"user.attr-%03d-%s" % (i, "x" * 60) for i in range(40)}
    for n in names:
        os.setxattr(m.path("f"), n, b"1")
    assert set(os.listxattr(m.path("f"))) >= names
    for p in children_of(m, "f"):
        assert set(os.listxattr(p)) >= names, p


# --- special files -----------------------------------------------------

def test_mkfifo_creates_a_fifo_on_every_child(backing, quorum):
    m = quorum()
    os.mkfifo(m.path("p"), 0o600)
    st = assert_same_metadata(m, "p")
    assert stat.S_ISFIFO(st.st_mode)


def test_mknod_creates_a_character_device_on_every_child(backing, quorum):
    m = quorum()
    os.mknod(m.path("null"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    st = assert_same_metadata(m, "null")
    assert stat.S_ISCHR(st.st_mode)
    for p in children_of(m, "null") + [m.path("null")]:
        assert os.lstat(p).st_rdev == os.makedev(1, 3), p


# --- readdir -----------------------------------------------------------

RESERVED = {".control", ".children", ".quorumfs"}


def test_root_listing_equals_every_child_listing(backing, quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.mkdir(m.path("d"))
    os.symlink("f", m.path("l"))
    listed = set(os.listdir(m.mnt)) - RESERVED
    assert listed == {"f", "d", "l"}
    for c in m.children:
        assert set(os.listdir(c)) - RESERVED == listed, c


def test_metadata_directory_is_never_listed_or_found_on_the_mount(quorum):
    m = quorum()
    assert ".quorumfs" not in os.listdir(m.mnt)
    assert not os.path.lexists(m.path(".quorumfs"))


def test_large_directory_listing_equals_every_child_listing(backing,
                                                            quorum):
    # Enough long names to take several readdir replies.
    m = quorum()
    os.mkdir(m.path("d"))
    names = {"entry-%04d-%s" % (i, "n" * 100) for i in range(300)}
    for n in names:
        os.close(os.open(m.path("d/" + n), os.O_CREAT | os.O_WRONLY, 0o644))
    assert set(os.listdir(m.path("d"))) == names
    for p in children_of(m, "d"):
        assert set(os.listdir(p)) == names, p


def test_listing_reports_the_type_of_each_entry(quorum):
    m = quorum()
    write(m.path("f"), b"x")
    os.mkdir(m.path("d"))
    os.symlink("f", m.path("l"))
    kinds = {e.name: (e.is_dir(follow_symlinks=False),
                      e.is_symlink()) for e in os.scandir(m.mnt)
             if e.name not in RESERVED}
    assert kinds == {"f": (False, False), "d": (True, False),
                     "l": (False, True)}


# --- reserved names ----------------------------------------------------

def _create(path):
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))


CREATORS = {
    "create": _create,
    "mkdir": os.mkdir,
    "symlink": lambda p: os.symlink("target", p),
    "mkfifo": os.mkfifo,
}


def assert_reserved_name_untouched(m, name):
    """No child got an entry we asked for under a reserved name; the only
    thing allowed there is a child's own metadata directory."""
    for p in children_of(m, name):
        if name == ".quorumfs" and os.path.lexists(p):
            assert os.path.isdir(p) and not os.path.islink(p), p
        else:
            assert not os.path.lexists(p), p
    if name == ".quorumfs":
        assert not os.path.lexists(m.path(name))


@pytest.mark.parametrize("name", sorted(RESERVED))
@pytest.mark.parametrize("op", sorted(CREATORS))
def test_reserved_name_cannot_be_created_at_the_root(quorum, name, op):
    m = quorum()
    with pytest.raises(OSError):
        CREATORS[op](m.path(name))
    assert_reserved_name_untouched(m, name)


@pytest.mark.parametrize("name", sorted(RESERVED))
@pytest.mark.parametrize("op", ["rename", "link"])
def test_reserved_name_cannot_be_the_target_of_rename_or_link(quorum, name,
                                                             op):
    m = quorum()
    write(m.path("f"), b"mine")
    with pytest.raises(OSError):
        (os.rename if op == "rename" else os.link)(m.path("f"), m.path(name))
    assert_content(m, "f", b"mine")
    assert_reserved_name_untouched(m, name)


def test_a_childs_own_control_file_and_metadata_are_hidden(tmp_path,
                                                          quorum):
    # README "Runtime control" and "The record": .control is never backed by a child, and a child's
    # .quorumfs is never shown on the mount.
    children = []
    for i in range(3):
        c = tmp_path / ("c%d" % i)
        (c / ".quorumfs").mkdir(parents=True)
        (c / ".quorumfs" / "planted").write_bytes(b"planted")
        (c / ".control").write_bytes(b"planted")
        children.append(c)
    m = quorum(children=children)
    assert ".quorumfs" not in os.listdir(m.mnt)
    assert not os.path.lexists(m.path(".quorumfs/planted"))
    assert os.listdir(m.mnt).count(".control") <= 1
    try:
        assert read(m.path(".control")) != b"planted"
    except FileNotFoundError:
        pass


# --- O_DIRECT ----------------------------------------------------------

def direct_open(path):
    return os.open(path, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)


def aligned(data):
    """An anonymous mapping is page-aligned, as O_DIRECT wants."""
    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    return buf


def test_o_direct_aligned_writes_and_reads_round_trip(backing, quorum):
    m = quorum()
    a, b = os.urandom(4096), os.urandom(4096)
    fd = direct_open(m.path("img"))
    try:
        assert os.pwritev(fd, [aligned(a)], 0) == 4096
        assert os.pwritev(fd, [aligned(b)], 8192) == 4096
        out = mmap.mmap(-1, 3 * 4096)
        assert os.preadv(fd, [out], 0) == 3 * 4096
        assert out[:] == a + bytes(4096) + b
    finally:
        os.close(fd)
    assert_content(m, "img", a + bytes(4096) + b)
    assert not [e for e in m.events() if e["event"].startswith("QUORUM_")]


def test_o_direct_large_aligned_write_round_trips(backing, quorum):
    m = quorum()
    data = os.urandom(MiB)
    fd = direct_open(m.path("img"))
    try:
        assert os.pwritev(fd, [aligned(data)], 64 * KiB) == MiB
        out = mmap.mmap(-1, MiB)
        assert os.preadv(fd, [out], 64 * KiB) == MiB
        assert out[:] == data
    finally:
        os.close(fd)
    assert_content(m, "img", bytes(64 * KiB) + data)


def test_o_direct_read_of_a_short_file_returns_only_its_bytes(backing,
                                                             quorum):
    m = quorum()
    write(m.path("img"), b"q" * 1000)
    fd = os.open(m.path("img"), os.O_RDONLY | os.O_DIRECT)
    try:
        out = mmap.mmap(-1, 8192)
        assert os.preadv(fd, [out], 0) == 1000
        assert out[:1000] == b"q" * 1000
        assert os.preadv(fd, [out], 4096) == 0
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["buffer", "offset", "length"])
def test_o_direct_unaligned_write_succeeds_or_fails_with_einval(
        backing, quorum, kind):
    m = quorum()
    data = os.urandom(4096)
    buf = mmap.mmap(-1, 2 * 4096)
    offset, length, start = 0, 4096, 0
    if kind == "buffer":
        start = 1
    elif kind == "offset":
        offset = 100
    else:
        length = 1000
    buf[start:start + length] = data[:length]
    fd = direct_open(m.path("img"))
    try:
        n = os.pwritev(fd, [memoryview(buf)[start:start + length]], offset)
    except OSError as e:
        assert e.errno == errno.EINVAL, qfs.errno_name(e.errno)
        return
    finally:
        os.close(fd)
    assert n == length
    assert_content(m, "img", bytes(offset) + data[:length])


# --- ownership of what a non-root caller creates -------------------------

CALLER = 1234


def public_dir(m, rel="pub"):
    os.mkdir(m.path(rel))
    os.chmod(m.path(rel), 0o777)
    return m.path(rel)


CREATE_ALL = """
import os
with open("f", "w") as f:
    f.write("by caller")
os.mkdir("d")
os.symlink("f", "l")
os.mkfifo("p")
"""


def test_entries_made_by_a_non_root_caller_are_owned_by_the_caller(
        backing, quorum):
    m = quorum(opts=["allow_other", "default_permissions"])
    qfs.run_as(CALLER, CALLER, public_dir(m), CREATE_ALL)
    for name in ("f", "d", "l", "p"):
        for p in children_of(m, "pub/" + name) + [m.path("pub/" + name)]:
            st = os.lstat(p)
            assert (st.st_uid, st.st_gid) == (CALLER, CALLER), p
    assert_content(m, "pub/f", b"by caller")


def test_the_caller_umask_applies_to_new_entries(backing, quorum):
    m = quorum(opts=["allow_other", "default_permissions"])
    qfs.run_as(CALLER, CALLER, public_dir(m), CREATE_ALL, umask=0o002)
    for name, mode in (("f", 0o664), ("d", 0o775), ("p", 0o664)):
        st = assert_same_metadata(m, "pub/" + name)
        assert stat.S_IMODE(st.st_mode) == mode, name


def test_entries_in_a_setgid_directory_inherit_its_group(backing, quorum):
    m = quorum(opts=["allow_other", "default_permissions"])
    sg = public_dir(m, "sg")
    os.chown(sg, 0, 4321)
    os.chmod(sg, 0o2777)
    qfs.run_as(CALLER, CALLER, sg, CREATE_ALL)
    for name in ("f", "d", "p"):
        st = assert_same_metadata(m, "sg/" + name)
        assert (st.st_uid, st.st_gid) == (CALLER, 4321), name
    assert assert_same_metadata(m, "sg/d").st_mode & stat.S_ISGID


def test_default_permissions_deny_a_caller_without_access(quorum):
    m = quorum(opts=["allow_other", "default_permissions"])
    pub = public_dir(m)
    write(m.path("pub/secret"), b"root only", mode=0o600)
    out = qfs.run_as(CALLER, CALLER, pub, """
try:
    open("secret", "rb").read()
    print("read")
except PermissionError:
    print("EACCES")
""")
    assert out.strip() == "EACCES"


# --- mmap --------------------------------------------------------------

def test_shared_mmap_of_a_file_on_the_mount_fails_with_enodev(quorum):
    # Files are in direct-I/O mode and libfuse 3.14 cannot ask for
    # FUSE_DIRECT_IO_ALLOW_MMAP, so the kernel refuses MAP_SHARED with
    # ENODEV ("No such device"), read-only mappings included.
    m = quorum()
    write(m.path("f"), b"x" * 4096)
    fd = os.open(m.path("f"), os.O_RDWR)
    try:
        for prot in (mmap.PROT_READ | mmap.PROT_WRITE, mmap.PROT_READ):
            with pytest.raises(OSError) as e:
                mmap.mmap(fd, 4096, mmap.MAP_SHARED, prot)
            assert e.value.errno == errno.ENODEV
    finally:
        os.close(fd)


def test_private_read_mmap_returns_the_file_content(quorum):
    m = quorum()
    data = os.urandom(3 * 4096)
    write(m.path("f"), data)
    fd = os.open(m.path("f"), os.O_RDONLY)
    try:
        with mmap.mmap(fd, 0, mmap.MAP_PRIVATE, mmap.PROT_READ) as mp:
            assert mp[:] == data
    finally:
        os.close(fd)


def test_open_with_o_nofollow_works_on_a_regular_file(quorum):
    # The daemon reopens a child's file through /proc/self/fd, a link:
    # passing the caller's O_NOFOLLOW on would make that ELOOP.
    m = quorum()
    qfs.write_file(m.path("f"), b"data")
    fd = os.open(m.path("f"), os.O_RDWR | os.O_NOFOLLOW)
    try:
        assert os.pread(fd, 4, 0) == b"data"
        os.pwrite(fd, b"DATA", 0)
    finally:
        os.close(fd)
    assert qfs.read_file(m.path("f")) == b"DATA"
