#!/usr/bin/env bash
# Benchmark: how early the agent answers in a boot of the default image,
# next to when systemd finishes that same boot (issue 14), under QEMU/TCG
# in a private network namespace. Per run: `vm create`, then `vm start`
# (returns at agent ready), then `vm exec -- systemctl is-system-running
# --wait`; the daemon's start stages; and the guest's boot timeline by
# stage, in kernel time, from the console and from the guest's journal.
# Prints figures; asserts nothing.
#
#   sudo bench/early_agent.sh [RUNS]
#
# Needs: root, qemu-system-x86_64, vhost-device-vsock, the default kernel
# and image in the test cache (run scripts/test.sh once).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"

. bench/cached-assets.sh

cargo build --release --locked -q -p banger --bin banger --bin bangerd
target_dir="${CARGO_TARGET_DIR:-$(pwd)/target}"
guest_dir=$(scripts/build-guest.sh)
B="$target_dir/release/banger"

. bench/lab.sh
envs=(BANGER_CONFIG=/dev/null BANGER_STATE_DIR="$work/state" BANGER_RUNTIME_DIR="$work/run"
      BANGER_AUTO_PROVISION=false BANGER_GUEST_INIT="$guest_dir/banger-init"
      BANGER_GUEST_AGENT="$guest_dir/banger-agent" BANGER_DAEMON_BIN="$target_dir/release/bangerd")

b kernel import default --vmlinux "$kernel_dir/vmlinux" --initrd "$kernel_dir/initrd.img" >/dev/null
b image import default --rootfs "$rootfs" >/dev/null

# The ms of stage $1 in a `start stages` log line ("... agent=1234ms ...").
stage_ms() { sed -n "s/.* $1=\([0-9]*\)ms.*/\1/p; s/.*stages=$1=\([0-9]*\)ms.*/\1/p" | head -1; }

# Boot stages from text on stdin, one line each with its kernel time in
# seconds ("[   2.345678] ..."), in the order they came; "-" for a line the
# kernel did not stamp (banger-init's and the agent's own stderr on the
# console, systemd's status lines).
timeline() {
  sed 's/\x1b\[[0-9;]*[A-Za-z]//g' | awk '
    /banger-init: |Reached target|Welcome to|Startup finished|systemd-journald|banger-agent/ {
      ts = "-"; line = $0
      if (match(line, /^\[ *[0-9]+\.[0-9]+\]/)) {
        ts = substr(line, RSTART + 1, RLENGTH - 2); gsub(/ /, "", ts)
        sub(/^\[ *[0-9]+\.[0-9]+\] */, "", line)
      }
      printf "    %9s s  %s\n", ts, line
    }'
}

summary=()
echo "== default image, QEMU/TCG, --memory 512: agent ready vs systemd done, same boot =="
for run in $(seq "$runs"); do
  name="e$run"
  b vm create --name "$name" --memory 512 >/dev/null
  t0=$(now)
  b vm start "$name" >/dev/null
  t1=$(now)
  # Right after the agent's ready call systemd may not answer yet
  # (`offline`, or no bus: `unknown`) and --wait does not wait: the guest
  # asks again every 50 ms until systemd can answer.
  state=$(b vm exec "$name" -- sh -c 'for t in $(seq 1200); do
      s=$(systemctl is-system-running --wait 2>/dev/null)
      case "$s" in offline|unknown|"") sleep 0.05 ;; *) break ;; esac
    done; echo "$s"')
  t2=$(now)
  stages=$(grep 'start stages' "$work/state/bangerd.log" | tail -1 | sed 's/.*stages=/stages=/')
  launch=$(stage_ms vmm-launch <<<"$stages")
  agent=$(stage_ms agent <<<"$stages")
  ready=$(ms "$t0" "$t1")
  full=$(ms "$t0" "$t2")
  spawn_ready=$(( launch + agent ))
  # systemd done, counted from the same VMM spawn: what the start spent
  # before the spawn (storage, network, config) is the same in both.
  spawn_full=$(( full - (ready - spawn_ready) ))
  ratio=$(awk -v a="$spawn_ready" -v f="$spawn_full" 'BEGIN { printf "%.2f", a / f }')
  ratio_today=$(awk -v a="$spawn_ready" 'BEGIN { printf "%.2f", a / 11000 }')
  echo "run $run: VMM spawn -> agent ready $spawn_ready ms (vmm-launch $launch + agent $agent);" \
    "VMM spawn -> systemd $state $spawn_full ms; ratio $ratio (target <= 0.35);" \
    "vs today's ~11 s boot-to-agent: $ratio_today"
  echo "  from the start command: agent ready $ready ms, systemd done $full ms  [daemon $stages]"
  echo "  console (vm logs), kernel time:"
  b vm logs "$name" | timeline
  # Under `quiet` the console carries few kernel stamps and none of
  # systemd's progress; the journal has banger-init's kernel-log lines and
  # systemd's on one clock (CLOCK_MONOTONIC since boot).
  echo "  journal (kernel log and systemd), kernel time:"
  b vm exec "$name" -- journalctl -b -o short-monotonic --no-pager \
    | grep -E 'banger-init|Reached target|Startup finished|Started banger|systemd-journald.service' \
    | sed 's/^\(\[ *[0-9.]*\]\) [^ ]* /\1 /' | timeline || true
  summary+=("$spawn_ready $spawn_full")
  b vm kill "$name" >/dev/null
  b vm delete "$name" >/dev/null
done

echo "== summary over $runs runs (means) =="
printf '%s\n' "${summary[@]}" | awk '
  { a += $1; f += $2; n++ }
  END { printf "VMM spawn -> agent ready %d ms; -> systemd done %d ms; ratio %.2f (target <= 0.35); %.2f of the ~11 s boot-to-agent before\n", a / n, f / n, a / f, a / n / 11000 }'
