#!/usr/bin/env bash
# Benchmark: VM start split by stage, for a 1 GiB and an 8 GiB root image,
# with the state dir on a loop-mounted XFS (reflink clones), under QEMU/TCG
# in a private network namespace. Prints figures; asserts nothing.
#
#   sudo bench/start_stages.sh
#
# Needs: root, qemu-system-x86_64, xfsprogs, the default kernel and image
# in the test cache (run scripts/test.sh once), release binaries (built here).
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/cached-assets.sh

cargo build --release --locked -q -p banger
guest_dir=$(scripts/build-guest.sh)
B="$(pwd)/target/release/banger"

. bench/lab.sh
lab_cleanup_hook() { umount "$work/xfs" 2>/dev/null; }

truncate -s 40G "$work/xfs.img"
mkfs.xfs -q -m reflink=1 "$work/xfs.img"
mkdir -p "$work/xfs"
mount -o loop "$work/xfs.img" "$work/xfs"
envs=(BANGER_CONFIG=/dev/null BANGER_STATE_DIR="$work/xfs/state" BANGER_RUNTIME_DIR="$work/run"
      BANGER_AUTO_PROVISION=false BANGER_GUEST_INIT="$guest_dir/banger-init" BANGER_GUEST_AGENT="$guest_dir/banger-agent" BANGER_DAEMON_BIN="$(pwd)/target/release/bangerd")

b kernel import default --vmlinux "$kernel_dir/vmlinux" --initrd "$kernel_dir/initrd.img" >/dev/null
mkdir -p "$work/xfs/src"
for size in 1G 8G; do
  img="$work/xfs/src/root-$size.ext4"
  cp --sparse=always "$rootfs" "$img"
  e2fsck -f -p "$img" >/dev/null
  truncate -s "$size" "$img"
  resize2fs -f "$img" >/dev/null 2>&1
  b image import "img-${size,,}" --rootfs "$img" >/dev/null
done
b doctor --json | grep -o '"storage": *"[a-z_]*"'

echo "== start stages (ms), QEMU/TCG, state dir on XFS with reflink =="
for size in 1g 8g; do
  for run in 1 2 3; do
    name="v$size-$run"
    t0=$(date +%s%N)
    b vm create --name "$name" --image "img-$size" --memory 512 --root-disk "${size^^}" --work-disk 1G >/dev/null
    t1=$(date +%s%N)
    b vm start "$name" >/dev/null
    t2=$(date +%s%N)
    stages=$(grep 'start stages' "$work/xfs/state/bangerd.log" | tail -1 | sed 's/.*stages=//')
    printf 'image %-3s run %d: create %4d ms, start %5d ms  [%s]\n' "$size" "$run" \
      $(( (t1 - t0) / 1000000 )) $(( (t2 - t1) / 1000000 )) "$stages"
    b vm kill "$name" >/dev/null
    b vm delete "$name" >/dev/null
  done
done
