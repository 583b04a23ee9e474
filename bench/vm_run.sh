#!/usr/bin/env bash
# Benchmark, in one run (QEMU/TCG, in a private network namespace):
#   - warm `banger vm run --rm -- true` (restoring the shape's template),
#   - cold `banger vm run --rm --cold -- true` (a boot),
#   - a raw QEMU boot of the same kernel and disks to the agent's first
#     answer: the QEMU command line captured from a banger VM, replayed by
#     hand with no daemon in the loop (its tap opened by name instead of
#     the descriptor banger passes; the agent pinged over its serial port),
#   - a fork of 1 into 4 next to one restore, and a snapshot's size and
#     save time.
# Prints figures and ratios; asserts nothing.
#
#   sudo [BENCH_XFS=1] [BENCH_KEEP_LOG=FILE] bench/vm_run.sh [RUNS]
#
# BENCH_XFS=1 puts the state dir on a loop-mounted reflink XFS (needs
# xfsprogs); BENCH_KEEP_LOG keeps the daemon's log.
#
# Needs: root, qemu-system-x86_64, the default kernel and image in the
# test cache (run scripts/test.sh once).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"

. bench/cached-assets.sh

cargo build --release --locked -q -p banger --bin banger --bin bangerd --example agent_ping
guest_dir=$(scripts/build-guest.sh)
B="$(pwd)/target/release/banger"
PING="$(pwd)/target/release/examples/agent_ping"

. bench/lab.sh
state="$work/state"
if [ -n "${BENCH_XFS:-}" ]; then
  # The state dir on a loop-mounted XFS: disks and snapshots are reflink
  # clones instead of sparse copies.
  lab_cleanup_hook() { umount "$work/xfs" 2>/dev/null; }
  truncate -s 40G "$work/xfs.img"
  mkfs.xfs -q -m reflink=1 "$work/xfs.img"
  mkdir -p "$work/xfs"
  mount -o loop "$work/xfs.img" "$work/xfs"
  state="$work/xfs/state"
fi
echo "state dir: $state ($(stat -f -c %T "$(dirname "$state")"))"
envs=(BANGER_CONFIG=/dev/null BANGER_STATE_DIR="$state" BANGER_RUNTIME_DIR="$work/run"
      BANGER_AUTO_PROVISION=false BANGER_GUEST_INIT="$guest_dir/banger-init"
      BANGER_GUEST_AGENT="$guest_dir/banger-agent" BANGER_DAEMON_BIN="$(pwd)/target/release/bangerd")

b kernel import default --vmlinux "$kernel_dir/vmlinux" --initrd "$kernel_dir/initrd.img" >/dev/null
b image import default --rootfs "$rootfs" >/dev/null

stages() { grep 'start stages' "$state/bangerd.log" | tail -1 | sed 's/.*boot=//'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "== template: the first vm run of the shape boots and saves it =="
t0=$(now); b vm run --rm --memory 512 -- true; t1=$(now)
echo "first run: $(ms "$t0" "$t1") ms  [$(stages)]"
b snapshot list

warm=(); cold=(); raw=()
echo "== warm: banger vm run --rm --memory 512 -- true =="
for run in $(seq "$runs"); do
  t0=$(now); b vm run --rm --memory 512 -- true; t1=$(now)
  warm+=("$(ms "$t0" "$t1")")
  echo "run $run: ${warm[-1]} ms  [$(stages)]"
done

echo "== cold: banger vm run --rm --cold --memory 512 -- true =="
for run in $(seq "$runs"); do
  t0=$(now); b vm run --rm --cold --memory 512 -- true; t1=$(now)
  cold+=("$(ms "$t0" "$t1")")
  echo "run $run: ${cold[-1]} ms  [$(stages)]"
done

echo "== raw QEMU: the same command line, no daemon, spawn -> agent pong =="
b vm create --name raw --cold --memory 512 >/dev/null
b vm start raw >/dev/null
id=$(b vm show raw --json | sed -n 's/.*"id": *"\([0-9a-f]*\)".*/\1/p' | head -1)
sock="$work/run/vms/$id.sock"
agent="$work/run/vms/$id.agent"
qemu_pid=$(pgrep -f -- "-qmp unix:$sock" | head -1)
mapfile -d '' qemu_cmd < "/proc/$qemu_pid/cmdline"
b vm stop raw >/dev/null
tap="bgraw${id:0:8}"
# banger hands QEMU its tap as a descriptor (fd=3); by hand, QEMU opens a
# tap of the bench's own by name.
for i in "${!qemu_cmd[@]}"; do
  case "${qemu_cmd[$i]}" in
    tap,id=n0,fd=*) qemu_cmd[$i]="tap,id=n0,ifname=$tap,script=no,downscript=no" ;;
    *fd=*) echo "raw replay: unhandled descriptor argument ${qemu_cmd[$i]}" >&2; exit 1 ;;
  esac
done
for run in $(seq "$runs"); do
  ip -n "$ns" tuntap add "$tap" mode tap
  ip -n "$ns" link set "$tap" master banger0 up
  rm -f "$agent" "$sock"
  t0=$(now)
  ip netns exec "$ns" "${qemu_cmd[@]}"
  answered=$("$PING" --serial "$agent" 180)
  t1=$(now)
  raw+=("$(ms "$t0" "$t1")")
  echo "run $run: spawn -> agent pong ${raw[-1]} ms (ping saw it at ${answered} ms)"
  pkill -9 -f -- "-qmp unix:$sock" || true
  while pgrep -f -- "-qmp unix:$sock" >/dev/null; do sleep 0.05; done
  ip -n "$ns" link del "$tap"
  e2fsck -p "$state/vms/$id/root.ext4" >/dev/null 2>&1 || true
done
b vm delete raw >/dev/null

echo "== snapshot: a running 512 MiB guest =="
b vm create --name src --cold --memory 512 >/dev/null
b vm start src >/dev/null
# A settled guest: snapshotted mid-boot, every copy would finish systemd's
# boot at once on two cores, and the figures would measure that.
b vm exec src -- systemctl is-system-running --wait >/dev/null || true
snap=$(b vm snapshot src --name bench-snap --json)
echo "size $(echo "$snap" | sed -n 's/.*"size_bytes": *\([0-9]*\).*/\1/p') bytes on disk, saved in $(echo "$snap" | sed -n 's/.*"save_ms": *\([0-9]*\).*/\1/p') ms"

echo "== one restore, then a fork of 1 into 4 =="
b vm create --snapshot bench-snap --name one >/dev/null
t0=$(now); b vm start one >/dev/null; t1=$(now)
one=$(ms "$t0" "$t1")
echo "one restore (vm start, to the agent and identity): $one ms  [$(stages)]"
b vm kill one >/dev/null; b vm delete one >/dev/null
t0=$(now); b vm fork src --name f --count 4 >/dev/null; t1=$(now)
fork=$(ms "$t0" "$t1")
echo "fork 1 -> 4 (snapshot + 4 restores, all answering): $fork ms"
grep 'start stages' "$state/bangerd.log" | tail -4 | sed 's/.*boot=/  /'
per_fork=$(grep 'start stages' "$state/bangerd.log" | tail -4 \
  | sed 's/.*stages=//' | tr ' ' '\n' | awk -F'[=m]' '/^(storage|network|vmm-restore|agent|identity)=/ {s+=$2} END {print int(s/4)}')
echo "mean of the forks' own start stages: $per_fork ms (x$(awk -v a="$per_fork" -v b="$one" 'BEGIN {printf "%.2f", a/b}') one restore)"
for v in src f-1 f-2 f-3 f-4; do b vm kill "$v" >/dev/null; b vm delete "$v" >/dev/null; done
b snapshot rm bench-snap >/dev/null

w=$(printf '%s\n' "${warm[@]}" | median); c=$(printf '%s\n' "${cold[@]}" | median); r=$(printf '%s\n' "${raw[@]}" | median)
echo "== medians of $runs: warm $w ms, cold $c ms, raw QEMU $r ms =="
awk -v w="$w" -v c="$c" -v r="$r" 'BEGIN {printf "warm/cold %.3f   warm/raw %.3f   cold/raw %.2f\n", w/c, w/r, c/r}'
