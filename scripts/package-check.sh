#!/usr/bin/env bash
# Build the Debian package, install it with apt on this machine, check
# what it installed and that an fstab line mounts through mount(8) with
# it, then purge it and check that nothing of it is left.
#
#   scripts/package-check.sh [BUILD-DIR]      (default build-deb)
#
# It changes the system (apt-get install, then purge): run it as root,
# on a machine where quorumfs is not installed otherwise. Its output is
# recorded in README "Packaging and installing".
set -euo pipefail

cd "$(dirname "$0")/.."
build=${1:-build-deb}
scratch=$(mktemp -d /tmp/quorumfs-package-check.XXXXXX)

step() { printf '\n== %s\n' "$*"; }
fail() { echo "package-check: $*" >&2; exit 1; }
cleanup() {
	mountpoint -q "$scratch/mnt" && umount "$scratch/mnt"
	rm -rf "$scratch"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || fail "run it as root"
if dpkg-query -W -f '${Status}' quorumfs 2>/dev/null | grep -q installed; then
	fail "quorumfs is installed already; remove it first"
fi

step "build the package"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DCMAKE_INSTALL_PREFIX=/usr >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null
(cd "$build" && cpack -G DEB >/dev/null)
deb=$(ls "$PWD/$build"/quorumfs_*.deb)
echo "$(basename "$deb"): $(stat -c %s "$deb") bytes"
dpkg-deb --field "$deb" Package Version Depends Recommends

step "apt-get install ./$(basename "$deb")"
DEBIAN_FRONTEND=noninteractive apt-get install -y "$deb" 2>&1 |
	grep -E '^(Setting up|Unpacking|The following NEW)' || true
dpkg-query -W -f '${Package} ${Version} ${Status}\n' quorumfs

step "what it installed"
dpkg -L quorumfs | grep -v '/\.$' | sort
for f in /usr/sbin/quorumfs /usr/lib/systemd/system/quorumfs@.service \
	/etc/logrotate.d/quorumfs; do
	[ -e "$f" ] || fail "$f is missing"
done
quorumfs --version
if command -v man >/dev/null && [ -n "$(dpkg -L quorumfs | grep /man8/)" ]; then
	for page in $(dpkg -L quorumfs | grep '/man8/.*\.gz$'); do
		man -w "$(basename "$page" .8.gz)"
	done
fi
if command -v systemd-analyze >/dev/null; then
	cp /usr/lib/systemd/system/quorumfs@.service "$scratch/"
	ln -s quorumfs@.service "$scratch/quorumfs@mnt-q.service"
	systemd-analyze verify "$scratch/quorumfs@mnt-q.service" &&
		echo "systemd-analyze verify quorumfs@mnt-q.service: ok"
fi
logrotate --debug /etc/logrotate.d/quorumfs 2>&1 | grep -m1 'rotating pattern' || true

step "an fstab line mounts through mount(8), found in PATH's place; quorumctl"
mkdir -p "$scratch"/{a,b,c,mnt}
fstab="$scratch/fstab"
echo "$scratch/a:$scratch/b:$scratch/c $scratch/mnt fuse.quorumfs threshold=2,allow_other,nofail,control-socket=$scratch/ctl.sock 0 0" >"$fstab"
mount -T "$fstab" -a
grep " $scratch/mnt " /proc/self/mountinfo | sed 's/.* - //'
echo data >"$scratch/mnt/f"
cmp "$scratch/a/f" "$scratch/c/f" && echo "written through the mount to every child"
quorumctl -s "$scratch/ctl.sock" status "$scratch/mnt" | sed -n '3p;7,10p'
quorumctl -s "$scratch/ctl.sock" threshold "$scratch/mnt" 4 2>&1 || echo "(exit $?)"
umount "$scratch/mnt"
echo "unmounted"

step "apt-get purge quorumfs"
DEBIAN_FRONTEND=noninteractive apt-get purge -y quorumfs 2>&1 |
	grep -E '^(Removing|Purging)' || true
if dpkg-query -W -f '${Status}' quorumfs 2>/dev/null | grep -q installed; then
	fail "still installed"
fi
left=$(for f in /usr/sbin/quorumfs /usr/lib/systemd/system/quorumfs@.service \
	/etc/logrotate.d/quorumfs /etc/quorumfs /var/log/quorumfs \
	/usr/share/doc/quorumfs /usr/share/man/man8/quorumfs.8.gz \
	/usr/share/man/man8/quorumctl.8.gz /usr/sbin/quorumctl; do
	[ -e "$f" ] && echo "$f"
done || true)
[ -z "$left" ] || fail "left behind: $left"
echo "nothing of quorumfs is left"
