"""The manual pages quorumfs(8) and quorumctl(8): man renders them
without a warning, and they name every option, control command, status
field, event, metric and exit status the programs have (the lists come
from the code and a live mount, not from the pages)."""

import json
import os
import re
import shutil
import subprocess

import pytest

import qfs
from test_docs import keys_of, readme_section

MAN = qfs.REPO / "man"
pytestmark = pytest.mark.skipif(not shutil.which("man"),
                                reason="needs man (man-db)")


def render(page):
    """The page as man prints it in ASCII, 200 columns, lines joined."""
    res = subprocess.run(["man", "-E", "ascii", "-l", str(MAN / page)],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, MANWIDTH="200"))
    assert res.returncode == 0, res.stderr
    return re.sub(r"\s+", " ", res.stdout)


def section(text, name, following):
    """The rendered text of a section, up to the next one."""
    start = text.index(" %s " % name)
    end = min([text.index(" %s " % f, start) for f in following
               if " %s " % f in text[start:]] or [len(text)])
    return text[start:end]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("page", ["quorumfs.8", "quorumctl.8"])
def test_man_renders_the_page_without_warnings(page):
    res = subprocess.run(["man", "-l", "--warnings", str(MAN / page)],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, MANWIDTH="80"))
    assert res.returncode == 0
    assert res.stderr == "", res.stderr
    assert "NAME" in res.stdout and "EXIT STATUS" in res.stdout


def daemon_options():
    """The -o options quorumfs.c parses."""
    text = (qfs.REPO / "quorumfs.c").read_text()
    opts = re.findall(r'QFS_OPT\("([a-z-]+)', text)
    opts += re.findall(r'FUSE_OPT_KEY\("([a-z-]+)=', text)
    return set(opts)


CONTROL = ["add", "remove", "threshold", "read-pattern", "rewrite-corrupted",
           "resync", "scrub start", "scrub repair", "scrub stop", "policy"]


@pytest.mark.timeout(60)
def test_quorumfs_8_names_every_option_command_and_event():
    text = render("quorumfs.8")
    options = section(text, "OPTIONS", ["MOUNTING AT BOOT"])
    assert len(daemon_options()) >= 11
    for opt in daemon_options():
        assert opt in options, "-o %s is not in OPTIONS" % opt
    for flag in ("-f", "-d", "-s", "--help", "--version", "allow_other"):
        assert flag in options, flag
    commands = section(text, "CONTROL COMMANDS", ["THE CONTROL SOCKET"])
    for c in CONTROL:
        assert c in commands, c
    events = section(text, "EVENTS", ["SIGNALS"])
    readme = readme_section("## Event log")
    for name in re.findall(r"^\| `([A-Z_]+)`", readme, re.M):
        assert name in events, name
    for name in ("SIGHUP", "SIGTERM"):
        assert name in section(text, "SIGNALS", ["FILES"])
    for path in (".quorumfs/state", ".quorumfs/intent", ".control",
                 ".children/",
                 "/etc/fstab", "quorumfs@.service", "logrotate"):
        assert path in section(text, "FILES", ["EXIT STATUS"]), path


@pytest.mark.timeout(60)
def test_quorumfs_8_names_every_status_field(quorum):
    m = quorum()
    qfs.write_file(m.path("f"), b"x" * 8192)
    with open(m.path(".control"), "w") as f:
        f.write("scrub start rate=0")
    doc = qfs.wait_for(lambda: (lambda d: d["scrub"]["state"] == "completed"
                                and d)(json.load(open(m.path(".control")))),
                       20, "the scrub to complete")
    status = section(render("quorumfs.8"), "STATUS", ["EVENTS"])
    missing = [k for k in keys_of(doc) if k not in status]
    assert not missing, "status keys not in quorumfs(8): %s" % missing


@pytest.mark.timeout(60)
def test_quorumctl_8_names_every_command_option_and_metric(quorum):
    text = render("quorumctl.8")
    commands = section(text, "COMMANDS", ["OPTIONS"])
    verbs = {c.split()[0] for c in CONTROL}
    for c in verbs | {"start|repair", "stop", "status", "events", "metrics",
                      "--json", "--wait"}:
        assert c in commands, c
    main = (qfs.REPO / "quorumctl" / "main.c").read_text()
    options = section(text, "OPTIONS", ["EXIT STATUS"])
    for long in re.findall(r'\{"([a-z]+)", (?:no|required)_argument', main):
        assert "--" + long in options, long
    m = quorum()
    from test_quorumctl import ctl_binary
    metrics = subprocess.run([ctl_binary(), "metrics", m.mnt], check=True,
                             capture_output=True, text=True).stdout
    families = set(re.findall(r"^# TYPE (\S+)", metrics, re.M))
    assert len(families) > 20
    for family in families:
        assert family in commands, "%s is not in quorumctl(8)" % family
    exits = section(text, "EXIT STATUS", ["FILES"])
    for code in (" 0 ", " 1 ", " 2 "):
        assert code in exits
