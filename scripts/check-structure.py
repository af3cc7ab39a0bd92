#!/usr/bin/env python3
"""Check the source layout that docs/DESIGN.md draws.

    scripts/check-structure.py [--report]

Fails (exit 1, one line per finding) on:
  - an include of, or a call into, a folder that the layer table in
    docs/DESIGN.md does not allow: a file may use its own folder and the
    folders of lower layers, nothing else;
  - a call cycle between production C files (a strongly connected
    component of more than one file in the file-level call graph);
  - a folder's private header (*_i.h) included from outside the folder;
  - a folder without exactly one public header, named after the folder;
  - a struct tag defined twice, or a struct of more than 16 fields whose
    leading comment does not say why (it must mention "fields");
  - a production C function longer than 60 lines, a function in bench/run
    longer than 80;
  - a file citing a document outside the repository.

The parser relies on the project's clang-format style (kernel style): a
function definition starts in column 0 and its body is the lines from a
"{" in column 0 to the next "}" in column 0. --report also prints the
graph and the longest functions.
"""

import ast
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUNCTION_MAX = 60
BENCH_FUNCTION_MAX = 80
STRUCT_FIELDS_MAX = 16
# Top-level folders that are not production code.
NOT_PRODUCTION = {"test", "bench", "scripts", "docs", "packaging"}
OUTSIDE_DOCS = re.compile(r"\.\./shared|\bSPEC\b|\b(QEMU-QUORUM|REPLICATION|PEERS-PERF|STYLE)(\.md)?\b")


def tracked_files():
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return [p for p in out.stdout.split("\n") if p and os.path.exists(
        os.path.join(REPO, p))]


def folder_of(path):
    return path.split("/")[0] if "/" in path else "."


def production_sources(files):
    return sorted(p for p in files if p.endswith((".c", ".h")) and
                  folder_of(p) not in NOT_PRODUCTION and
                  not folder_of(p).startswith("build"))


def read(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


# ---- the layer table ----

def layer_table():
    """{folder: layer} from the table in docs/DESIGN.md whose header row
    starts with '| layer | folder |'."""
    layers = {}
    in_table = False
    for line in read("docs/DESIGN.md").split("\n"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] == "layer" and cells[1] == "folder":
            in_table = True
            continue
        if not in_table:
            continue
        if not line.startswith("|"):
            break
        if set(cells[0]) <= set("-: "):
            continue
        for name in re.findall(r"`([^`]+)`", cells[1]):
            layers[name.rstrip("/") if name != "quorumfs.c" else "."] = \
                int(cells[0])
    return layers


# ---- C parsing ----

def strip_comments(text):
    """Comments and string literals blanked, line structure kept."""
    def blank(m):
        s = m.group(0)
        if s.startswith(("'", '"')):
            return s[0] + re.sub(r"[^\n]", " ", s[1:-1]) + s[-1]
        return re.sub(r"[^\n]", " ", s)
    return re.sub(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|'
                  r"'(?:\\.|[^'\\\n])*'", blank, text, flags=re.S)


SIGNATURE_SKIP = re.compile(r"^(#|typedef\b|struct\s+\w+\s*\{|union\b|enum\b"
                            r"|static\s+const\b|[{}])")


def functions(path, code):
    """[(name, is_static, first_line, last_line, body_text)]"""
    lines = code.split("\n")
    found = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if (not line or line[0].isspace() or SIGNATURE_SKIP.match(line) or
                "(" not in line or line.rstrip().endswith(";")):
            i += 1
            continue
        start = i
        sig = line
        j = i
        while j + 1 < len(lines) and not lines[j].rstrip().endswith(
                (";", "{")) and lines[j + 1] != "{" and j - i < 12:
            j += 1
            sig += " " + lines[j].strip()
        if j + 1 >= len(lines) or lines[j + 1] != "{":
            i = j + 1
            continue
        end = j + 1
        while end < len(lines) and lines[end] != "}":
            end += 1
        m = re.search(r"(\w+)\s*\(", sig)
        if m and not m.group(1).startswith("__attribute"):
            found.append((m.group(1), sig.lstrip().startswith("static"),
                          start + 1, end + 1,
                          "\n".join(lines[j + 1:end + 1])))
        i = end + 1
    return found


INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
STRUCT_DEF = re.compile(r"^(?:typedef\s+)?struct\s+(\w+)\s*\{", re.M)


def struct_bodies(code):
    """[(tag, line, field_count)] for every struct definition."""
    out = []
    for m in STRUCT_DEF.finditer(code):
        depth, pos, fields, stmt_depth = 0, m.end() - 1, 0, 1
        while pos < len(code):
            ch = code[pos]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    break
                if depth == stmt_depth:
                    fields += 1  # a nested struct or union member
            elif ch == ";" and depth == stmt_depth:
                fields += 1
            pos += 1
        # "int a, b;" declares two fields
        body = code[m.end():pos]
        flat = re.sub(r"\{[^{}]*\}", "", body)
        fields += sum(s.count(",") for s in flat.split(";")
                      if "(" not in s)
        out.append((m.group(1), code.count("\n", 0, m.start()) + 1, fields))
    return out


def leading_comment(raw_lines, line):
    """The comment block ending right above line (1-based), or ''."""
    i = line - 2
    block = []
    while i >= 0 and raw_lines[i].strip() and not raw_lines[i].strip() \
            .endswith((";", "}", "{")):
        block.append(raw_lines[i])
        i -= 1
    return "\n".join(block)


# ---- graph ----

def strongly_connected(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def allowed(layers, src, dst):
    a, b = folder_of(src), folder_of(dst)
    if a == b:
        return True
    if a not in layers or b not in layers:
        return False
    return layers[b] < layers[a]


def check(report):
    problems = []
    files = tracked_files()
    sources = production_sources(files)
    layers = layer_table()
    code = {p: strip_comments(read(p)) for p in sources}

    # Folders and their headers.
    for folder in sorted({folder_of(p) for p in sources}):
        if folder not in layers:
            problems.append("%s/: not in the layer table of docs/DESIGN.md"
                            % folder)
        if folder == ".":
            continue
        public = [p for p in sources if folder_of(p) == folder and
                  p.endswith(".h") and not p.endswith("_i.h")]
        if public != ["%s/%s.h" % (folder, folder)]:
            problems.append("%s/: needs exactly one public header %s/%s.h, "
                            "has %s" % (folder, folder, folder, public))

    # Includes.
    for p in sources:
        for inc in INCLUDE.findall(read(p)):
            if inc not in code:
                continue
            if inc.endswith("_i.h") and folder_of(inc) != folder_of(p):
                problems.append("%s: includes %s, private to %s/" %
                                (p, inc, folder_of(inc)))
            elif not allowed(layers, p, inc):
                problems.append("%s: includes %s, which its layer may not "
                                "use" % (p, inc))

    # Functions and the call graph.
    defs = {}
    exported = {}
    longest = []
    for p in sources:
        for name, static, first, last, body in functions(p, code[p]):
            defs.setdefault(p, {})[name] = (static, body)
            if not static or p.endswith(".h"):
                exported.setdefault(name, []).append(p)
            length = last - first + 1
            longest.append((length, p, first, name))
            if p.endswith(".c") and length > FUNCTION_MAX:
                problems.append("%s:%d: %s() is %d lines (at most %d)" %
                                (p, first, name, length, FUNCTION_MAX))
    for name, where in exported.items():
        # Each program (quorumfs.c, quorumctl/) has its own main().
        if len(where) > 1 and name != "main":
            problems.append("%s() is defined in %s" % (name, ", ".join(where)))
    graph = {p: set() for p in sources}
    for p, fns in defs.items():
        for name, (static, body) in fns.items():
            for ident in set(re.findall(r"\b([A-Za-z_]\w*)\b", body)):
                if ident in fns and (fns[ident][0] or p.endswith(".h")):
                    continue  # this file's own function
                for target in exported.get(ident, ()):
                    if target != p:
                        graph[p].add(target)
    for p in sources:
        for target in sorted(graph[p]):
            if not allowed(layers, p, target):
                problems.append("%s: calls into %s, which its layer may not "
                                "use" % (p, target))
    for comp in strongly_connected(graph):
        if len(comp) > 1:
            problems.append("call cycle between %s" % ", ".join(comp))

    # Structs.
    tags = {}
    for p in sources:
        raw = read(p).split("\n")
        for tag, line, nfields in struct_bodies(code[p]):
            tags.setdefault(tag, []).append("%s:%d" % (p, line))
            if nfields > STRUCT_FIELDS_MAX and \
                    "fields" not in leading_comment(raw, line):
                problems.append("%s:%d: struct %s has %d fields and no "
                                "comment saying why" % (p, line, tag, nfields))
    for tag, where in sorted(tags.items()):
        if len(where) > 1:
            problems.append("struct %s is defined at %s" %
                            (tag, ", ".join(where)))

    # bench/run.
    bench = os.path.join(REPO, "bench", "run")
    if os.path.exists(bench):
        tree = ast.parse(read("bench/run"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > BENCH_FUNCTION_MAX:
                    problems.append("bench/run:%d: %s() is %d lines (at most "
                                    "%d)" % (node.lineno, node.name, length,
                                             BENCH_FUNCTION_MAX))

    # Documents outside the repository.
    for p in files:
        if p == "scripts/check-structure.py" or p.endswith(
                (".png", ".img", ".gz")):
            continue
        try:
            text = read(p)
        except (UnicodeDecodeError, IsADirectoryError):
            continue
        for n, line in enumerate(text.split("\n"), 1):
            if OUTSIDE_DOCS.search(line):
                problems.append("%s:%d: cites a document outside the "
                                "repository" % (p, n))

    if report:
        print("file-level calls:")
        for p in sources:
            if graph[p]:
                print("  %s -> %s" % (p, ", ".join(sorted(graph[p]))))
        print("longest functions:")
        for length, p, first, name in sorted(longest, reverse=True)[:15]:
            print("  %4d %s:%d %s" % (length, p, first, name))
        print("production lines: %d" % sum(
            read(p).count("\n") for p in sources))
    return problems


def main():
    problems = check("--report" in sys.argv[1:])
    for p in problems:
        print("check-structure: " + p)
    if problems:
        print("check-structure: %d problems (see docs/DESIGN.md)" %
              len(problems))
        return 1
    print("check-structure: layout as docs/DESIGN.md draws it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
