"""The replication section of bench/run: what a replication child costs
the primary's writes, and how long a secondary's checkpoint takes under
load at two sizes of layer data.

    writes       qemu-img bench -w, -t none, QD16, at 4K/64K/1M, on a
                 primary mount, interleaved: without a replication
                 child, then with one whose inbound mount is a secondary
                 on this machine, streaming (stage RUNNING);
    checkpoint   eight writers on the primary and eight on the view; the
                 layers are filled to 10 MiB, then to 1 GiB, of data (half
                 copied before write into hidden, half written into
                 active), and each time `replication checkpoint` on the
                 secondary is timed: p50, p99, max.

Everything lives on one ext4 file system on a loop device of its own
(the primary's child, the secondary's base, the mount points); the
layers are on tmpfs, as COLO puts them on a RAM disk.
"""

import os
import random
import shutil
import statistics
import subprocess
import threading
import time

MiB = 1024 * 1024
IMG = 256 * MiB
BIG = 1024 * MiB
WRITE_SIZES = [("4K", 4096, 8192), ("64K", 65536, 2048), ("1M", MiB, 128)]
LAYER_SIZES = [("10M", 10 * MiB, 20), ("1G", 1024 * MiB, 4)]


def sh(cmd, timeout=300, check=True):
    return subprocess.run(cmd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, check=check)


def control(mnt, command):
    fd = os.open(os.path.join(mnt, ".control"), os.O_WRONLY)
    try:
        os.write(fd, command.encode())
    finally:
        os.close(fd)


def status(mnt):
    import json
    with open(os.path.join(mnt, ".control")) as f:
        return json.load(f)


def wait(cond, what, timeout=120):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError("replication bench: no %s after %d s" %
                               (what, timeout))
        time.sleep(0.05)


class Rig:
    """A primary mount and a secondary's two mounts, made and unmade."""

    def __init__(self, binary, workdir, log):
        self.binary = binary
        self.w = os.path.join(workdir, "repl")
        self.log = log
        self.loop = None
        self.procs = []
        os.makedirs(self.w)
        image = os.path.join(workdir, "repl.disk")
        with open(image, "wb") as f:
            f.truncate(4 * IMG + 2 * BIG + 512 * MiB)
        self.loop = sh(["losetup", "--find", "--show", image]).stdout.strip()
        sh(["mkfs.ext4", "-q", "-F", self.loop])
        sh(["mount", self.loop, self.w])
        for d in ("p1", "b1", "pm", "view", "inb", "layers"):
            os.mkdir(self.path(d))
        sh(["mount", "-t", "tmpfs", "-o", "size=%dm" % (3 * BIG // MiB),
            "qfs-layers", self.path("layers")])
        for name, size in (("disk.img", IMG), ("big.img", BIG)):
            for d in ("p1", "b1"):
                sh(["qemu-img", "create", "-q", "-f", "raw", "-o",
                    "preallocation=full", self.path(d, name), str(size)])

    def path(self, *parts):
        return os.path.join(self.w, *parts)

    def daemon(self, args, mnt):
        p = subprocess.Popen([self.binary, "-f"] + args + [mnt],
                             stdout=self.log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append((p, mnt))
        wait(lambda: os.path.ismount(mnt), "mount of %s" % mnt, 30)
        return p

    def start_primary(self):
        self.daemon(["-o", "threshold=1,control-socket=none",
                     self.path("p1")], self.path("pm"))

    def start_secondary(self):
        """A fresh secondary: new, empty layers, stage NONE."""
        for layer in ("act", "hid"):
            shutil.rmtree(self.path("layers", layer), ignore_errors=True)
            os.mkdir(self.path("layers", layer))
        self.daemon(["-o", "replication=secondary,control-socket=none,"
                     "active=%s,hidden=%s,inbound=%s" % (
                         self.path("layers", "act"),
                         self.path("layers", "hid"), self.path("inb")),
                     self.path("b1")], self.path("view"))

    def stream(self):
        """The secondary's inbound as the primary's replication child,
        filled, both sides RUNNING."""
        control(self.path("pm"), "add %s mode=primary name=sec" %
                self.path("inb"))
        wait(lambda: status(self.path("pm"))["children"][1]["state"] == "ok",
             "filled replication child", 600)
        control(self.path("view"), "replication start secondary")
        control(self.path("pm"), "replication start primary")

    def unstream(self):
        control(self.path("pm"), "remove sec")
        self.stop(self.path("view"))

    def stop(self, mnt):
        for p, m in list(self.procs):
            if m != mnt:
                continue
            if os.path.ismount(m):
                sh(["fusermount3", "-u", m], check=False)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.procs.remove((p, m))
        if os.path.ismount(self.path("inb")) and mnt == self.path("view"):
            sh(["fusermount3", "-u", "-z", self.path("inb")], check=False)

    def close(self):
        for _, m in list(self.procs):
            self.stop(m)
        for m in (self.path("inb"), self.path("layers"), self.w):
            if os.path.ismount(m):
                sh(["umount", "-l", m], check=False)
        if self.loop:
            sh(["losetup", "-d", self.loop], check=False)


def bench_write(mnt, size, count):
    """Seconds of one qemu-img bench write run on mnt's disk.img."""
    p = sh(["qemu-img", "bench", "-f", "raw", "-t", "none", "-i", "threads",
            "-d", "16", "-c", str(count), "-s", str(size), "-w",
            os.path.join(mnt, "disk.img")], timeout=600, check=False)
    for line in p.stdout.splitlines():
        if line.startswith("Run completed in "):
            return float(line.split()[3])
    raise RuntimeError("qemu-img bench: %s" % p.stdout[-300:])


def writes(rig, reps, count_div):
    """{size: {"alone": [s], "replicated": [s]}}, interleaved."""
    out = {label: {"alone": [], "replicated": []}
           for label, _, _ in WRITE_SIZES}
    for _ in range(reps):
        for label, size, count in WRITE_SIZES:
            out[label]["alone"].append(
                bench_write(rig.path("pm"), size, max(16, count // count_div)))
        rig.start_secondary()
        rig.stream()
        for label, size, count in WRITE_SIZES:
            out[label]["replicated"].append(
                bench_write(rig.path("pm"), size, max(16, count // count_div)))
        rig.unstream()
    return out


class Writers:
    """Eight threads writing 64 KiB at random into big.img through each
    of two mounts, until stopped."""

    def __init__(self, mounts, n=8):
        self.stop = threading.Event()
        self.errors = []
        self.threads = [threading.Thread(target=self.run, args=(m, k))
                        for m in mounts for k in range(n)]
        for t in self.threads:
            t.start()

    def run(self, mnt, k):
        rng = random.Random(k)
        data = bytes([k + 1]) * 65536
        try:
            fd = os.open(os.path.join(mnt, "big.img"), os.O_WRONLY)
            while not self.stop.is_set():
                os.pwrite(fd, data, rng.randrange(0, BIG // 65536) * 65536)
            os.close(fd)
        except OSError as e:
            self.errors.append(str(e))

    def end(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def fill(rig, nbytes):
    """nbytes of layer data: half copied into hidden by the primary's
    writes, half written into active by the view's, 1 MiB at a time on
    clusters the writers' 64 KiB rarely repeat."""
    chunk = b"\xee" * MiB
    for side, start in (("pm", 0), ("view", BIG // 2)):
        fd = os.open(rig.path(side, "big.img"), os.O_WRONLY)
        try:
            for off in range(start, start + nbytes // 2, MiB):
                os.pwrite(fd, chunk, off % BIG)
        finally:
            os.close(fd)


def checkpoints(rig, reps_div):
    """{layer size: [ms]} of the secondary's checkpoint under load."""
    out = {}
    writers = Writers([rig.path("pm"), rig.path("view")])
    try:
        for label, nbytes, count in LAYER_SIZES:
            out[label] = []
            for _ in range(max(2, count // reps_div)):
                fill(rig, nbytes)
                control(rig.path("pm"), "replication checkpoint")
                t = time.monotonic()
                control(rig.path("view"), "replication checkpoint")
                out[label].append(1000 * (time.monotonic() - t))
    finally:
        writers.end()
    if writers.errors:
        raise RuntimeError("writers: %s" % writers.errors[:3])
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def run(binary, workdir, log, reps, count_div):
    """The section's results, for results.json."""
    rig = Rig(binary, workdir, log)
    try:
        rig.start_primary()
        w = writes(rig, reps, count_div)
        rig.start_secondary()
        rig.stream()
        cp = checkpoints(rig, count_div)
    finally:
        rig.close()
    res = {"writes": {}, "checkpoint_ms": {}}
    for label, samples in w.items():
        alone = statistics.median(samples["alone"])
        repl = statistics.median(samples["replicated"])
        res["writes"][label] = {"alone_s": alone, "replicated_s": repl,
                                "kept": alone / repl, "samples": samples}
    for label, ms in cp.items():
        res["checkpoint_ms"][label] = {"p50": pct(ms, 50), "p99": pct(ms, 99),
                                       "max": max(ms), "samples": ms}
    return res


def table(res):
    """Markdown for table.md."""
    r = res.get("replication")
    if not r:
        return ""
    lines = ["", "### Replication (goal: writes keep >= 0.7 of the "
             "throughput without a replication child; checkpoint p99 <= "
             "50 ms, whatever the layers hold)", "",
             "| write, -t none, QD16 | without (s) | with (s) | kept |",
             "|---|---:|---:|---:|"]
    for label, c in r["writes"].items():
        lines.append("| %s | %.3f | %.3f | %.2f %s |" % (
            label, c["alone_s"], c["replicated_s"], c["kept"],
            "✓" if c["kept"] >= 0.7 else "✗"))
    lines += ["", "| checkpoint under load, layers holding | p50 (ms) | "
              "p99 (ms) | max (ms) |", "|---|---:|---:|---:|"]
    for label, c in r["checkpoint_ms"].items():
        lines.append("| %s | %.1f | %.1f %s | %.1f |" % (
            label, c["p50"], c["p99"], "✓" if c["p99"] <= 50 else "✗",
            c["max"]))
    return "\n".join(lines) + "\n"
