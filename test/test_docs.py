"""The README says what the code does: every key of the status document
and of every event the suite sees is in the README's tables, and the
source layout table lists what the repository holds."""

import os
import re
import subprocess

import control_util
import qfs


def readme_section(heading):
    """The README's text from a line starting with heading to the next
    heading of any level (or bold paragraph heading)."""
    text = (qfs.REPO / "README.md").read_text()
    start = text.index(heading)
    rest = text[start + len(heading):]
    end = re.search(r"\n(#+ |\*\*[A-Z][^*]*\*\*)", rest)
    return rest[:end.start()] if end else rest


def keys_of(value, prefix=""):
    """Every key of a JSON document, nested ones included; the members of
    objects inside arrays count, and the children-by-name maps do not
    (their keys are child names)."""
    found = set()
    if isinstance(value, dict):
        for k, v in value.items():
            found.add(k)
            if k != "children" or not isinstance(v, dict):
                found |= keys_of(v)
    elif isinstance(value, list):
        for v in value:
            found |= keys_of(v)
    return found


def documented(keys, section):
    """The keys the section does not name as `key` (or `key[]`)."""
    return {k for k in keys
            if "`%s`" % k not in section and "`%s[]`" % k not in section}


def test_every_status_key_is_in_the_readme_status_table(quorum):
    m = quorum()
    qfs.write_file(m.path("f"), b"x" * 8192)
    control_util.control(m, "scrub start rate=0")
    control_util.wait_status(
        m, lambda s: s["scrub"]["state"] == "completed", 20,
        "the scrub to complete")
    keys = keys_of(control_util.status(m))
    missing = documented(keys, readme_section("**Status**"))
    assert not missing, "status keys not in the README: %s" % sorted(missing)


def test_every_event_and_its_keys_are_in_the_readme_event_table(quorum):
    m = quorum()
    qfs.write_file(m.path("f"), b"y" * 4096)
    assert control_util.control_errno(m, "bogus") != 0
    control_util.control(m, "threshold 3")
    control_util.control(m, "scrub start rate=0")
    m.wait_event("SCRUB_COMPLETED")
    section = readme_section("## Event log")
    names = {e["event"] for e in m.events()}
    keys = set()
    for e in m.events():
        keys |= keys_of(e["data"])
    assert not documented(names, section), names
    missing = documented(keys, section)
    assert not missing, "event keys not in the README: %s" % sorted(missing)


def test_the_source_layout_table_lists_what_the_repository_holds():
    section = readme_section("## Source layout")
    listed = set(re.findall(r"^\| `([^`]+)` \|", section, re.M))
    tracked = subprocess.run(["git", "ls-files"], cwd=qfs.REPO, check=True,
                             capture_output=True, text=True).stdout.split()
    top = {p.split("/")[0] + ("/" if "/" in p else "") for p in tracked}
    code = {p for p in top if p.endswith("/") or p.endswith(".c")}
    code -= {".ci/"}
    listed_top = {p.split("/")[0] + ("/" if "/" in p else "") for p in listed}
    assert code - listed_top == set(), "not in the layout table"
    for p in listed:
        assert os.path.exists(qfs.REPO / p), "%s is listed but absent" % p
