#!/usr/bin/env bash
# Benchmark: `banger vm run --rm -- true` end to end, split by stage, next
# to a raw QEMU boot of the same kernel and disks to the agent's first
# answer (the same QEMU and vsock-backend command lines, captured from a
# banger VM, started by hand with no daemon in the loop). QEMU/TCG, in a
# private network namespace. Prints figures; asserts nothing.
#
#   sudo bench/vm_run.sh [RUNS]
#
# Needs: root, qemu-system-x86_64, vhost-device-vsock, the default kernel
# and image in the test cache (run scripts/test.sh once).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"

. bench/cached-assets.sh

cargo build --release --locked -q -p banger --bin banger --bin bangerd --example agent_ping
guest_dir=$(scripts/build-guest.sh)
B="$(pwd)/target/release/banger"
PING="$(pwd)/target/release/examples/agent_ping"

. bench/lab.sh
envs=(BANGER_CONFIG=/dev/null BANGER_STATE_DIR="$work/state" BANGER_RUNTIME_DIR="$work/run"
      BANGER_AUTO_PROVISION=false BANGER_GUEST_INIT="$guest_dir/banger-init"
      BANGER_GUEST_AGENT="$guest_dir/banger-agent" BANGER_DAEMON_BIN="$(pwd)/target/release/bangerd")

b kernel import default --vmlinux "$kernel_dir/vmlinux" --initrd "$kernel_dir/initrd.img" >/dev/null
b image import default --rootfs "$rootfs" >/dev/null

echo "== banger vm run --rm --memory 512 -- true (QEMU/TCG) =="
for run in $(seq "$runs"); do
  t0=$(now); b vm run --rm --memory 512 -- true; t1=$(now)
  stages=$(grep 'start stages' "$work/state/bangerd.log" | tail -1 | sed 's/.*stages=//')
  echo "run $run: total $(ms "$t0" "$t1") ms  [daemon start stages: $stages]"
done

echo "== the same, one step at a time =="
for run in $(seq "$runs"); do
  t0=$(now); b vm create --name "s$run" --memory 512 >/dev/null
  t1=$(now); b vm start "s$run" >/dev/null
  t2=$(now); b vm exec "s$run" -- true
  t3=$(now); b vm kill "s$run" >/dev/null
  t4=$(now); b vm delete "s$run" >/dev/null
  t5=$(now)
  echo "run $run: create $(ms "$t0" "$t1") ms, start (to agent ready) $(ms "$t1" "$t2") ms, exec $(ms "$t2" "$t3") ms, kill $(ms "$t3" "$t4") ms, delete $(ms "$t4" "$t5") ms"
done

echo "== raw QEMU: same command lines, no daemon, spawn -> agent pong =="
b vm create --name raw --memory 512 >/dev/null
b vm start raw >/dev/null
id=$(b vm show raw --json | sed -n 's/.*"id": *"\([0-9a-f]*\)".*/\1/p' | head -1)
sock="$work/run/vms/$id.sock"
qemu_pid=$(pgrep -f -- "-qmp unix:$sock" | head -1)
backend_pid=$(pgrep -f -- "--socket $work/run/vms/$id.vhu" | head -1)
mapfile -d '' qemu_cmd < "/proc/$qemu_pid/cmdline"
mapfile -d '' backend_cmd < "/proc/$backend_pid/cmdline"
b vm stop raw >/dev/null
tap="bg-${id:0:12}"
# banger hands QEMU its tap as a descriptor; by hand, QEMU opens it by name.
for i in "${!qemu_cmd[@]}"; do
  case "${qemu_cmd[$i]}" in
    tap,id=n0,fd=*) qemu_cmd[$i]="tap,id=n0,ifname=$tap,script=no,downscript=no" ;;
  esac
done
for run in $(seq "$runs"); do
  ip -n "$ns" tuntap add "$tap" mode tap
  ip -n "$ns" link set "$tap" master banger0 up
  rm -f "$work/run/vms/$id."*
  t0=$(now)
  (ip netns exec "$ns" "${backend_cmd[@]}" >/dev/null 2>&1 &)
  while [ ! -S "$work/run/vms/$id.vhu" ]; do sleep 0.005; done
  ip netns exec "$ns" "${qemu_cmd[@]}"
  answered=$("$PING" "$work/run/vms/$id.vsock" 180)
  t1=$(now)
  echo "run $run: spawn -> agent pong $(ms "$t0" "$t1") ms (poll saw it at ${answered} ms)"
  pkill -9 -f -- "$work/run/vms/$id" || true
  while pgrep -f -- "$work/run/vms/$id" >/dev/null; do sleep 0.05; done
  ip -n "$ns" link del "$tap"
  e2fsck -p "$work/state/vms/$id/root.ext4" >/dev/null 2>&1 || true
done
b vm delete raw >/dev/null
