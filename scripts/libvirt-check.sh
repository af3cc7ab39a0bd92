#!/usr/bin/env bash
# A libvirt domain whose disks are images on a quorumfs mount: install
# libvirt and QEMU from Debian, build quorumfs, mount a three-child set
# with allow_other, and boot a transient domain (TCG) whose two disks are
# qcow2 images on the mount with cache='none'. The guest is
# test/test_vm.py's (Debian's kernel, a busybox initramfs built by
# scripts/libvirt-guest.py): it writes a known pattern raw on one disk
# and as files on an ext2 file system on the other, verifies both from
# the devices, prints "VMTEST: PASS" on its serial console and powers
# off. The host then reads the pattern back through the mount and
# compares the three children's copies of each image.
#
#   scripts/libvirt-check.sh [BUILD-DIR]          (default build)
#
# Run it as root on a machine that may get packages installed (it is
# not part of scripts/test.sh for that reason). Without systemd as PID 1
# it runs libvirtd and virtlogd itself and stops them at the end; a
# daemon that already answers on qemu:///system is used and left alone.
# Whatever happens, the domain is destroyed, the daemons it started are
# stopped, the set is unmounted and the scratch directory removed.
# Its output is recorded in README "libvirt".
#
#   QFS_LIBVIRT_IO=threads          io='threads' instead of io='native'
#   QFS_LIBVIRT_BOOT_TIMEOUT=S      seconds the guest may take (default 300)
set -euo pipefail

cd "$(dirname "$0")/.."
build=${1:-build}
io=${QFS_LIBVIRT_IO:-native}
boot_timeout=${QFS_LIBVIRT_BOOT_TIMEOUT:-300}
name=quorumfs-check-$$
scratch=
uri=qemu:///system
qfs_pid=
libvirtd_pid=
virtlogd_pid=
started_unit=
qemu_pid=
created=0

step() { printf '\n== %s\n' "$*"; }
fail() { echo "libvirt-check: FAIL: $*" >&2; exit 1; }
v() { timeout 60 virsh -q -c "$uri" "$@"; }

# wait_until SECONDS WHAT COMMAND...: run COMMAND every 0.2 s until it
# succeeds; fail naming WHAT after SECONDS.
wait_until() {
	local end=$((SECONDS + $1)) what=$2
	shift 2
	until "$@" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$end" ] || fail "timed out waiting for $what"
		sleep 0.2
	done
}

# stop_pid NAME PID: SIGTERM, up to 30 s, then SIGKILL; reap it.
stop_pid() {
	local n=0 st=0
	kill -TERM "$2" 2>/dev/null || true
	while kill -0 "$2" 2>/dev/null && [ $n -lt 150 ]; do
		sleep 0.2
		n=$((n + 1))
	done
	if kill -0 "$2" 2>/dev/null; then
		echo "$1 (pid $2) ignored SIGTERM for 30 s: SIGKILL"
		kill -KILL "$2" 2>/dev/null || true
	fi
	wait "$2" 2>/dev/null || st=$?
	echo "$1 stopped (exit $st)"
}

# mount_set OPTIONS: quorumfs -f in the background on the three children.
mount_set() {
	"$qfs" -f -o "threshold=2,log=$scratch/events.jsonl,control-socket=$scratch/ctl.sock$1" \
		"$scratch/children/a" "$scratch/children/b" "$scratch/children/c" \
		"$scratch/mnt" </dev/null >>"$scratch/quorumfs.log" 2>&1 &
	qfs_pid=$!
	wait_until 30 "the mount" mountpoint -q "$scratch/mnt"
	stat -c '%n %U:%G %a' "$scratch/mnt/." >/dev/null
}

# unmount_set: fusermount3 -u, then quorumfs must exit 0 within 30 s.
unmount_set() {
	local n=0 st=0
	[ -n "$qfs_pid" ] || return 0
	if mountpoint -q "$scratch/mnt"; then
		timeout 30 fusermount3 -u "$scratch/mnt" ||
			echo "fusermount3 -u $scratch/mnt failed"
	fi
	while kill -0 "$qfs_pid" 2>/dev/null && [ $n -lt 150 ]; do
		sleep 0.2
		n=$((n + 1))
	done
	if kill -0 "$qfs_pid" 2>/dev/null; then
		echo "quorumfs (pid $qfs_pid) still runs 30 s after the unmount: SIGKILL"
		kill -KILL "$qfs_pid" 2>/dev/null || true
	fi
	wait "$qfs_pid" || st=$?
	qfs_pid=
	mountpoint -q "$scratch/mnt" && umount -l "$scratch/mnt"
	echo "unmounted; quorumfs exited $st"
	[ "$st" -eq 0 ] || { sed 's/^/  quorumfs: /' "$scratch/quorumfs.log"; return 1; }
}

stop_libvirt() {
	if [ -n "$libvirtd_pid" ]; then
		stop_pid libvirtd "$libvirtd_pid"
		libvirtd_pid=
	fi
	if [ -n "$virtlogd_pid" ]; then
		stop_pid virtlogd "$virtlogd_pid"
		virtlogd_pid=
	fi
	if [ -n "$started_unit" ]; then
		systemctl stop "$started_unit" && echo "systemctl stop $started_unit"
		started_unit=
	fi
}

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	if [ "$created" = 1 ] && v domstate "$name" >/dev/null 2>&1; then
		v destroy "$name" >/dev/null && echo "domain $name destroyed"
	fi
	# A QEMU its daemon did not take down (the daemon died first).
	if [ -n "$qemu_pid" ] && [ "$(cat "/proc/$qemu_pid/comm" 2>/dev/null)" = qemu-system-x86 ]; then
		kill -KILL "$qemu_pid" && echo "QEMU (pid $qemu_pid) killed"
	fi
	stop_libvirt
	if [ -n "$scratch" ]; then
		unmount_set || rc=1
		rm -f "/var/log/libvirt/qemu/$name.log"
		if mountpoint -q "$scratch/mnt"; then
			echo "$scratch/mnt is still mounted: $scratch left in place"
			rc=1
		else
			rm -rf --one-file-system "$scratch"
		fi
	fi
	if [ "$rc" -eq 0 ]; then
		echo "libvirt-check: PASS"
	else
		echo "libvirt-check: FAIL (exit $rc)" >&2
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" -eq 0 ] || fail "run it as root (it installs packages and runs libvirt's system daemon)"
case $io in native | threads) ;; *) fail "QFS_LIBVIRT_IO is native or threads, not '$io'" ;; esac

step "packages"
# libvirt-daemon-system brings libvirtd, virtlogd, the QEMU driver and
# the libvirt-qemu user QEMU runs as; the rest are the guest's parts
# (test/vm_util.py), the host's read-back tools and quorumfs's build.
packages=(libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
	busybox-static e2fsprogs attr fuse3 util-linux python3 build-essential
	cmake pkg-config libfuse3-dev libjson-c-dev liburing-dev libssl-dev)
ls /boot/vmlinuz-* >/dev/null 2>&1 || packages+=(linux-image-amd64)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f '${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' ||
		missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	timeout 600 apt-get update >/dev/null
	DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get \
		-o DPkg::Lock::Timeout=300 install -y --no-install-recommends \
		"${missing[@]}" >/dev/null
else
	echo "all there: ${packages[*]}"
fi
libvirtd --version
qemu-system-x86_64 --version | sed -n 1p

step "build quorumfs ($build)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null
qfs=$(cd "$build" && pwd)/quorumfs
quorumctl=$(dirname "$qfs")/quorumctl
"$qfs" --version | sed -n 1p

# QEMU runs as libvirt's QEMU user and must reach the images on the
# mount and the guest's kernel: the directory is searchable by all, not
# listable.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/quorumfs-libvirt.XXXXXX")
chmod 0711 "$scratch"
mkdir -p "$scratch"/children/{a,b,c} "$scratch"/{mnt,guest,run}

step "the guest (test/vm_util.py)"
echo "scratch directory \$SCRATCH: $scratch"
guest_vars=$(python3 scripts/libvirt-guest.py "$scratch/guest")
eval "$guest_vars"
echo "kernel $KERNEL_VERSION, modules: $MODULES"
echo "pattern A: $LEN bytes, md5 $(md5sum <"$scratch/guest/a.bin" | cut -d' ' -f1)"

step "libvirt's daemon"
if [ -d /run/systemd/system ]; then
	unit=libvirtd.service
	[ -e /usr/lib/systemd/system/virtqemud.socket ] && unit=virtqemud.socket
	if ! systemctl is-active -q "$unit"; then
		timeout 120 systemctl start "$unit"
		started_unit=$unit
		echo "systemctl start $unit"
	fi
	wait_until 60 "libvirt on $uri" v version
elif v version >/dev/null 2>&1; then
	echo "a daemon answers on $uri already: using it"
else
	# Without systemd nothing starts virtlogd (QEMU's output goes through
	# it) or libvirtd on demand. libvirtd gets sockets in the scratch
	# directory and a network namespace of its own, so that a virtual
	# network the host's configuration autostarts adds no bridge or
	# firewall rules to the host (the domain has no network).
	if ! pgrep -x virtlogd >/dev/null; then
		echo "log_outputs = \"3:file:$scratch/virtlogd.log\"" >"$scratch/virtlogd.conf"
		virtlogd -f "$scratch/virtlogd.conf" -p "$scratch/run/virtlogd.pid" \
			</dev/null >>"$scratch/virtlogd.log" 2>&1 &
		virtlogd_pid=$!
		wait_until 30 "virtlogd's socket" test -S /run/libvirt/virtlogd-sock
		echo "virtlogd started (pid $virtlogd_pid)"
	fi
	daemon=libvirtd sock=libvirt-sock
	if ! command -v libvirtd >/dev/null && command -v virtqemud >/dev/null; then
		daemon=virtqemud sock=virtqemud-sock
	fi
	cat >"$scratch/$daemon.conf" <<-EOF
		unix_sock_dir = "$scratch/run"
		auth_unix_ro = "none"
		auth_unix_rw = "none"
		log_outputs = "3:file:$scratch/$daemon.log"
	EOF
	unshare --net "$daemon" -f "$scratch/$daemon.conf" -p "$scratch/run/$daemon.pid" \
		</dev/null >>"$scratch/$daemon.log" 2>&1 &
	libvirtd_pid=$!
	uri="qemu:///system?socket=$scratch/run/$sock"
	wait_until 60 "$daemon on $uri" v version
	echo "$daemon started (pid $libvirtd_pid), ${uri/"$scratch"/\$SCRATCH}"
fi
v version | sed -n '/hypervisor/p'

cat >"$scratch/domain.xml" <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$scratch/guest/vmlinuz</kernel>
    <initrd>$scratch/guest/initramfs.cpio</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet loglevel=4 vmtest.write=1</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='$io'/>
      <source file='$scratch/mnt/vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='$io'/>
      <source file='$scratch/mnt/vdb.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='$scratch/serial.log'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOF

step "without allow_other, libvirt's QEMU user cannot open the images"
mount_set ""
for d in vda vdb; do
	timeout 60 qemu-img create -q -f qcow2 "$scratch/mnt/$d.qcow2" 64M
done
stat -c '%A %U:%G %s %n' "$scratch"/mnt/*.qcow2 | sed "s|$scratch/||"
if out=$(v create "$scratch/domain.xml" 2>&1); then
	created=1
	fail "libvirt started the domain on a mount without allow_other: $out"
fi
echo "$out" | grep -v '^$' | sed "s|$scratch|\$SCRATCH|g"
echo "$out" | grep -q 'Permission denied' || fail "refused for another reason"
unmount_set

step "with allow_other: a transient domain, cache='none' io='$io'"
mount_set ",allow_other"
echo "quorumfs runs as $(id -un): allow_other needs no user_allow_other in /etc/fuse.conf (not changed)"
grep " $scratch/mnt " /proc/self/mountinfo | sed 's/.* - //' | sed "s|$scratch|\$SCRATCH|g"
start=$SECONDS
created=1
v create "$scratch/domain.xml" | sed "s|$scratch|\$SCRATCH|g"
qemu_pid=$(cat "/run/libvirt/qemu/$name.pid" 2>/dev/null || true)
[ -z "$qemu_pid" ] || echo "QEMU pid $qemu_pid runs as $(ps -o user= -p "$qemu_pid")"
# How libvirt opened the images (its QEMU command line, in the domain's log).
{ grep -o '"driver":"file","filename":"[^"]*","aio":"[^"]*"[^}]*}' \
	"/var/log/libvirt/qemu/$name.log" || true; } | sed "s|$scratch|\$SCRATCH|g" | sort -u
echo "while it runs (libvirt's DAC labelling, through the mount into every child):"
for f in "$scratch"/mnt/vda.qcow2 "$scratch"/children/*/vda.qcow2; do
	echo "  ${f#"$scratch"/} $(stat -c '%U:%G' "$f")" \
		"$(getfattr -h --absolute-names -n trusted.libvirt.security.dac --only-values "$f" 2>/dev/null |
			sed 's/^/trusted.libvirt.security.dac=/')"
done

step "the guest runs (up to ${boot_timeout}s)"
end=$((SECONDS + boot_timeout))
while v domstate "$name" >/dev/null 2>&1; do
	grep -q 'VMTEST: FAIL' "$scratch/serial.log" 2>/dev/null && break
	[ "$SECONDS" -lt "$end" ] || fail "the guest did not power off within ${boot_timeout}s: $(tail -5 "$scratch/serial.log")"
	sleep 1
done
grep -a 'VMTEST:' "$scratch/serial.log" || true
grep -aq 'VMTEST: FAIL' "$scratch/serial.log" && fail "the guest failed"
if ! grep -aq 'VMTEST: VERIFIED final' "$scratch/serial.log" ||
	! grep -aq 'VMTEST: PASS' "$scratch/serial.log"; then
	fail "the guest powered off without PASS: $(tail -20 "$scratch/serial.log")"
fi
created=0
qemu_pid=
{ grep 'shutting down' "/var/log/libvirt/qemu/$name.log" || true; } | tail -n 1 | sed 's/^[^ ]* //'
echo "domain gone after $((SECONDS - start)) s"
guest_md5=$(sed -n 's/.*VMTEST: WRITTEN A \([0-9a-f]*\).*/\1/p' "$scratch/serial.log")

step "the host reads it back through the mount"
for f in "$scratch"/mnt/vda.qcow2 "$scratch"/children/*/vda.qcow2; do
	echo "  ${f#"$scratch"/} $(stat -c '%U:%G' "$f"), libvirt xattrs:" \
		"$(getfattr -h --absolute-names -d -m '^trusted\.libvirt' "$f" 2>/dev/null | grep -c '^trusted' || true)"
done
for d in vda vdb; do
	timeout 120 qemu-img check -q -f qcow2 "$scratch/mnt/$d.qcow2"
	timeout 120 qemu-img convert -f qcow2 -O raw "$scratch/mnt/$d.qcow2" "$scratch/$d.raw"
done
echo "qemu-img check: no errors in vda.qcow2, vdb.qcow2"
host_md5=$(dd if="$scratch/vda.raw" bs=64K skip=$((A_OFF / 65536)) count=$((LEN / 65536)) 2>/dev/null |
	md5sum | cut -d' ' -f1)
cmp -n "$LEN" -i "$A_OFF:0" "$scratch/vda.raw" "$scratch/guest/a.bin" ||
	fail "pattern A at $A_OFF of vda.qcow2 is not what the guest wrote"
[ "$host_md5" = "$guest_md5" ] || fail "md5 $host_md5 on the host, $guest_md5 in the guest"
echo "vda.qcow2: pattern A at offset $A_OFF, md5 $host_md5, as the guest wrote it"
for i in $(seq 0 $((FILES - 1))); do
	rm -f "$scratch/data.bin"
	timeout 60 debugfs -R "dump /data$i.bin $scratch/data.bin" "$scratch/vdb.raw" 2>/dev/null
	cmp "$scratch/data.bin" "$scratch/guest/a.bin" || fail "data$i.bin in vdb.qcow2 differs"
done
echo "vdb.qcow2: ext2 with data0..data$((FILES - 1)).bin, each pattern A (debugfs dump)"
rm -f "$scratch"/*.raw "$scratch/data.bin"

step "the children"
for d in vda vdb; do
	for c in b c; do
		cmp "$scratch/children/a/$d.qcow2" "$scratch/children/$c/$d.qcow2" ||
			fail "the children's copies of $d.qcow2 differ (a and $c)"
	done
	echo "$d.qcow2: identical in a, b and c ($(stat -c %s "$scratch/children/a/$d.qcow2") bytes," \
		"sha256 $(sha256sum <"$scratch/children/a/$d.qcow2" | cut -c1-16)...)"
done
"$quorumctl" -s "$scratch/ctl.sock" status "$scratch/mnt" | grep -E '^ +state:'
bad=$(grep -c '"event":"QUORUM_' "$scratch/events.jsonl" || true)
echo "QUORUM_* events: $bad"
[ "$bad" -eq 0 ] || fail "a child was reported: $(grep '"event":"QUORUM_' "$scratch/events.jsonl" | head -3)"

step "clean up"
stop_libvirt
unmount_set
echo "took $SECONDS s"
