#!/usr/bin/env bash
# Install what is missing, build quorumfs and mount a demo: three children
# under a scratch folder, threshold 2, with an event log.
#
#   scripts/demo.sh [SCRATCH-DIR]     (default /tmp/quorumfs-demo)
#
# The mount stays up; the script prints how to use and unmount it.
set -euo pipefail

cd "$(dirname "$0")/.."
scratch=${1:-/tmp/quorumfs-demo}

packages=(build-essential cmake pkg-config libfuse3-dev fuse3 libssl-dev
	libjson-c-dev liburing-dev)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
		grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	sudo=()
	[ "$(id -u)" -eq 0 ] || sudo=(sudo)
	"${sudo[@]}" apt-get update
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y \
		--no-install-recommends "${missing[@]}"
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)" >/dev/null

mnt=$scratch/mnt
if mountpoint -q "$mnt"; then
	fusermount3 -u "$mnt"
fi
mkdir -p "$scratch"/{a,b,c} "$mnt"

allow=
[ "$(id -u)" -eq 0 ] && allow=,allow_other
./build/quorumfs -o "threshold=2,log=$scratch/events.log$allow" \
	"$scratch"/a "$scratch"/b "$scratch"/c "$mnt"

echo "quorumfs demo" >"$mnt/hello.txt"
echo "Mounted $mnt over $scratch/{a,b,c} (threshold 2)."
echo "  every child holds the same file:"
md5sum "$mnt/hello.txt" "$scratch"/{a,b,c}/hello.txt | sed 's/^/    /'
cat <<EOT
  try:     qemu-img create -f qcow2 $mnt/vm.qcow2 1G
           echo corrupt | dd of=$scratch/b/hello.txt conv=notrunc; cat $mnt/hello.txt
  events:  tail -f $scratch/events.log
  unmount: fusermount3 -u $mnt
EOT
