"""The Debian package and `cmake --install` (README "Packaging and
installing"): `cpack -G DEB` builds the package from the tree; its
control fields name what it needs, its files are in their FHS places,
its maintainer scripts and conffiles are there, its daemon runs, and
`cmake --install` puts the same files in the same places.

Installing the package on this machine is scripts/package-check.sh's
business (it changes the system); this test only builds and reads it."""

import os
import re
import shutil
import stat
import subprocess

import pytest

import qfs

pytestmark = pytest.mark.skipif(
    not shutil.which("dpkg-deb") or not shutil.which("cpack"),
    reason="needs dpkg-deb and cpack")


def project_version():
    text = (qfs.REPO / "CMakeLists.txt").read_text()
    return re.search(r"project\(quorumfs VERSION (\S+)", text).group(1)


def cache_value(build, key):
    try:
        text = (build / "CMakeCache.txt").read_text()
    except FileNotFoundError:
        return None
    m = re.search(r"^%s:\w+=(.*)$" % key, text, re.M)
    return m.group(1) if m else None


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """A build directory configured for the prefix /usr: the one the
    daemon under test comes from when it is (scripts/test.sh configures
    it so), else a fresh one."""
    mine = qfs.Path(qfs.daemon_binary()).resolve().parent
    if cache_value(mine, "CMAKE_INSTALL_PREFIX") == "/usr" and \
            cache_value(mine, "CMAKE_HOME_DIRECTORY") == str(qfs.REPO):
        subprocess.run(["cmake", "--build", str(mine)], check=True,
                       capture_output=True, timeout=900)
        return mine
    fresh = tmp_path_factory.mktemp("pkgbuild")
    subprocess.run(["cmake", "-S", str(qfs.REPO), "-B", str(fresh),
                    "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                    "-DCMAKE_INSTALL_PREFIX=/usr"], check=True,
                   capture_output=True, timeout=300)
    subprocess.run(["cmake", "--build", str(fresh), "-j",
                    str(os.cpu_count() or 1)], check=True,
                   capture_output=True, timeout=900)
    return fresh


@pytest.fixture(scope="module")
def deb(build, tmp_path_factory):
    out = tmp_path_factory.mktemp("deb")
    res = subprocess.run(["cpack", "--config",
                          str(build / "CPackConfig.cmake"), "-G", "DEB",
                          "-B", str(out)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    debs = list(out.glob("quorumfs_*.deb"))
    assert len(debs) == 1, list(out.iterdir())
    return debs[0]


def field(deb, name):
    return subprocess.run(["dpkg-deb", "--field", str(deb), name],
                          check=True, capture_output=True,
                          text=True).stdout.strip()


def contents(deb):
    """{path: (mode string, size)} of the package's files."""
    out = subprocess.run(["dpkg-deb", "--contents", str(deb)], check=True,
                         capture_output=True, text=True).stdout
    files = {}
    for line in out.split("\n"):
        if not line:
            continue
        parts = line.split()
        path = parts[5][1:].rstrip("/") or "/"
        files[path] = (parts[0], int(parts[2]))
    return files


@pytest.mark.timeout(1200)
def test_the_package_is_named_versioned_and_depends_on_what_it_needs(deb):
    version = project_version()
    assert deb.name == "quorumfs_%s-1_amd64.deb" % version or \
        deb.name.startswith("quorumfs_%s-1_" % version)
    assert field(deb, "Package") == "quorumfs"
    assert field(deb, "Version") == version + "-1"
    assert field(deb, "Section") == "admin"
    assert field(deb, "Maintainer")
    depends = {d.strip().split()[0]
               for d in field(deb, "Depends").split(",")}
    # fuse3 for mount.fuse3 and fusermount3; the rest the libraries the
    # daemon links (dpkg-shlibdeps).
    assert {"fuse3", "libfuse3-3", "libjson-c5", "liburing2",
            "libc6"} <= depends, depends
    assert "logrotate" in field(deb, "Recommends")
    assert "replicated image files" in field(deb, "Description")


@pytest.mark.timeout(1200)
def test_the_package_puts_its_files_in_their_fhs_places(deb):
    files = contents(deb)
    expected = {
        "/usr/sbin/quorumfs": "-rwxr-xr-x",
        "/usr/sbin/quorumctl": "-rwxr-xr-x",
        "/usr/lib/systemd/system/quorumfs@.service": "-rw-r--r--",
        "/etc/logrotate.d/quorumfs": "-rw-r--r--",
        "/usr/share/doc/quorumfs/README.md": "-rw-r--r--",
        "/usr/share/doc/quorumfs/DESIGN.md": "-rw-r--r--",
        "/usr/share/doc/quorumfs/examples/quorumfs.conf": "-rw-r--r--",
        "/usr/share/man/man8/quorumfs.8.gz": "-rw-r--r--",
        "/usr/share/man/man8/quorumctl.8.gz": "-rw-r--r--",
        "/etc/quorumfs": "drwxr-xr-x",
        "/var/log/quorumfs": "drwxr-xr-x",
    }
    for path, mode in expected.items():
        assert path in files, "%s is not in the package" % path
        assert files[path][0] == mode, (path, files[path])
    # Nothing under /usr/local, nothing of the build's own.
    assert not [p for p in files if p.startswith("/usr/local")]
    assert not [p for p in files if "faultfs" in p or "test_" in p]


@pytest.mark.timeout(1200)
def test_maintainer_scripts_and_conffiles(deb, tmp_path):
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "--control", str(deb), str(control)],
                   check=True)
    assert (control / "conffiles").read_text().split() == [
        "/etc/logrotate.d/quorumfs"]
    for script in ("postinst", "postrm"):
        mode = (control / script).stat().st_mode
        assert mode & stat.S_IXUSR, script
        res = subprocess.run(["sh", "-n", str(control / script)])
        assert res.returncode == 0, script


@pytest.mark.timeout(1200)
def test_the_packaged_programs_run(deb, tmp_path):
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(root)],
                   check=True)
    for prog in ("quorumfs", "quorumctl"):
        res = subprocess.run([str(root / "usr/sbin" / prog), "--version"],
                             capture_output=True, text=True, timeout=10)
        assert res.returncode == 0
        assert res.stdout.split("\n")[0] == "%s %s" % (prog,
                                                      project_version())


@pytest.mark.timeout(1200)
def test_cmake_install_puts_the_files_the_package_has(build, deb, tmp_path):
    root = tmp_path / "destdir"
    subprocess.run(["cmake", "--install", str(build)], check=True,
                   capture_output=True, timeout=300,
                   env=dict(os.environ, DESTDIR=str(root)))
    installed = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            installed.add("/" + os.path.relpath(os.path.join(dirpath, name),
                                                root))
    assert installed == set(contents(deb)) - {"/"}


@pytest.mark.timeout(1200)
def test_the_packaged_manual_pages_render_and_carry_the_version(deb,
                                                               tmp_path):
    if not shutil.which("man"):
        pytest.skip("needs man")
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(root)],
                   check=True)
    for page in ("quorumfs", "quorumctl"):
        gz = root / "usr/share/man/man8" / ("%s.8.gz" % page)
        res = subprocess.run(["man", "-l", "--warnings", str(gz)],
            capture_output=True, text=True, timeout=60,
            env=dict(os.environ, MANWIDTH="80"))
        assert res.returncode == 0 and res.stderr == "", res.stderr
        assert "quorumfs %s" % project_version() in res.stdout
