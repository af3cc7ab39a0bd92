"""A small Linux guest for test_vm.py: the distribution's kernel, an
initramfs built here at run time (busybox, the virtio block modules, a
test pattern and an /init script), and QEMU run as a process the test
owns.

Nothing is downloaded. The kernel is /boot/vmlinuz-VERSION with its
modules in /lib/modules/VERSION (Debian: linux-image-amd64), busybox is
the static one (busybox-static), QEMU is qemu-system-x86_64
(qemu-system-x86). The initramfs is a cpio "newc" archive written by
Python, so building it needs no root and no cpio binary.

The guest talks to the test over its serial console: it prints lines
starting with "VMTEST:" and, where the test must act while the guest
waits, reads one line from the console (the test writes it to QEMU's
standard input).
"""

import ctypes
import gzip
import lzma
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import pytest

KiB = 1024
MiB = 1024 * KiB

BUSYBOX = "/bin/busybox"
QEMU = "qemu-system-x86_64"

# The modules /dev/vda needs on a kernel that builds virtio as modules
# (Debian's does); their dependencies come from modules.dep. ext4 mounts
# the guest's ext2 file system (CONFIG_EXT4_USE_FOR_EXT2).
GUEST_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")

MARK = "VMTEST:"


# --- what the host has ----------------------------------------------------

def _version_key(ver):
    parts = []
    for p in ver.replace("-", ".").split("."):
        parts.append((0, int(p), "") if p.isdigit() else (1, 0, p))
    return parts


def find_kernel():
    """(vmlinuz path, version) of the newest kernel in /boot whose modules
    are installed, or None. QFS_VM_KERNEL=PATH picks one (its version is
    the file name after "vmlinuz-")."""
    forced = os.environ.get("QFS_VM_KERNEL")
    if forced:
        ver = os.path.basename(forced).partition("vmlinuz-")[2]
        return forced, ver
    found = []
    try:
        names = os.listdir("/boot")
    except FileNotFoundError:
        return None
    for name in names:
        if not name.startswith("vmlinuz-"):
            continue
        ver = name[len("vmlinuz-"):]
        path = os.path.join("/boot", name)
        if os.access(path, os.R_OK) and \
                os.path.exists("/lib/modules/%s/modules.dep" % ver):
            found.append((_version_key(ver), path, ver))
    if not found:
        return None
    _, path, ver = max(found)
    return path, ver


def missing_tools():
    """A sentence naming what the VM test needs and the host lacks, or
    None when everything is there."""
    missing = []
    if shutil.which(QEMU) is None:
        missing.append("%s (package qemu-system-x86)" % QEMU)
    if find_kernel() is None:
        missing.append("a kernel in /boot with its modules "
                       "(package linux-image-amd64)")
    if not os.access(BUSYBOX, os.X_OK):
        missing.append("%s (package busybox-static)" % BUSYBOX)
    elif not _is_static(BUSYBOX):
        missing.append("a static %s (package busybox-static)" % BUSYBOX)
    for tool in ("qemu-img", "debugfs"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if not missing:
        return None
    return "the VM test needs " + ", ".join(missing)


def _is_static(path):
    """True when the ELF file has no program interpreter (PT_INTERP)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        if int.from_bytes(table[i * phentsize:i * phentsize + 4],
                          "little") == 3:  # PT_INTERP
            return False
    return True


# --- the initramfs ----------------------------------------------------------

class Cpio:
    """A cpio archive in the "newc" format the kernel unpacks."""

    def __init__(self):
        self.parts = []
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(name_b), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.parts.append(hdr + name_b)
        self.parts.append(b"\0" * (-(len(hdr) + len(name_b)) % 4))
        self.parts.append(data)
        self.parts.append(b"\0" * (-len(data) % 4))

    def dir(self, name, mode=0o755):
        self._entry(name, 0o040000 | mode)

    def file(self, name, data, mode=0o644):
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name, target):
        self._entry(name, 0o120000 | 0o777, target.encode())

    def chardev(self, name, major, minor, mode=0o600):
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def bytes(self):
        self._entry("TRAILER!!!", 0)
        out = b"".join(self.parts)
        return out + b"\0" * (-len(out) % 512)


def module_order(version, names):
    """Paths (relative to /lib/modules/VERSION) of the modules names need,
    each after its dependencies, from modules.dep. Modules the kernel has
    built in are not in modules.dep's keys and are skipped."""
    root = "/lib/modules/%s" % version
    deps = {}
    by_name = {}
    with open(os.path.join(root, "modules.dep")) as f:
        for line in f:
            mod, _, rest = line.partition(":")
            mod = mod.strip()
            deps[mod] = rest.split()
            base = os.path.basename(mod).split(".ko")[0]
            by_name[base.replace("-", "_")] = mod
    builtin = set()
    try:
        with open(os.path.join(root, "modules.builtin")) as f:
            for line in f:
                base = os.path.basename(line.strip()).split(".ko")[0]
                builtin.add(base.replace("-", "_"))
    except FileNotFoundError:
        pass
    order = []

    def visit(mod):
        if mod in order:
            return
        for d in deps.get(mod, []):
            visit(d)
        order.append(mod)

    for name in names:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtin:
            raise FileNotFoundError("kernel %s has no module %s" % (
                version, name))
    return order


def read_module(path):
    """A module's bytes, decompressed: insmod loads plain ELF."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        pytest.skip("%s is zstd-compressed, which this helper cannot "
                    "unpack" % path)
    return data


def pattern(seed, length):
    """The deterministic bytes the guest writes (and the host checks)."""
    return random.Random(seed).randbytes(length)


# The guest's /init. Words on the kernel command line steer it:
#   vmtest.write=1  write pattern A raw at A_OFF on /dev/vda, make an ext2
#                   file system on /dev/vdb with FILES copies of it, and
#                   verify both
#   vmtest.wait=1   print "VMTEST: WAITING" and read one line from the
#                   console (the test acts on the disks meanwhile)
#   vmtest.more=1   then write pattern B raw at B_OFF and as more.bin on
#                   the file system, and verify B too from then on
# Every boot ends with a verification from the devices (page cache
# dropped, raw reads with O_DIRECT, the file system mounted afresh) and
# "VMTEST: PASS" or "VMTEST: FAIL reason", then powers off.
INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

fail() {
	echo "VMTEST: FAIL $*"
	sync
	poweroff -f
}

# A_OFF, B_OFF, LEN (bytes, multiples of 64 KiB) and FILES, from the host.
. /vmtest.conf
WRITE=0 WAIT=0 MORE=0 HASMORE=0
for w in $(cat /proc/cmdline); do
	case $w in
	vmtest.write=1) WRITE=1 ;;
	vmtest.wait=1) WAIT=1 ;;
	vmtest.more=1) MORE=1 ;;
	esac
done

echo "VMTEST: BOOTED $(uname -r)"
while read -r m; do
	insmod "/lib/modules/$m" || fail "insmod $m"
done </modules.order

n=0
while [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; do
	n=$((n + 1))
	[ $n -gt 200 ] && fail "no /dev/vda and /dev/vdb"
	usleep 50000
done
echo "VMTEST: DISKS $(cat /sys/block/vda/size) $(cat /sys/block/vdb/size)"

BS=65536
COUNT=$((LEN / BS))
sum() { md5sum | cut -d' ' -f1; }
WANT_A=$(sum </a.bin)
WANT_B=$(sum </b.bin)

drop() {
	sync
	blockdev --flushbufs /dev/vda
	blockdev --flushbufs /dev/vdb
	echo 3 >/proc/sys/vm/drop_caches
}

# check_raw NAME OFFSET WANT: the raw bytes on /dev/vda, read with O_DIRECT.
check_raw() {
	got=$(dd if=/dev/vda bs=$BS skip=$(($2 / BS)) count=$COUNT iflag=direct \
		2>/dev/null | sum)
	[ "$got" = "$3" ] || fail "$1 on /dev/vda reads $got, wrote $3"
}

verify() {
	drop
	check_raw A $A_OFF $WANT_A
	[ $HASMORE = 1 ] && check_raw B $B_OFF $WANT_B
	mount -t ext4 -o ro /dev/vdb /mnt || fail "$1: mount /dev/vdb"
	i=0
	while [ $i -lt $FILES ]; do
		cmp /a.bin /mnt/data$i.bin || fail "$1: data$i.bin differs"
		i=$((i + 1))
	done
	if [ $HASMORE = 1 ]; then
		cmp /b.bin /mnt/more.bin || fail "$1: more.bin differs"
	fi
	umount /mnt || fail "$1: umount"
	echo "VMTEST: VERIFIED $1"
}

if [ $WRITE = 1 ]; then
	dd if=/a.bin of=/dev/vda bs=$BS seek=$((A_OFF / BS)) oflag=direct \
		conv=notrunc 2>/dev/null || fail "dd A to /dev/vda"
	mke2fs -q /dev/vdb >/dev/null || fail "mke2fs /dev/vdb"
	mount -t ext4 /dev/vdb /mnt || fail "mount /dev/vdb"
	i=0
	while [ $i -lt $FILES ]; do
		dd if=/a.bin of=/mnt/data$i.bin bs=$BS conv=fsync 2>/dev/null ||
			fail "write data$i.bin"
		i=$((i + 1))
	done
	umount /mnt || fail "umount after writing"
	sync
	echo "VMTEST: WRITTEN A $WANT_A"
	verify written
fi

if [ $WAIT = 1 ]; then
	echo "VMTEST: WAITING"
	read -r reply
	echo "VMTEST: GOT $reply"
fi

if [ $MORE = 1 ]; then
	drop
	dd if=/b.bin of=/dev/vda bs=$BS seek=$((B_OFF / BS)) oflag=direct \
		conv=notrunc 2>/dev/null || fail "dd B to /dev/vda"
	mount -t ext4 /dev/vdb /mnt || fail "mount /dev/vdb for more"
	dd if=/b.bin of=/mnt/more.bin bs=$BS conv=fsync 2>/dev/null ||
		fail "write more.bin"
	umount /mnt || fail "umount after more"
	sync
	HASMORE=1
	echo "VMTEST: WRITTEN B $WANT_B"
fi

verify final
echo "VMTEST: PASS"
sync
poweroff -f
"""

# Where on /dev/vda the guest writes patterns A and B, and how long each
# is; FILES copies of A go onto the file system on /dev/vdb.
A_OFF = 16 * MiB
B_OFF = 32 * MiB
LEN = 4 * MiB
FILES = 3


def patterns():
    """The bytes of patterns A and B."""
    return pattern("quorumfs-vm-A", LEN), pattern("quorumfs-vm-B", LEN)


def build_initramfs(dest, version):
    """Write the guest's initramfs to dest: busybox, the modules, /init,
    /vmtest.conf and the patterns as /a.bin and /b.bin. Returns the
    names of the modules, in the order the guest loads them."""
    cpio = Cpio()
    for d in ("bin", "dev", "lib", "lib/modules", "mnt", "proc", "sys",
              "tmp"):
        cpio.dir(d)
    # The kernel opens /dev/console for /init before anything mounts
    # devtmpfs, so the archive carries the node itself.
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", read_file(BUSYBOX), 0o755)
    cpio.symlink("bin/sh", "busybox")
    order = []
    for rel in module_order(version, GUEST_MODULES):
        name = os.path.basename(rel).split(".ko")[0] + ".ko"
        cpio.file("lib/modules/" + name,
                  read_module("/lib/modules/%s/%s" % (version, rel)))
        order.append(name)
    cpio.file("modules.order", ("\n".join(order) + "\n").encode())
    a, b = patterns()
    cpio.file("a.bin", a)
    cpio.file("b.bin", b)
    cpio.file("vmtest.conf", (
        "A_OFF=%d\nB_OFF=%d\nLEN=%d\nFILES=%d\n" % (
            A_OFF, B_OFF, LEN, FILES)).encode())
    cpio.file("init", INIT.encode(), 0o755)
    with open(dest, "wb") as f:
        f.write(cpio.bytes())
    return order


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


# --- the accelerator ----------------------------------------------------------

_accel = []


def accelerator(kernel):
    """"kvm" when KVM really runs a guest here, else "tcg". /dev/kvm can
    be present and open while a vCPU never runs (nested virtualisation
    without support), so the probe boots the kernel without an initramfs
    and waits a few seconds for its first console line. QFS_VM_ACCEL
    forces a choice. Decided once per session."""
    forced = os.environ.get("QFS_VM_ACCEL")
    if forced:
        return forced
    if _accel:
        return _accel[0]
    choice = "tcg"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        proc = subprocess.Popen(
            [QEMU, "-accel", "kvm", "-nodefaults", "-display", "none",
             "-serial", "stdio", "-no-reboot", "-m", "128M",
             "-kernel", kernel, "-append", "console=ttyS0 panic=-1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)
        seen = []

        def reader():
            for line in proc.stdout:
                if b"Linux version" in line:
                    seen.append(True)
                    return

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t.join(5)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        t.join(1)
        proc.stdout.close()
        if seen:
            choice = "kvm"
    _accel.append(choice)
    return choice


# --- the VM process -------------------------------------------------------------

def _die_with_parent():
    """In the child, before exec: SIGKILL when the test process dies, so
    that no QEMU outlives a run that was killed (pytest-timeout's thread
    method exits without teardown)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class VM:
    """One qemu-system-x86_64 process: the serial console on its standard
    output goes to a log file; its standard input reaches the guest's
    console. Killed by kill(), which the fixture calls whatever happens."""

    def __init__(self, workdir, kernel, initrd, disks, append="",
                 accel="tcg", memory="256M"):
        self.workdir = str(workdir)
        self.serial = os.path.join(self.workdir, "serial.log")
        self.stderr_path = os.path.join(self.workdir, "qemu.stderr")
        self.cmd = [QEMU, "-accel", accel, "-nodefaults", "-nographic",
                    "-serial", "stdio", "-no-reboot", "-m", memory,
                    "-kernel", kernel, "-initrd", str(initrd),
                    "-append", ("console=ttyS0 panic=-1 quiet loglevel=4 "
                                + append).strip()]
        if accel == "kvm":
            self.cmd += ["-cpu", "host"]
        for path, fmt, cache in disks:
            self.cmd += ["-drive", "file=%s,format=%s,if=virtio,cache=%s,"
                         "aio=threads" % (path, fmt, cache)]
        self.proc = None
        self.started = None

    def start(self):
        with open(self.serial, "ab") as out, \
                open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE,
                                         stdout=out, stderr=err,
                                         preexec_fn=_die_with_parent)
        self.started = time.monotonic()
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def output(self):
        try:
            with open(self.serial, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def marks(self):
        """The guest's "VMTEST:" lines so far, without the prefix."""
        out = []
        for line in self.output().splitlines():
            i = line.find(MARK)
            if i >= 0:
                out.append(line[i + len(MARK):].strip())
        return out

    def describe(self):
        """The tail of the serial log and QEMU's stderr, for a failure."""
        try:
            err = read_file(self.stderr_path).decode(errors="replace")
        except FileNotFoundError:
            err = ""
        return "command: %s\nserial (tail):\n%s\nqemu stderr:\n%s" % (
            " ".join(self.cmd), self.output()[-6000:], err[-2000:])

    def wait_mark(self, prefix, timeout):
        """Wait until the guest prints a mark starting with prefix and
        return it. A FAIL mark, QEMU exiting first, or the deadline fail
        the test."""
        end = time.monotonic() + timeout
        while True:
            for m in self.marks():
                if m.startswith("FAIL"):
                    pytest.fail("the guest failed: %s\n%s" % (
                        m, self.describe()))
                if m.startswith(prefix):
                    return m
            if not self.running():
                pytest.fail("QEMU exited with status %s before the guest "
                            "printed %r\n%s" % (self.proc.returncode,
                                                prefix, self.describe()))
            if time.monotonic() > end:
                pytest.fail("timed out after %.0fs waiting for the guest "
                            "to print %r\n%s" % (timeout, prefix,
                                                 self.describe()))
            time.sleep(0.05)

    def send(self, line):
        """One line to the guest's console."""
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_exit(self, timeout):
        """Wait for QEMU to exit on its own (the guest powered off) and
        return its exit status."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("QEMU did not exit within %.0fs\n%s" % (
                timeout, self.describe()))

    def kill(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
