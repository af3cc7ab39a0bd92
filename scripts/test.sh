#!/usr/bin/env bash
# Install the build and test dependencies, build quorumfs, run the unit
# tests and the mount tests.
#
#   scripts/test.sh [--sanitize] [-- PYTEST-ARGS...]
#
# --sanitize builds into build-asan with AddressSanitizer and
# UndefinedBehaviorSanitizer and runs the same tests against that binary:
# the mount fixtures fail a test whose daemon does not exit 0 after
# unmount or prints a sanitizer report, so leaks fail too.
#
# Environment: QFS_SKIP_INSTALL=1 skips apt-get; CI=true builds with
# -Werror; QFS_FUZZ_SECONDS (default 30, 0 skips) bounds the fuzz run at
# the end; QFS_URING_SUITE=0 skips the second run of the data-path tests
# over FUSE-over-io_uring; QFS_WRAPPER (e.g. "valgrind --error-exitcode=99 -q") prefixes
# the daemon; PYTHON picks the interpreter that has pytest (default: the
# system one, which the python3-pytest package installs into).
set -euo pipefail

cd "$(dirname "$0")/.."

sanitize=0
pytest_args=()
while [ $# -gt 0 ]; do
	case $1 in
	--sanitize) sanitize=1 ;;
	--) shift; pytest_args=("$@"); break ;;
	-h|--help) sed -n '2,18s/^# \{0,1\}//p' "$0"; exit 0 ;;
	*) echo "test.sh: unknown argument: $1" >&2; exit 2 ;;
	esac
	shift
done

# qemu-system-x86, linux-image-amd64 and busybox-static are the guest of
# test/test_vm.py: QEMU, a kernel with its modules, and the initramfs's
# one binary. openssh-server and sshfs are test/test_network.py's child on
# another "machine": an sshd of the test's own on 127.0.0.1. dpkg-dev
# (dpkg-shlibdeps) is what the package test's cpack needs; systemd gives
# test_fstab.py systemd-fstab-generator and systemd-analyze;
# python3-prometheus-client's parser reads quorumctl's metrics.
packages=(build-essential cmake pkg-config libfuse3-dev fuse3 libssl-dev
	libjson-c-dev liburing-dev python3-pytest python3-pytest-timeout qemu-utils
	qemu-system-x86 attr e2fsprogs util-linux fio clang libclang-rt-14-dev
	linux-image-amd64 busybox-static socat openssh-server sshfs dpkg-dev
	systemd python3-prometheus-client man-db)

if [ "${QFS_SKIP_INSTALL:-0}" != 1 ]; then
	sudo=()
	[ "$(id -u)" -eq 0 ] || sudo=(sudo)
	"${sudo[@]}" apt-get update
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y \
		--no-install-recommends "${packages[@]}"
fi

# The prefix /usr is what the package is built for (test_package.py then
# packages this very build).
cmake_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr)
[ "${CI:-}" = true ] && cmake_args+=(-DQFS_WERROR=ON)
build=build
if [ "$sanitize" = 1 ]; then
	build=build-asan
	cmake_args+=(-DQFS_SANITIZE=ON)
	# Leaks and undefined behaviour must fail the run, not scroll by.
	export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
	export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
fi

cmake -S . -B "$build" "${cmake_args[@]}"
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure

export QFS_BIN="$PWD/$build/quorumfs"
python="${PYTHON:-/usr/bin/python3}"
# With no arguments, pytest.ini's testpaths picks test/.
"$python" -m pytest "${pytest_args[@]}"

# The data path again with every mount on FUSE over io_uring (README "FUSE
# over io_uring"), where the kernel has it: the switch is turned on for
# this run and put back. QFS_URING_SUITE=0 skips it.
param=/sys/module/fuse/parameters/enable_uring
only_options=1 # pytest arguments naming tests pick the tests themselves
for a in "${pytest_args[@]}"; do
	case $a in -*) ;; *) only_options=0 ;; esac
done
if [ "${QFS_URING_SUITE:-1}" != 0 ] && [ -w "$param" ] &&
	[ "$only_options" = 1 ]; then
	was=$(cat "$param")
	echo Y >"$param"
	status=0
	QFS_EXTRA_OPTS=uring=on "$python" -m pytest test/test_concurrency.py \
		test/test_integrity.py test/test_posix.py test/test_hangs.py \
		test/test_qemu_differential.py test/test_powercut.py \
		"${pytest_args[@]}" || status=$?
	echo "$was" >"$param"
	[ "$status" = 0 ] || exit "$status"
else
	echo "test.sh: the io_uring run skipped (no kernel switch, or tests named)"
fi

# A bounded fuzz run of the control-command parser (scripts/fuzz.sh), when
# clang and its fuzzer runtime are there. QFS_FUZZ_SECONDS sets the length
# (default 30); 0 skips it.
fuzz_seconds="${QFS_FUZZ_SECONDS:-30}"
if [ "$fuzz_seconds" != 0 ] && command -v clang >/dev/null &&
	[ -e "$(clang -print-resource-dir)/lib/linux/libclang_rt.fuzzer-$(uname -m).a" ]; then
	scripts/fuzz.sh "$fuzz_seconds"
else
	echo "test.sh: fuzzing skipped (QFS_FUZZ_SECONDS=0, or no clang fuzzer runtime)"
fi
