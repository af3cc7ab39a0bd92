"""The latency and CPU sections of bench/run: what one small request costs
a caller who waits for it, and what the daemon burns per GiB moved.

    lat   fio, QD1 4K O_DIRECT random reads and random writes (psync, one
          job): p50, p99 and p99.9 of each request's whole latency,
          through the mount, through QEMU's quorum of the same three
          images exported over FUSE by qemu-storage-daemon (the same
          crossing as ours), and on one child; interleaved, the median of
          each percentile over the repetitions.
    cpu   the daemon's CPU time (user + system, from /proc/PID/stat)
          across 1 MiB O_DIRECT sequential reads and writes at QD16,
          per GiB moved, beside qemu-storage-daemon's for the same job
          on its FUSE export: a change that saves wall time by burning
          CPU shows here.

bench/run calls run_lat() and run_cpu() with its Bench object (b.mnt,
b.children, b.start_qsd(), b.stop_qsd(), b.qfs, b.qsd) and fio(), and
draws md_lat() / md_cpu() into table.md.
"""

import os

MiB = 1024 * 1024
GiB = 1024 * MiB
PERCENTILES = ("50", "99", "99.9")
GOAL_P99_VS_CHILD = 3.0
LAT_TARGETS = ("mount", "qsd", "child")
TARGET_NAMES = {"mount": "quorumfs", "qsd": "QEMU quorum over FUSE",
                "child": "one child"}


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def percentiles_us(part):
    """{p: microseconds} from one direction of a fio job: the whole
    latency when fio reports it, else completion latency."""
    lat = part.get("lat_ns") or {}
    table = lat.get("percentile") or part.get("clat_ns", {}).get(
        "percentile", {})
    out = {}
    for p in PERCENTILES:
        for key, ns in table.items():
            if abs(float(key) - float(p)) < 1e-6:
                out[p] = ns / 1000.0
    return out


def lat_job(rw, runtime, size):
    return ["--name=lat", "--rw=" + rw, "--bs=4k", "--direct=1",
            "--ioengine=psync", "--iodepth=1", "--numjobs=1",
            "--time_based", "--runtime=%d" % runtime, "--ramp_time=1",
            "--size=%d" % size, "--lat_percentiles=1",
            "--percentile_list=" + ":".join(PERCENTILES)]


def lat_path(b, t):
    if t == "mount":
        return os.path.join(b.mnt, "pre.img")
    if t == "child":
        return os.path.join(b.children[0], "pre.img")
    return b.start_qsd("pre.img", "none")


def lat_sample(b, fio, t, rw, runtime, size):
    """({p: us}, error) of one fio run on target t."""
    try:
        path = lat_path(b, t)
    except RuntimeError as e:
        return None, str(e)
    try:
        job, err = fio(b, lat_job(rw, runtime, size) +
                       ["--filename=" + path], runtime + 120)
    finally:
        if t == "qsd":
            b.stop_qsd()
    if err:
        return None, err
    part = job["read" if rw == "randread" else "write"]
    return percentiles_us(part), None


def run_lat(b, fio, reps, runtime, size, log):
    out = []
    for rw in ("randread", "randwrite"):
        row = {"rw": rw, "samples": {t: [] for t in LAT_TARGETS},
               "errors": {}}
        for rep in range(reps):
            for t in LAT_TARGETS:
                pct, err = lat_sample(b, fio, t, rw, runtime, size)
                row["samples"][t].append(pct)
                if err:
                    row["errors"].setdefault(t, []).append(err)
                    b.oddities.append("latency %s on %s: %s" % (rw, t, err))
                if rw == "randwrite":
                    b.sync_children()
        row["median"] = {
            t: {p: median([s.get(p) for s in row["samples"][t] if s])
                for p in PERCENTILES} for t in LAT_TARGETS}
        log("lat %-9s %s" % (rw, "  ".join(
            "%s p50/p99/p99.9=%s" % (t, "/".join(
                "%.0f" % v if v is not None else "FAIL"
                for v in row["median"][t].values())) for t in LAT_TARGETS)))
        out.append(row)
    return out


def cpu_seconds(pid):
    """User + system CPU seconds of process pid so far, its threads
    included (fields 14 and 15 of /proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_job(rw, size, loops):
    return ["--name=cpu", "--rw=" + rw, "--bs=1M", "--direct=1",
            "--ioengine=libaio", "--iodepth=16", "--size=%d" % size,
            "--loops=%d" % loops]


def cpu_sample(b, fio, t, rw, work):
    """(daemon CPU seconds per GiB, wall GB/s, error) of one run; work
    is (image, its size, passes over it)."""
    image, size, loops = work
    try:
        path = (os.path.join(b.mnt, image) if t == "mount"
                else b.start_qsd(image, "none"))
    except RuntimeError as e:
        return None, None, str(e)
    try:
        pid = b.qfs.pid if t == "mount" else b.qsd.pid
        before = cpu_seconds(pid)
        job, err = fio(b, cpu_job(rw, size, loops) +
                       ["--filename=" + path], 600)
        spent = cpu_seconds(pid) - before
    finally:
        if t == "qsd":
            b.stop_qsd()
    if err:
        return None, None, err
    part = job[rw]
    moved = part["io_bytes"] or size * loops
    return spent / (moved / GiB), part["bw_bytes"] / 1e9, None


def run_cpu(b, fio, reps, work, log):
    """work: {"read": .., "write": ..}, each (image, its size, passes)
    (writes stay inside the image: QEMU's export has its size)."""
    out = []
    for rw in ("read", "write"):
        row = {"rw": rw, "bytes": work[rw][1] * work[rw][2],
               "cpu_s_per_gib": {},
               "gbps": {}, "samples": {t: [] for t in ("mount", "qsd")},
               "errors": {}}
        for rep in range(reps):
            for t in ("mount", "qsd"):
                cpu, gbps, err = cpu_sample(b, fio, t, rw, work[rw])
                row["samples"][t].append({"cpu": cpu, "gbps": gbps})
                if err:
                    row["errors"].setdefault(t, []).append(err)
                    b.oddities.append("cpu %s on %s: %s" % (rw, t, err))
                if rw == "write":
                    b.sync_children()
        for t in ("mount", "qsd"):
            row["cpu_s_per_gib"][t] = median(
                [s["cpu"] for s in row["samples"][t]])
            row["gbps"][t] = median([s["gbps"] for s in row["samples"][t]])
        log("cpu %-5s s/GiB mount=%s qsd=%s" % (rw, *[
            "%.3f" % v if v is not None else "FAIL"
            for v in (row["cpu_s_per_gib"]["mount"],
                      row["cpu_s_per_gib"]["qsd"])]))
        out.append(row)
    return out


def fmt(x, digits=0):
    return "FAIL" if x is None else "%.*f" % (digits, x)


def p99_ratio(row):
    m, c = row["median"]["mount"].get("99"), row["median"]["child"].get("99")
    return m / c if m is not None and c else None


def md_lat(res):
    L = ["", "## Latency, QD1 4K O_DIRECT, psync (microseconds, lower is "
         "better)", "",
         "Whole request latency as fio measures it. Goal: quorumfs p99 "
         "≤ %.0f × one child's p99." % GOAL_P99_VS_CHILD, "",
         "| test | target | p50 | p99 | p99.9 |", "|---|---|---:|---:|---:|"]
    for row in res["latency"]:
        for t in LAT_TARGETS:
            md = row["median"][t]
            L.append("| %s | %s | %s | %s | %s |" % (
                row["rw"], TARGET_NAMES[t],
                *[fmt(md.get(p)) for p in PERCENTILES]))
        r = p99_ratio(row)
        L.append("| %s | **mount p99 ÷ child p99** | | %s | |" % (
            row["rw"], "—" if r is None else "%.2f %s" % (
                r, "✓" if r <= GOAL_P99_VS_CHILD else "✗")))
    return L


def md_cpu(res):
    L = ["", "## Daemon CPU per GiB, 1 MiB O_DIRECT sequential, libaio "
         "QD16 (CPU seconds, user + system, lower is better)", "",
         "| test | GiB per run | quorumfs CPU s/GiB | QEMU FUSE CPU s/GiB "
         "| quorumfs GB/s | QEMU FUSE GB/s |",
         "|---|---:|---:|---:|---:|---:|"]
    for row in res["cpu"]:
        c, g = row["cpu_s_per_gib"], row["gbps"]
        L.append("| %s | %.2f | %s | %s | %s | %s |" % (
            row["rw"], row["bytes"] / GiB, fmt(c["mount"], 3),
            fmt(c["qsd"], 3), fmt(g["mount"], 2), fmt(g["qsd"], 2)))
    return L


def goal_scores(res):
    s = []
    for row in res.get("latency", []):
        r = p99_ratio(row)
        s.append(("QD1 4K %s\np99 mount/child" % row["rw"][4:],
                  GOAL_P99_VS_CHILD / r if r else None,
                  "%.2f (goal ≤ %.0f)" % (r or 0, GOAL_P99_VS_CHILD)))
    return s
