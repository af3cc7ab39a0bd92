"""A resync that fails fails its child, never the mount.

The new child sits on a file system too small for the tree: the copy runs
out of space. The child must end `failed` with the reason in the status
and in CHILD_STATE_CHANGED, never vote, and the writers on the mount must
not notice anything.
"""
import os

import pytest

from control_util import child_status, control, wait_status
from qfs import read_file, write_file

MiB = 1024 * 1024


@pytest.mark.timeout(60)
def test_a_child_that_runs_out_of_space_during_resync_fails_alone(
        tmpfs_dir, scratch_fs, quorum):
    m = quorum(n=3, threshold=2)
    for i in range(4):
        write_file(m.path("img%d" % i), os.urandom(MiB))
    small = scratch_fs("tmpfs", size="1M")

    control(m, "add %s name=small" % small)
    doc = wait_status(
        m, lambda d: child_status(d, "small")["state"] != "syncing", 30,
        "the resync to end")

    c = child_status(doc, "small")
    assert c["state"] == "failed", c
    assert c["votes"] is False
    assert "No space left on device" in c["reason"], c["reason"]
    changed = m.wait_event(
        "CHILD_STATE_CHANGED",
        lambda d: d["node-name"] == "small" and d["new"] == "failed")
    assert changed["old"] == "syncing"
    assert "No space left on device" in changed["reason"]
    assert not m.events_named("RESYNC_COMPLETED")

    # The mount goes on as before: writes and reads succeed, the failed
    # child gets nothing more, and the voting children stay identical.
    before = sorted(os.listdir(small))
    write_file(m.path("after"), b"written after the failure")
    assert read_file(m.path("after")) == b"written after the failure"
    for i in range(4):
        assert read_file(m.path("img%d" % i)) == \
            read_file(os.path.join(m.children[0], "img%d" % i))
    assert sorted(os.listdir(small)) == before
    for child in m.children[1:]:
        assert read_file(os.path.join(child, "after")) == \
            b"written after the failure"
    assert not m.events_named("QUORUM_FAILURE")
