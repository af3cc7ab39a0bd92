"""Fixtures for the mount tests.

- backing (tmpfs, ext4), tmpfs_dir, ext4_dir: a fresh scratch directory on
  a file system made for this test and unmounted after it.
- scratch_fs: a factory for more of them, e.g. small tmpfs children.
- quorum: a factory that mounts quorumfs over N new children and returns a
  qfs.Mount. After a passing test every mount is unmounted *checked*: the
  daemon must exit 0 within a deadline and print no sanitizer report.
  After a failing test teardown is best-effort (lazy unmount, terminate,
  kill) so that nothing is left mounted either way.
- run_daemon: runs quorumfs on a command line that must be refused.
- faulty: a factory for faultfs mounts (test/faultfs/) over a directory,
  in power-cut mode on request, stopped checked after a passing test.

The daemon is QFS_BIN (default build/quorumfs), prefixed by QFS_WRAPPER
(e.g. "valgrind --error-exitcode=99 -q").
"""

import sys
import threading

import pytest

import qfs
from faultfs import FaultFS, FaultFSError

# Everything started or mounted in this session, for the last-resort
# sweep in pytest_sessionfinish.
_all_mounts = []
_all_scratch = []


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Make each phase's report reachable from fixtures (item.rep_call...),
    # so teardown can choose the checked or the best-effort path.
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_sessionfinish(session, exitstatus):
    # Per-test teardown already cleaned up; this catches what an internal
    # error or an interrupted run left behind.
    for m in _all_mounts:
        m.cleanup()
    for s in reversed(_all_scratch):
        s.close()


def _test_passed(node):
    setup = getattr(node, "rep_setup", None)
    call = getattr(node, "rep_call", None)
    if setup is None or not setup.passed or call is None:
        return False
    if call.skipped:
        return not hasattr(call, "wasxfail")
    return call.passed


def _test_timeout(config, node):
    marker = node.get_closest_marker("timeout")
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout")
        if value is not None:
            return float(value)
    value = config.getoption("timeout", None)
    if value is None:
        try:
            value = config.getini("timeout")
        except ValueError:
            value = None
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


@pytest.fixture
def scratch_fs(tmp_path_factory):
    """Factory: scratch_fs(kind="tmpfs"|"ext4", size="512M") -> a fresh
    directory (pathlib.Path) on a new file system of that kind."""
    made = []

    def make(kind="tmpfs", size="512M"):
        fs = qfs.ScratchFs(kind, tmp_path_factory.mktemp(kind), size=size)
        made.append(fs)
        _all_scratch.append(fs)
        return fs.dir

    yield make
    errors = [e for e in (fs.close() for fs in reversed(made)) if e]
    if errors:
        pytest.fail("\n".join(errors))


@pytest.fixture(params=["tmpfs", "ext4"])
def backing(request, scratch_fs):
    """A fresh scratch directory on tmpfs or on a loop-mounted ext4."""
    return scratch_fs(request.param)


@pytest.fixture
def tmpfs_dir(scratch_fs):
    return scratch_fs("tmpfs")


@pytest.fixture
def ext4_dir(scratch_fs):
    return scratch_fs("ext4")


@pytest.fixture
def quorum(request, tmp_path, scratch_fs):
    """Factory: quorum(n=3, threshold=None, opts=(), base=None,
    children=None, mountpoint=None, start=True) -> qfs.Mount."""
    # Set up the scratch file systems the test uses before this fixture,
    # so that they are torn down after the daemons that hold them open.
    for name in ("backing", "tmpfs_dir", "ext4_dir"):
        if name in request.fixturenames:
            request.getfixturevalue(name)
    default_base = (request.getfixturevalue("backing")
                    if "backing" in request.fixturenames
                    else tmp_path / "children")
    made = []
    watchdog_fired = []

    def make(n=3, threshold=None, opts=(), base=None, children=None,
             mountpoint=None, start=True):
        k = len(made)
        workdir = tmp_path / ("q%d" % k)
        workdir.mkdir()
        if children is None:
            base_dir = qfs.Path(base if base is not None else default_base)
            children = [base_dir / ("q%d-c%d" % (k, i)) for i in range(n)]
            for c in children:
                c.mkdir(parents=True)
        if mountpoint is None:
            mountpoint = workdir / "mnt"
            mountpoint.mkdir()
        if isinstance(opts, str):
            opts = [o for o in opts.split(",") if o]
        opts = list(opts)
        if threshold is not None:
            opts.append("threshold=%d" % threshold)
        m = qfs.Mount(children, mountpoint, workdir / "events.jsonl",
                      workdir, opts)
        made.append(m)
        _all_mounts.append(m)
        if start:
            m.start()
        return m

    # A daemon stuck on a request would leave the test blocked in an
    # uninterruptible FUSE wait that pytest-timeout's signal cannot break.
    # Killing the daemons shortly before the timeout aborts the connection
    # instead, so the test fails with ENOTCONN and teardown still runs.
    timeout = _test_timeout(request.config, request.node)
    watchdog = None
    if timeout > 0:
        def fire():
            watchdog_fired.append(True)
            print("watchdog: killing quorumfs before the test timeout",
                  file=sys.stderr)
            for m in made:
                if m.running():
                    m.proc.kill()
        watchdog = threading.Timer(max(timeout - 15, timeout * 0.75), fire)
        watchdog.daemon = True
        watchdog.start()

    yield make

    if watchdog is not None:
        watchdog.cancel()
    checked = _test_passed(request.node) and not watchdog_fired
    failures = []
    for m in reversed(made):
        if checked and not m.killed and m.proc is not None:
            try:
                m.unmount()
            except (Exception, pytest.fail.Exception) as e:
                failures.append("%s: %s" % (m.mnt, e))
        else:
            if m.proc is not None and not checked:
                sys.stderr.write("quorumfs stderr (%s):\n%s\n" % (
                    m.mnt, m.stderr()[-8000:]))
        m.cleanup()
    if watchdog_fired:
        pytest.fail("the watchdog killed quorumfs: the test hung")
    if failures:
        pytest.fail("checked unmount failed:\n" + "\n".join(failures))


@pytest.fixture
def run_daemon(tmp_path):
    """run_daemon(*args, timeout=10) -> (returncode, stderr) for a command
    line that quorumfs must refuse without mounting anything."""
    return qfs.DaemonRun(tmp_path)


@pytest.fixture
def faulty(request, tmp_path, scratch_fs):
    """Factory: faulty(backing_dir, powercut=False) -> a started FaultFS
    over it, e.g. to be given to quorumfs as a child. Name this fixture before `quorum` in
    a test's arguments, so that faultfs is stopped after quorumfs: checked
    (exit status 0) after a passing test, killed otherwise. It is set up
    after scratch_fs, so the backing file systems outlive it."""
    made = []

    def make(backing, powercut=False):
        mnt = tmp_path / ("faultfs%d" % len(made))
        mnt.mkdir()
        ffs = FaultFS(backing, mnt, powercut=powercut)
        made.append(ffs)
        return ffs.start()

    yield make
    call = getattr(request.node, "rep_call", None)
    passed = call is not None and call.passed
    errors = []
    for ffs in reversed(made):
        if passed:
            try:
                ffs.stop()
            except FaultFSError as e:
                errors.append("%s: %s" % (ffs, e))
        else:
            sys.stderr.write("faultfs stderr (%s):\n%s\n" % (
                ffs.mnt, ffs.stderr()[-4000:]))
            ffs.cleanup()
    if errors:
        pytest.fail("checked stop of faultfs failed:\n" + "\n".join(errors))
