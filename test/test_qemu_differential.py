"""The mount against QEMU's quorum driver (README "How requests
are decided").

Each image set is a few raw 1 MiB images with seeded corruption. For every
threshold the same requests (4 KiB and 64 KiB, aligned, O_DIRECT) go
through qemu-io on a quorum of the images and through a mount whose
children hold the same images:

- wherever QEMU returns data, the mount returns the same bytes;
- wherever QEMU fails, the mount fails with EIO too, unless every 4 KiB
  block of the request has a threshold majority: then it rescues the read
  with exactly the per-block majority (beyond QEMU: README, Per-block rescue);
- the event log holds the REPORT_BAD and QUORUM_FAILURE events QEMU's
  rules give, as far as its 1 s throttle lets them through.

A Python model of QEMU's vote (qemu_util) is checked against qemu-io on
every request, and predicts the rescued bytes and the events.
"""

import errno
import os
import random
import subprocess

import pytest

import qemu_util
import qfs
from qemu_util import direct_pread, expect_read, read_result

KiB = 1024
IMAGE_SIZE = 1024 * KiB
FILE = "disk.img"

# 4 KiB reads over the first 128 KiB, where the corruption is, and at the
# end; 64 KiB reads aligned to 64 KiB and straddling a 64 KiB boundary.
READS = ([(off, 4 * KiB) for off in range(0, 128 * KiB, 4 * KiB)] +
         [(IMAGE_SIZE - k * 4 * KiB, 4 * KiB) for k in (3, 2, 1)] +
         [(off, 64 * KiB) for off in (0, 32 * KiB, 64 * KiB, 96 * KiB,
                                      IMAGE_SIZE - 64 * KiB)])


# --- image sets ----------------------------------------------------------

def corrupt(img, off, length, rng):
    """Change every byte of img[off:off + length] (xor with odd bytes)."""
    noise = rng.randbytes(length)
    img[off:off + length] = bytes(a ^ (b | 1) for a, b in
                                  zip(img[off:off + length], noise))


def same_corruption(imgs, which, off, length, rng):
    """Give the children in `which` one identical corrupt version."""
    bad = bytearray(imgs[which[0]])
    corrupt(bad, off, length, rng)
    for i in which:
        imgs[i][off:off + length] = bad[off:off + length]


class ImageSet:
    def __init__(self, name, n, damage, qemu_opens=True):
        self.name = name
        self.n = n
        self.damage = damage  # damage(imgs, rng) edits the bytearrays
        self.qemu_opens = qemu_opens

    def build(self):
        rng = random.Random("qfs-differential-" + self.name)
        base = rng.randbytes(IMAGE_SIZE)
        imgs = [bytearray(base) for _ in range(self.n)]
        self.damage(imgs, rng)
        return [bytes(i) for i in imgs]


def nothing(imgs, rng):
    pass


def one_child_one_block(imgs, rng):
    corrupt(imgs[1], 8 * KiB, 4 * KiB, rng)


def one_child_one_byte(imgs, rng):
    corrupt(imgs[-1], 20000, 1, rng)


def two_identical(imgs, rng):
    same_corruption(imgs, [0, 2], 16 * KiB, 4 * KiB, rng)


def two_differ_in_one_place(imgs, rng):
    corrupt(imgs[0], 24 * KiB, 4 * KiB, rng)
    corrupt(imgs[1], 24 * KiB, 4 * KiB, rng)


def disjoint(imgs, rng):
    # Child i is corrupt in 4 KiB block 2i+1: every block keeps an
    # n-1 majority, but a 64 KiB read over several of them has no
    # whole-request majority.
    for i, img in enumerate(imgs):
        corrupt(img, (2 * i + 1) * 4 * KiB, 4 * KiB, rng)


def disjoint_wide(imgs, rng):
    # Child i is corrupt in every block b with b % n == i, over the first
    # 128 KiB, in runs of various lengths: every 64 KiB read has no
    # whole-request majority, every block an n-1 majority.
    n = len(imgs)
    for b in range(32):
        off = b * 4 * KiB + rng.randrange(0, 3 * KiB)
        corrupt(imgs[b % n], off, rng.randrange(1, 4 * KiB - off % (4 * KiB)),
                rng)


def differ_within_one_block(imgs, rng):
    # Different sectors of the same 4 KiB block: the block itself has no
    # majority, so neither rule rescues a read that covers it.
    corrupt(imgs[0], 44 * KiB + 100, 100, rng)
    corrupt(imgs[1], 44 * KiB + 3000, 600, rng)


def across_boundaries(imgs, rng):
    # Straddles the 4 KiB and the 64 KiB boundary at 64 KiB, and a second
    # child is corrupt at the end of the image.
    corrupt(imgs[1], 62 * KiB, 4 * KiB, rng)
    corrupt(imgs[2], IMAGE_SIZE - 6 * KiB, 100, rng)


def truncated(imgs, rng):
    del imgs[-1][IMAGE_SIZE - 40000:]


def two_truncated_differently(imgs, rng):
    del imgs[-1][IMAGE_SIZE - 40000:]
    del imgs[-2][IMAGE_SIZE - 5000:]


def tie_two_against_two(imgs, rng):
    # Versions: clean at 0 and 1, corrupt at 2 and 3. QEMU's tie goes to
    # the version first seen at the highest index: the corrupt one.
    same_corruption(imgs, [2, 3], 12 * KiB, 4 * KiB, rng)


def tie_interleaved(imgs, rng):
    # Corrupt at 0 and 3, clean at 1 and 2: clean is first seen later.
    same_corruption(imgs, [0, 3], 12 * KiB, 4 * KiB, rng)


def three_corrupt_identically(imgs, rng):
    same_corruption(imgs, [0, 1, 2], 16 * KiB, 4 * KiB, rng)


def two_two_one(imgs, rng):
    same_corruption(imgs, [0, 1], 28 * KiB, 4 * KiB, rng)
    same_corruption(imgs, [2, 3], 28 * KiB, 4 * KiB, rng)


def all_differ_in_one_place(imgs, rng):
    for img in imgs:
        corrupt(img, 40 * KiB, 4 * KiB, rng)


IMAGE_SETS = [
    ImageSet("n3-clean", 3, nothing),
    ImageSet("n3-one-child-one-block", 3, one_child_one_block),
    ImageSet("n3-one-child-one-byte", 3, one_child_one_byte),
    ImageSet("n3-two-identical", 3, two_identical),
    ImageSet("n3-two-differ-in-one-place", 3, two_differ_in_one_place),
    ImageSet("n3-disjoint", 3, disjoint),
    ImageSet("n3-disjoint-wide", 3, disjoint_wide),
    ImageSet("n3-differ-within-one-block", 3, differ_within_one_block),
    ImageSet("n3-across-boundaries", 3, across_boundaries),
    ImageSet("n3-all-differ-in-one-place", 3, all_differ_in_one_place),
    ImageSet("n3-truncated", 3, truncated, qemu_opens=False),
    ImageSet("n4-tie-two-against-two", 4, tie_two_against_two),
    ImageSet("n4-tie-interleaved", 4, tie_interleaved),
    ImageSet("n5-clean", 5, nothing),
    ImageSet("n5-one-child-one-block", 5, one_child_one_block),
    ImageSet("n5-two-identical", 5, two_identical),
    ImageSet("n5-three-corrupt-identically", 5, three_corrupt_identically),
    ImageSet("n5-two-differ-in-one-place", 5, two_differ_in_one_place),
    ImageSet("n5-two-two-one", 5, two_two_one),
    ImageSet("n5-disjoint", 5, disjoint),
    ImageSet("n5-disjoint-wide", 5, disjoint_wide),
    ImageSet("n5-truncated-two", 5, two_truncated_differently,
             qemu_opens=False),
]


# --- helpers -------------------------------------------------------------

def make_children(base, imgs, enrol=True):
    """One child directory per image, each holding it as FILE. enrol:
    make them one set first, so that the mount accepts them differing."""
    dirs = []
    for i in range(len(imgs)):
        d = os.path.join(str(base), "c%d" % i)
        os.makedirs(d)
        dirs.append(d)
    if enrol:
        qfs.enrol(dirs, os.path.join(str(base), "enrol-%d" % len(imgs)))
    for d, img in zip(dirs, imgs):
        with open(os.path.join(d, FILE), "wb") as f:
            f.write(img)
    return dirs


def size_has_quorum(imgs, threshold):
    sizes = [len(i) for i in imgs]
    return max(sizes.count(s) for s in sizes) >= threshold


def show(result):
    if isinstance(result, int):
        return errno.errorcode.get(result, str(result))
    if isinstance(result, str):
        return "qemu: " + result
    return "%d bytes" % len(result)


def read_mount(m, reads):
    """Every read of reads through the mount, O_DIRECT, in order: bytes or
    an errno each. None when the file cannot even be opened; then
    open_error is that errno. Also returns how many log events came before
    the first read: opening a file whose children disagree on its size
    reports them (sector 0, count 0), and those reports must not take the
    reads' place in the throttle windows, so the reads start once every
    window has closed."""
    try:
        fd = os.open(m.path(FILE), os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        return None, e.errno, 0
    try:
        before = qemu_util.wait_events_quiet(m)
        return [read_result(fd, off, length) for off, length in reads], \
            None, before
    finally:
        os.close(fd)


# --- the differential test -----------------------------------------------

@pytest.mark.timeout(150)
@pytest.mark.parametrize("case", IMAGE_SETS, ids=lambda c: c.name)
def test_mount_reads_what_qemu_reads_and_rescues_only_per_block_majorities(
        case, ext4_dir, quorum):
    imgs = case.build()
    dirs = make_children(ext4_dir, imgs)
    files = [os.path.join(d, FILE) for d in dirs]
    problems = []
    tally = {"whole": 0, "blocks": 0, "failed": 0}

    for threshold in range(1, case.n + 1):
        where = "threshold=%d" % threshold
        qemu = qemu_util.qemu_io_reads(
            qemu_util.quorum_spec(files, threshold), READS)
        if not case.qemu_opens:
            # QEMU demands equal child lengths (quorum_getlength).
            assert qemu.returncode != 0 and \
                "Could not refresh total sector count" in qemu.stderr, \
                qemu.stderr
        else:
            # qemu-io exits 1 when a command failed; every read must
            # still have printed its result.
            assert len(qemu.results) == len(READS), qemu.stderr

        m = quorum(children=dirs, threshold=threshold)
        got, open_error, before = read_mount(m, READS)
        m.unmount()
        events = m.events()[before:]

        if got is None:
            # No size has a quorum of children: stat, hence open, fails.
            assert not size_has_quorum(imgs, threshold), \
                "%s: open failed with %s" % (where, show(open_error))
            assert open_error == errno.EIO, where
            continue
        assert size_has_quorum(imgs, threshold), \
            "%s: opened although no size has a quorum" % where

        expected_events = []
        for k, (off, length) in enumerate(READS):
            answers = [img[off:off + length] for img in imgs]
            want = expect_read(answers, threshold, off, length, FILE, dirs)
            expected_events += want.events
            tally[want.how] += 1
            what = "%s read %d+%d" % (where, off, length)

            if case.qemu_opens:
                q = qemu.results[k]
                # The model must be QEMU's vote before it predicts more.
                if want.how == "whole":
                    if q != want.data:
                        problems.append("%s: model says %s, qemu %s" % (
                            what, show(want.data), show(q)))
                elif q != "Input/output error":
                    problems.append("%s: model says QEMU fails, qemu gave "
                                    "%s" % (what, show(q)))
                if isinstance(q, bytes) and got[k] != q:
                    problems.append("%s: qemu returned data, mount %s%s" % (
                        what, show(got[k]),
                        " (different bytes)" if isinstance(got[k], bytes)
                        else ""))
            if got[k] != want.data:
                problems.append("%s (%s): mount %s, expected %s%s" % (
                    what, want.how, show(got[k]), show(want.data),
                    " (different bytes)" if isinstance(got[k], bytes) and
                    isinstance(want.data, bytes) else ""))

        for p in qemu_util.throttled_mismatches(events, expected_events):
            problems.append("%s events: %s" % (where, p))

    print("%s: %s" % (case.name, tally))
    assert not problems, "\n".join(problems[:40])


def test_image_sets_exercise_every_outcome():
    """The sets above are worth running only if, between them, reads are
    answered by the whole vote, rescued per block, and refused."""
    seen = set()
    for case in IMAGE_SETS:
        imgs = case.build()
        for threshold in range(1, case.n + 1):
            if not size_has_quorum(imgs, threshold):
                continue
            for off, length in READS:
                answers = [img[off:off + length] for img in imgs]
                seen.add(expect_read(answers, threshold, off, length, FILE,
                                     list(range(case.n))).how)
    assert seen == {"whole", "blocks", "failed"}


# --- a truncated child: QEMU refuses it, the mount votes the size ------------

def test_stat_shows_the_majority_size_and_reports_the_truncated_child(
        ext4_dir, quorum):
    imgs = ImageSet("n3-truncated", 3, truncated).build()
    dirs = make_children(ext4_dir, imgs)
    m = quorum(children=dirs, threshold=2)
    assert os.stat(m.path(FILE)).st_size == IMAGE_SIZE
    # README: the size is "the size a quorum of children agree on",
    # and a size that lost the vote is reported.
    m.wait_event("QUORUM_REPORT_BAD", lambda d: d["node-name"] == dirs[2],
                 timeout=5)


def test_stat_without_a_size_quorum_fails_with_eio_and_an_event(
        ext4_dir, quorum):
    imgs = ImageSet("n3-truncated", 3, truncated).build()
    dirs = make_children(ext4_dir, imgs)
    m = quorum(children=dirs, threshold=3)
    with pytest.raises(OSError) as e:
        os.stat(m.path(FILE))
    assert e.value.errno == errno.EIO
    # Every error a caller sees has an event explaining
    # it; a failed vote is a QUORUM_FAILURE.
    m.wait_event("QUORUM_FAILURE", lambda d: d["reference"] == FILE,
                 timeout=5)


# --- rewrite-corrupted ----------------------------------------------------

REWRITE_SETS = [c for c in IMAGE_SETS if c.qemu_opens and
                c.name not in ("n3-clean", "n5-clean")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", REWRITE_SETS, ids=lambda c: c.name)
def test_rewrite_corrupted_repairs_exactly_what_qemu_repairs(
        case, ext4_dir, quorum):
    """QEMU writes the winner over each loser's copy of the request's
    bytes, and nothing for a read that failed its vote. A read the mount
    rescued per block is not repaired either, so after the same reads the
    children of both hold the same bytes."""
    imgs = case.build()
    threshold = case.n // 2 + 1
    for side in ("qemu", "mount"):
        os.mkdir(os.path.join(str(ext4_dir), side))
    qemu_dirs = make_children(os.path.join(str(ext4_dir), "qemu"), imgs,
                              enrol=False)
    dirs = make_children(os.path.join(str(ext4_dir), "mount"), imgs)

    # The model: the same reads, rewriting losers of a whole-request vote.
    model = [bytearray(i) for i in imgs]
    answers = []
    for off, length in READS:
        want = expect_read([bytes(i[off:off + length]) for i in model],
                           threshold, off, length, FILE, dirs)
        if want.how == "whole":
            for loser, _ in want.events:
                model[dirs.index(loser)][off:off + length] = want.data
        answers.append(want.data)

    qemu = qemu_util.qemu_io_reads(
        qemu_util.quorum_spec([os.path.join(d, FILE) for d in qemu_dirs],
                              threshold, rewrite_corrupted=True),
        READS, writable=True)
    assert len(qemu.results) == len(READS), qemu.stderr
    m = quorum(children=dirs, threshold=threshold, opts="rewrite-corrupted")
    got, open_error, _ = read_mount(m, READS)
    assert open_error is None
    m.unmount()

    for k, (off, length) in enumerate(READS):
        q = qemu.results[k]
        if isinstance(q, bytes):
            assert q == answers[k], "model differs from qemu at %d" % off
            assert got[k] == q, "read %d+%d: mount differs from qemu" % (
                off, length)
        else:
            assert got[k] == answers[k], "read %d+%d" % (off, length)
    for i in range(case.n):
        with open(os.path.join(qemu_dirs[i], FILE), "rb") as f:
            after_qemu = f.read()
        with open(os.path.join(dirs[i], FILE), "rb") as f:
            after_mount = f.read()
        assert after_qemu == bytes(model[i]), \
            "child %d: qemu repaired other bytes than the model" % i
        assert after_mount == after_qemu, \
            "child %d: the mount repaired other bytes than qemu" % i


# --- blkverify -----------------------------------------------------------

def blkverify_line(text):
    lines = [l for l in text.splitlines() if l.startswith("quorum: offset=")]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.timeout(60)
def test_blkverify_mismatch_fails_the_read_prints_qemus_message_and_exits_1(
        ext4_dir, quorum):
    rng = random.Random("qfs-blkverify")
    good = rng.randbytes(IMAGE_SIZE)
    bad = bytearray(good)
    bad[100000] ^= 0x5A
    dirs = make_children(ext4_dir, [good, bytes(bad)])
    files = [os.path.join(d, FILE) for d in dirs]

    qemu = subprocess.run(
        ["qemu-io", "-r", "-t", "none", "-c", "read 0 65536",
         "-c", "read 65536 65536",
         qemu_util.quorum_spec(files, 2, blkverify=True)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        timeout=60)
    assert qemu.returncode == 1
    expected = blkverify_line(qemu.stderr)
    assert expected == ("quorum: offset=65536 bytes=65536 contents mismatch "
                        "at offset 100000")

    m = quorum(children=dirs, threshold=2, opts="blkverify")
    fd = os.open(m.path(FILE), os.O_RDONLY | os.O_DIRECT)
    try:
        # Reads without a mismatch behave normally.
        assert direct_pread(fd, 0, 64 * KiB) == good[:64 * KiB]
        with pytest.raises(OSError) as e:
            direct_pread(fd, 64 * KiB, 64 * KiB)
        assert e.value.errno == errno.EIO
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # the daemon is going away; close may see ENOTCONN
    assert m.wait_exit() == 1, m.stderr()
    assert blkverify_line(m.stderr()) == expected
    m.check_stderr()


# --- read-pattern=fifo -----------------------------------------------------

@pytest.mark.parametrize("threshold", [1, 2])
def test_fifo_returns_the_first_childs_bytes_even_when_corrupt_like_qemu(
        threshold, ext4_dir, quorum):
    imgs = ImageSet("fifo", 3, one_child_one_block).build()
    imgs[0], imgs[1] = imgs[1], imgs[0]  # the corrupt child comes first
    dirs = make_children(ext4_dir, imgs)
    files = [os.path.join(d, FILE) for d in dirs]
    qemu = qemu_util.qemu_io_reads(
        qemu_util.quorum_spec(files, threshold, read_pattern="fifo"), READS)
    assert qemu.results == [imgs[0][off:off + n] for off, n in READS]

    m = quorum(children=dirs, threshold=threshold, opts="read-pattern=fifo")
    got, open_error, _ = read_mount(m, READS)
    assert open_error is None
    mismatches = [r for r, g, q in zip(READS, got, qemu.results) if g != q]
    assert not mismatches, "mount differs from qemu at %s" % mismatches[:5]
    m.unmount()
    # No vote, so nothing is compared and nothing reported.
    assert [e for e in m.events() if e["event"].startswith("QUORUM")] == []


def test_fifo_reads_the_next_child_when_the_first_has_no_file(
        ext4_dir, quorum):
    imgs = ImageSet("fifo-missing", 2, nothing).build()
    dirs = make_children(ext4_dir, imgs)
    os.unlink(os.path.join(dirs[0], FILE))
    m = quorum(children=dirs, threshold=1, opts="read-pattern=fifo")
    fd = os.open(m.path(FILE), os.O_RDONLY | os.O_DIRECT)
    try:
        # Lookup and open already reported child 0; let that settle so
        # the read's own report is not held back by the throttle.
        mark = qemu_util.wait_events_quiet(m)
        assert direct_pread(fd, 64 * KiB, 64 * KiB) == \
            imgs[1][64 * KiB:128 * KiB]
    finally:
        os.close(fd)
    m.unmount()
    events = m.events()
    assert qemu_util.first_report_per_child(events[mark:]) == {
        dirs[0]: {"type": "read", "node-name": dirs[0], "sector-num": 128,
                  "sectors-count": 128, "error": os.strerror(errno.ENOENT),
                  "file": FILE}}
    # fifo never votes, so it never fails a quorum.
    assert m.events_named("QUORUM_FAILURE") == []


# --- the error vote, on the mount alone -------------------------------------
#
# QEMU cannot open a quorum whose child file is missing, so these cases
# have no qemu-io counterpart; the expectation is the model of QEMU's
# quorum_vote_error, checked against qemu-io by the test above only for
# data. A child on a 4 KiB-sector device fails 512-aligned O_DIRECT reads
# with EINVAL; a child without the file fails every read with ENOENT.

@pytest.fixture
def sector4k_dir(tmp_path):
    fs = qemu_util.SectorLoopFs(str(tmp_path / "sector4k"))
    yield fs.dir
    err = fs.close()
    if err:
        pytest.fail(err)


def error_vote_children(kinds, ext4_dir, sector4k_dir, img):
    """One child per kind: "ok" (ext4, 512-byte sectors), "4k" (ext4 on
    4 KiB sectors) or "missing" (no file). Returns the directories."""
    dirs = []
    for i, kind in enumerate(kinds):
        d = os.path.join(sector4k_dir if kind == "4k" else str(ext4_dir),
                         "c%d" % i)
        os.mkdir(d)
        dirs.append(d)
    qfs.enrol(dirs, os.path.join(str(ext4_dir), "enrol"))
    for d, kind in zip(dirs, kinds):
        if kind != "missing":
            with open(os.path.join(d, FILE), "wb") as f:
                f.write(img)
    return dirs


ANSWER = {"4k": errno.EINVAL, "missing": errno.ENOENT}


@pytest.mark.parametrize("kinds, threshold", [
    (["4k", "missing", "4k", "ok", "ok"], 3),   # EINVAL 2 : ENOENT 1
    (["4k", "missing", "ok", "ok"], 3),         # tie, ENOENT seen last
    (["missing", "4k", "ok", "ok"], 3),         # tie, EINVAL seen last
    (["ok", "4k", "missing", "ok"], 2),         # 2 succeed: data
], ids=["majority", "tie-enoent-last", "tie-einval-last", "enough-succeed"])
def test_read_with_too_few_successes_fails_with_the_error_vote(
        kinds, threshold, sector4k_dir, ext4_dir, quorum):
    img = random.Random("qfs-error-vote").randbytes(64 * KiB)
    dirs = error_vote_children(kinds, ext4_dir, sector4k_dir, img)
    off, length = 512, 4 * KiB
    answers = [ANSWER[k] if k in ANSWER else img[off:off + length]
               for k in kinds]
    want = expect_read(answers, threshold, off, length, FILE, dirs)

    m = quorum(children=dirs, threshold=threshold)
    fd = os.open(m.path(FILE), os.O_RDONLY | os.O_DIRECT)
    try:
        mark = qemu_util.wait_events_quiet(m)
        got = read_result(fd, off, length)
        # A 4 KiB-aligned read has only the missing file against it.
        assert read_result(fd, 4 * KiB, 4 * KiB) == img[4 * KiB:8 * KiB]
    finally:
        os.close(fd)
    assert got == want.data, "mount %s, expected %s" % (show(got),
                                                        show(want.data))
    m.unmount()
    events = m.events()[mark:]
    first = qemu_util.first_report_per_child(events)
    assert first == {
        dirs[i]: {"type": "read", "node-name": dirs[i], "sector-num": 1,
                  "sectors-count": 8, "error": os.strerror(ANSWER[k]),
                  "file": FILE}
        for i, k in enumerate(kinds) if k in ANSWER}
    failures = [e["data"] for e in events if e["event"] == "QUORUM_FAILURE"]
    if want.how == "failed":
        assert failures == [{"reference": FILE, "sector-num": 1,
                             "sectors-count": 8}]
    else:
        assert failures == []
