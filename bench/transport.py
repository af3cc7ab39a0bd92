"""The transport section of bench/run: the same jobs through the mount
with the kernel's requests on /dev/fuse (-o uring=off) and on FUSE over
io_uring (-o uring=on), the daemon restarted between them, interleaved
(off on off on ...), the median of each kept.

    fio 4K randwrite psync 4 jobs (IOPS), 4K randread libaio QD32 (IOPS),
    QD1 4K randread and randwrite p50/p99 (microseconds), 1 MiB
    sequential reads at QD1 and QD16 (GB/s), and the daemon's CPU
    seconds per GiB of the QD16 reads.

The kernel's switch (/sys/module/fuse/parameters/enable_uring) is turned
on for the section and put back. bench/run calls run() with its Bench
object and fio(), and md() draws the table.
"""

import os

MiB = 1024 * 1024
GiB = 1024 * MiB
PARAM = "/sys/module/fuse/parameters/enable_uring"
MODES = ("off", "on")


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def jobs(runtime, img, seq_size):
    """(name, unit, better, fio args, image, how to read the result)."""
    timed = ["--time_based", "--runtime=%d" % runtime, "--ramp_time=1"]
    lat = ["--lat_percentiles=1", "--percentile_list=50:99"]
    return [
        ("4K randwrite psync 4 jobs", "IOPS", "higher",
         ["--rw=randwrite", "--bs=4k", "--ioengine=psync", "--numjobs=4",
          "--group_reporting", "--size=%d" % img] + timed, "pre.img",
         lambda j: j["write"]["iops"]),
        ("4K randread libaio QD32", "IOPS", "higher",
         ["--rw=randread", "--bs=4k", "--ioengine=libaio", "--iodepth=32",
          "--size=%d" % img] + timed, "pre.img",
         lambda j: j["read"]["iops"]),
        ("QD1 4K randread p50", "µs", "lower",
         ["--rw=randread", "--bs=4k", "--ioengine=psync",
          "--size=%d" % img] + timed + lat, "pre.img",
         lambda j: pct(j["read"], "50")),
        ("QD1 4K randread p99", "µs", "lower", None, None,
         lambda j: pct(j["read"], "99")),
        ("QD1 4K randwrite p50", "µs", "lower",
         ["--rw=randwrite", "--bs=4k", "--ioengine=psync",
          "--size=%d" % img] + timed + lat, "pre.img",
         lambda j: pct(j["write"], "50")),
        ("QD1 4K randwrite p99", "µs", "lower", None, None,
         lambda j: pct(j["write"], "99")),
        ("1 MiB seq read QD1", "GB/s", "higher",
         ["--rw=read", "--bs=1M", "--ioengine=libaio", "--iodepth=1",
          "--size=%d" % seq_size], "seq.img",
         lambda j: j["read"]["bw_bytes"] / 1e9),
        ("1 MiB seq read QD16", "GB/s", "higher",
         ["--rw=read", "--bs=1M", "--ioengine=libaio", "--iodepth=16",
          "--size=%d" % seq_size], "seq.img",
         lambda j: j["read"]["bw_bytes"] / 1e9),
        ("CPU per GiB, seq read QD16", "s/GiB", "lower", None, None,
         None),
    ]


def pct(part, p):
    table = (part.get("lat_ns") or {}).get("percentile") or {}
    for key, ns in table.items():
        if abs(float(key) - float(p)) < 1e-6:
            return ns / 1000.0
    return None


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_pass(b, fio, table, samples):
    """Every job once on the running daemon; values into samples."""
    last = None
    for name, _, _, args, image, value in table:
        if args is None and value is not None:  # another percentile
            samples[name].append(value(last) if last else None)
            continue
        if args is None:  # the CPU of the job before
            continue
        before = cpu_seconds(b.qfs.pid)
        job, err = fio(b, ["--name=t", "--direct=1"] + args +
                       ["--filename=" + os.path.join(b.mnt, image)], 600)
        spent = cpu_seconds(b.qfs.pid) - before
        last = job
        samples[name].append(value(job) if job else None)
        if err:
            b.oddities.append("transport %s: %s" % (name, err))
        elif "QD16" in name:
            moved = job["read"]["io_bytes"] or 1
            samples["CPU per GiB, seq read QD16"].append(
                spent / (moved / GiB))
        if "write" in name:
            b.sync_children()


def restart(b, mode, base_opts):
    b.stop_daemon()
    b.args.qfs_opts = ",".join(o for o in (base_opts, "uring=" + mode) if o)
    b.start_daemon()


def run(b, fio, reps, runtime, img, seq_size, log):
    if not os.path.exists(PARAM):
        return {"skipped": "this kernel has no FUSE over io_uring"}
    with open(PARAM) as f:
        was = f.read().strip()
    base_opts = b.args.qfs_opts
    table = jobs(runtime, img, seq_size)
    samples = {m: {row[0]: [] for row in table} for m in MODES}
    try:
        with open(PARAM, "w") as f:
            f.write("Y")
        for rep in range(reps):
            for mode in MODES:
                restart(b, mode, base_opts)
                one_pass(b, fio, table, samples[mode])
    finally:
        with open(PARAM, "w") as f:
            f.write(was)
        b.args.qfs_opts = base_opts
        b.stop_daemon()
        b.start_daemon()
    rows = []
    for name, unit, better, _, _, _ in table:
        off, on = (median(samples[m][name]) for m in MODES)
        rows.append({"test": name, "unit": unit, "better": better,
                     "off": off, "on": on,
                     "samples": {m: samples[m][name] for m in MODES}})
        log("transport %-28s off=%s on=%s" % (name, off, on))
    return {"rows": rows}


def fmt(x):
    if x is None:
        return "FAIL"
    return "%.0f" % x if x >= 100 else "%.2f" % x


def md(res):
    t = res["transport"]
    L = ["", "## Transport: /dev/fuse against FUSE over io_uring "
         "(the same mount, the daemon restarted between them)", ""]
    if "skipped" in t:
        return L + ["Skipped: %s." % t["skipped"]]
    L += ["| test | unit | /dev/fuse | io_uring | io_uring ÷ /dev/fuse |",
          "|---|---|---:|---:|---:|"]
    for r in t["rows"]:
        ratio = (r["on"] / r["off"] if r["on"] is not None and r["off"]
                 else None)
        better = ratio is not None and (
            ratio > 1 if r["better"] == "higher" else ratio < 1)
        L.append("| %s | %s | %s | %s | %s |" % (
            r["test"], r["unit"], fmt(r["off"]), fmt(r["on"]),
            "—" if ratio is None else "%.2f %s" % (
                ratio, "(better)" if better else "(worse)")))
    return L
