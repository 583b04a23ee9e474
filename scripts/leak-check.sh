#!/usr/bin/env bash
# Fails if the tests left anything behind: daemons or VMMs started from
# this checkout's build, or test directories in the temp dir.
set -uo pipefail
cd "$(dirname "$0")/.."
target="$(pwd)/target"
leaks=0

for exe in /proc/[0-9]*/exe; do
  path=$(readlink "$exe" 2>/dev/null) || continue
  case "$path" in
    "$target"/*)
      pid=${exe#/proc/}; pid=${pid%/exe}
      echo "leak: process $pid still running $path" >&2
      leaks=$((leaks + 1))
      ;;
  esac
done

# VMMs (and QEMU's vsock backends) of tests name banger-test-* paths.
for cmd in /proc/[0-9]*/cmdline; do
  line=$(tr '\0' ' ' < "$cmd" 2>/dev/null) || continue
  case "$line" in
    *qemu-system*banger-test-*|*firecracker*banger-test-*|*vhost-device-vsock*banger-test-*)
      pid=${cmd#/proc/}; pid=${pid%/cmdline}
      echo "leak: VMM process $pid: $line" >&2
      leaks=$((leaks + 1))
      ;;
  esac
done

# Network namespaces the host tests make (their taps and bridges die with
# them).
for n in $(ip netns list 2>/dev/null | awk '{print $1}'); do
  case "$n" in
    banger-test-*|banger-bench-*)
      echo "leak: network namespace $n" >&2
      leaks=$((leaks + 1))
      ;;
  esac
done

# Taps on the host itself (tests keep theirs inside namespaces).
for l in /sys/class/net/bg-*; do
  [ -e "$l" ] || continue
  echo "leak: tap ${l##*/} on the host" >&2
  leaks=$((leaks + 1))
done

for d in "${TMPDIR:-/tmp}"/banger-test-*; do
  [ -e "$d" ] || continue
  echo "leak: test directory $d" >&2
  leaks=$((leaks + 1))
done

if [ "$leaks" -gt 0 ]; then
  echo "leak check: $leaks leak(s)" >&2
  exit 1
fi
echo "leak check: clean"
