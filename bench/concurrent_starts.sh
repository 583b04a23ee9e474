#!/usr/bin/env bash
# Benchmark: N VMs started at once (default 10), with boot admission on
# (the daemon's default: one boot per CPU under TCG) and off
# (limits.concurrent_boots = 0), each with a fresh daemon, in one run so
# the two figures share the machine's mood. QEMU/TCG, in a private network
# namespace. Prints total and per-VM times; asserts nothing.
#
#   sudo bench/concurrent_starts.sh [N]
#
# Needs: root, qemu-system-x86_64, vhost-device-vsock, the default kernel
# and image in the test cache (run scripts/test.sh once).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10}"

. bench/cached-assets.sh

cargo build --release --locked -q -p banger --bin banger --bin bangerd
guest_dir=$(scripts/build-guest.sh)
B="$(pwd)/target/release/banger"

. bench/lab.sh

# One round: a fresh daemon with `limit` ("" = the host default), N VMs
# created, then all started at once; prints the total and per-VM spread.
round() {
  local label=$1 limit=$2
  local dir="$work/$label"
  mkdir -p "$dir"
  envs=(BANGER_CONFIG=/dev/null BANGER_STATE_DIR="$dir/state" BANGER_RUNTIME_DIR="$dir/run"
        BANGER_AUTO_PROVISION=false BANGER_GUEST_INIT="$guest_dir/banger-init"
        BANGER_GUEST_AGENT="$guest_dir/banger-agent" BANGER_DAEMON_BIN="$(pwd)/target/release/bangerd"
        BANGER_READY_TIMEOUT_SECS=900)
  [ -n "$limit" ] && envs+=(BANGER_CONCURRENT_BOOTS="$limit")
  b kernel import default --vmlinux "$kernel_dir/vmlinux" --initrd "$kernel_dir/initrd.img" >/dev/null
  b image import default --rootfs "$rootfs" >/dev/null
  for i in $(seq "$n"); do
    b vm create --name "c$i" --memory 256 --root-disk 1G --work-disk 128M >/dev/null
  done
  local t0 pids=() failed=0
  t0=$(now)
  for i in $(seq "$n"); do
    ( s=$(now); if b vm start "c$i" >/dev/null 2>"$dir/c$i.err"; then echo "$(ms "$s" "$(now)")" >"$dir/c$i.ms"; fi ) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || true; done
  local total
  total=$(ms "$t0" "$(now)")
  local times
  times=$(cat "$dir"/c*.ms 2>/dev/null | sort -n | tr '\n' ' ')
  failed=$(( n - $(cat "$dir"/c*.ms 2>/dev/null | wc -l) ))
  local first last median
  first=$(echo "$times" | awk '{print $1}')
  last=$(echo "$times" | awk '{print $NF}')
  median=$(echo "$times" | awk '{print $(int((NF+1)/2))}')
  echo "$label: $n starts in ${total} ms total; per VM (request to running): first ${first} ms, median ${median} ms, last ${last} ms; ${failed} failed"
  grep -h 'start stages' "$dir/state/bangerd.log" | sed 's/.*stages=/  stages: /' | sort | head -3
  for i in $(seq "$n"); do b vm kill "c$i" >/dev/null 2>&1 || true; b vm delete "c$i" >/dev/null 2>&1 || true; done
  b daemon stop >/dev/null
}

echo "== $n concurrent vm start (QEMU/TCG, $(nproc) CPUs) =="
round "limit-on(default)" ""
round "limit-off" 0
