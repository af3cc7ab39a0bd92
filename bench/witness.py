"""The witness section of bench/run: two data children and a witness
against three data children, on the same three file systems.

Two more quorumfs mounts are made beside the run's own, each over a fresh
directory on every child's file system: "three" over three data
directories, "witness" over two data directories and a witness
(-o witness=) on the third, both at threshold 2. A preallocated image is
written through each, then qemu-img bench reads and writes it at 4K, 64K
and 1M, QD16, -t none and -t writeback, the two targets interleaved; the
median of each cell is kept. The goal is the witness within 1.2x of the
three copies' time in every cell. Afterwards the witness set's two data
copies must be identical.

bench/run calls run() with its Bench object (b.children, b.binary,
b.workdir, b.out, b.args) and draws md_witness() into table.md.
"""

import os
import statistics
import subprocess
import time

MiB = 1024 * 1024
IMG = 128 * MiB
GOAL = 1.2
TARGETS = ("three", "witness")
SIZES = [("4K", 4096, 16384), ("64K", 65536, 4096), ("1M", MiB, 256)]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Sets:
    """The two mounts and their directories; stop() undoes both."""

    def __init__(self, b):
        self.b = b
        self.procs = []
        self.mnt = {}
        self.dirs = []

    def start(self, name, opts, children):
        mnt = os.path.join(self.b.workdir, "mnt-" + name)
        os.makedirs(mnt, exist_ok=True)
        for d in children + [o.split("=", 1)[1] for o in opts
                             if o.startswith("witness=")]:
            os.makedirs(d)
            self.dirs.append(d)
        logf = open(os.path.join(self.b.out, "quorumfs-%s.log" % name), "w")
        cmd = [self.b.binary, "-f", "-o", ",".join(["threshold=2"] + opts)]
        cmd += children + [mnt]
        logf.write("# %s\n" % " ".join(cmd))
        logf.flush()
        p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append((p, mnt, logf))
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            if p.poll() is not None:
                raise RuntimeError("quorumfs (%s) exited with %d" %
                                   (name, p.returncode))
            time.sleep(0.1)
        else:
            raise RuntimeError("quorumfs (%s) did not mount" % name)
        self.mnt[name] = mnt

    def wait_in_step(self, name, timeout=120):
        """Until every child of the mount votes (a new witness is filled
        first)."""
        ctl = os.path.join(self.mnt[name], ".control")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with open(ctl) as f:
                doc = f.read()
            if '"votes":false' not in doc.replace(" ", ""):
                return
            time.sleep(0.1)
        raise RuntimeError("the %s set's children did not all vote" % name)

    def stop(self):
        for p, mnt, logf in self.procs:
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-u", mnt], check=False)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            logf.close()
        self.procs = []
        for d in self.dirs:
            subprocess.run(["rm", "-rf", d], check=False)


def bench_one(path, cache, write, size, count, timeout):
    cmd = ["qemu-img", "bench", "-f", "raw", "-t", cache, "-i", "threads",
           "-d", "16", "-c", str(count), "-s", str(size)]
    cmd += (["-w"] if write else []) + [path]
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out after %d s" % timeout
    for line in p.stdout.splitlines():
        if line.startswith("Run completed in ") and p.returncode == 0:
            return float(line.split()[3]), None
    return None, "exit %d: %s" % (p.returncode, p.stdout.strip()[-300:])


def make_sets(b, sets):
    three = [os.path.join(c, "bench-three") for c in b.children]
    sets.start("three", [], three)
    data = [os.path.join(c, "bench-witness") for c in b.children[:2]]
    sets.start("witness", ["witness=" + os.path.join(b.children[2],
                                                     "bench-witness")], data)
    sets.wait_in_step("witness")
    for name in TARGETS:
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", "-o",
                        "preallocation=full",
                        os.path.join(sets.mnt[name], "w.img"), str(IMG)],
                       check=True, timeout=600)


def measure(b, sets, log, oddities):
    cells = []
    for cache in ("none", "writeback"):
        for op in ("read", "write"):
            for label, size, count in SIZES:
                cells.append((cache, op, label, size,
                              max(16, count // b.args.count_div)))
    out = []
    for n, (cache, op, label, size, count) in enumerate(cells, 1):
        cell = {"cache": cache, "op": op, "size": label, "count": count,
                "samples": {t: [] for t in TARGETS}, "errors": {}}
        for _ in range(b.args.reps):
            for t in TARGETS:
                secs, err = bench_one(os.path.join(sets.mnt[t], "w.img"),
                                      cache, op == "write", size, count,
                                      b.args.timeout)
                cell["samples"][t].append(secs)
                if err:
                    cell["errors"].setdefault(t, []).append(err)
                    oddities.append("witness section %s %s -t %s on %s: %s"
                                    % (op, label, cache, t, err))
        m = {t: median(cell["samples"][t]) for t in TARGETS}
        cell["median"] = m
        cell["ratio"] = (m["witness"] / m["three"]
                         if m["witness"] and m["three"] else None)
        log("[%2d/%d] witness %-9s %-5s %-3s three=%s witness=%s ratio=%s"
            % (n, len(cells), cache, op, label,
               "%.3f" % m["three"] if m["three"] else "FAIL",
               "%.3f" % m["witness"] if m["witness"] else "FAIL",
               "%.2f" % cell["ratio"] if cell["ratio"] else "-"))
        out.append(cell)
    return out


def run(b, log):
    """The section's results: {"cells": [...], "data_copies_identical"}."""
    sets = Sets(b)
    res = {"goal_ratio": GOAL, "image_size": IMG}
    try:
        make_sets(b, sets)
        res["cells"] = measure(b, sets, log, b.oddities)
        a, c = (os.path.join(ch, "bench-witness", "w.img")
                for ch in b.children[:2])
        res["data_copies_identical"] = subprocess.run(
            ["cmp", "-s", a, c]).returncode == 0
        if not res["data_copies_identical"]:
            b.oddities.append("the witness set's data copies differ")
    finally:
        sets.stop()
    return res


def md_witness(res):
    w = res.get("witness")
    if not w or not w.get("cells"):
        return []
    lines = ["", "## Two data children and a witness vs three data "
             "children", "",
             "qemu-img bench, QD16, threads, a preallocated %d MiB image; "
             "seconds (median), witness / three (goal <= %.1f)." % (
                 w["image_size"] // MiB, w["goal_ratio"]), "",
             "| cache | op | size | three | witness | ratio |",
             "|---|---|---|---:|---:|---:|"]
    for c in w["cells"]:
        m = c["median"]
        lines.append("| %s | %s | %s | %s | %s | %s%s |" % (
            c["cache"], c["op"], c["size"],
            "%.3f" % m["three"] if m["three"] else "FAIL",
            "%.3f" % m["witness"] if m["witness"] else "FAIL",
            "%.2f" % c["ratio"] if c["ratio"] else "-",
            "" if c["ratio"] is None or c["ratio"] <= w["goal_ratio"]
            else " (over)"))
    return lines
