# Sourced by the benchmarks after B (the banger binary) is set: a scratch
# dir and a private network namespace, both removed on exit with every
# process naming the scratch dir. The caller fills `envs` (the daemon's
# environment); b runs banger inside the namespace with it. A caller
# that mounts something in $work defines lab_cleanup_hook to undo it, and
# one whose state dir is not $work/state sets state. BENCH_KEEP_LOG=FILE
# keeps the daemon's log.
work=$(mktemp -d /tmp/banger-bench-XXXXXX)
ns="banger-bench-$$"
envs=()
cleanup() {
  set +e
  [ "${#envs[@]}" -gt 0 ] && ip netns exec "$ns" env "${envs[@]}" "$B" daemon stop >/dev/null 2>&1
  pkill -9 -f "$work" 2>/dev/null
  [ -n "${BENCH_KEEP_LOG:-}" ] && cp "${state:-$work/state}/bangerd.log" "$BENCH_KEEP_LOG"
  ip netns del "$ns" 2>/dev/null
  declare -F lab_cleanup_hook >/dev/null && lab_cleanup_hook
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
b() { ip netns exec "$ns" env "${envs[@]}" "$B" "$@"; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
now() { date +%s%N; }
