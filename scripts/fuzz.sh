#!/usr/bin/env bash
# Build the libFuzzer targets with clang (AddressSanitizer and
# UndefinedBehaviorSanitizer) in build-fuzz and fuzz the control-command
# parser for SECONDS (default 60). Fails on any crash, sanitizer report,
# leak or broken contract; the input that did it is left in
# build-fuzz/artifacts/ (replay: build-fuzz/fuzz_control FILE).
#
#   scripts/fuzz.sh [SECONDS]
#
# The seed corpus test/fuzz/corpus/control/ is only read; inputs the
# fuzzer finds go to build-fuzz/corpus/control/ and seed the next run.
# Needs clang and its fuzzer runtime (Debian 12: clang, libclang-rt-14-dev).
set -euo pipefail

cd "$(dirname "$0")/.."

seconds=${1:-60}
case $seconds in
'' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number" >&2; exit 2 ;;
esac

build=build-fuzz
CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DQFS_FUZZ=ON -DQFS_WERROR=ON >/dev/null
cmake --build "$build" --target fuzz_control -j "$(nproc)"

mkdir -p "$build/corpus/control" "$build/artifacts"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# -max_len above CONFIG_COMMAND_MAX so over-long writes are tried too.
"$build/fuzz_control" -max_total_time="$seconds" -timeout=10 \
	-max_len=8300 -dict=test/fuzz/control.dict -print_final_stats=1 \
	-artifact_prefix="$build/artifacts/" \
	"$build/corpus/control" test/fuzz/corpus/control
