#!/usr/bin/env bash
# The test command (README, .ci/run): system packages the tests drive,
# the static guest binaries, every test tier the host supports, then the
# leak check.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --deps-only
guest_dir=$(scripts/build-guest.sh)
export BANGER_GUEST_INIT="$guest_dir/banger-init"
export BANGER_GUEST_AGENT="$guest_dir/banger-agent"
# Third-party VMM binaries live beside the clone (shared/bin), as on any
# host they are installed from upstream releases.
if [ -z "${BANGER_FIRECRACKER_BIN:-}" ] && [ -x ../shared/bin/firecracker ]; then
  export BANGER_FIRECRACKER_BIN="$(cd ../shared/bin && pwd)/firecracker"
fi
if [ -z "${BANGER_JAILER_BIN:-}" ] && [ -x ../shared/bin/jailer ]; then
  export BANGER_JAILER_BIN="$(cd ../shared/bin && pwd)/jailer"
fi
# bangerd with its failpoints, for the crash matrix on real processes
# (tests/crash_matrix.rs); apart, so the ordinary build stays as it is.
cargo build --locked -q -p banger --features failpoints --bin bangerd --target-dir target/failpoints
export BANGER_FAILPOINT_DAEMON="$(pwd)/target/failpoints/debug/bangerd"
set +e
# Every binary runs even after one failed: one red test must not hide
# the others' results.
cargo test --workspace --locked --all-targets --no-fail-fast -- --nocapture 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
# The crash matrix: the core with its failpoints compiled in, alone in
# its process (the failpoint registry is the process's).
echo "==> failpoint matrix"
cargo test -p banger-core --locked --features failpoints --lib failpoints \
  -- --test-threads=1 --nocapture 2>&1 | tee -a target/test-output.log
matrix=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && status=$matrix
set -e
grep -E '^figure:' target/test-output.log || true
# Where the time went: each test binary's own duration, slowest first.
echo "==> time per test binary (seconds)"
awk '/^ *Running /{name=$0; sub(/^ *Running /, "", name)}
     /^ *Doc-tests /{name=$0; sub(/^ *Doc-tests /, "doc-tests ", name)}
     /^test result:/{t=$0; sub(/.*finished in /, "", t); sub(/s$/, "", t); printf "%9.2f  %s\n", t, name}' \
  target/test-output.log | sort -rn
# What did not run: every `SKIPPED <reason>` a test printed, with its
# binary. Parallel tests share the terminal, so the mark may follow
# another test's text on the same line; it is cut from there.
echo "==> skipped"
awk '/^ *Running /{name=$0; sub(/^ *Running /, "", name)}
     /SKIPPED[ :]/{line=$0; sub(/^.*SKIPPED/, "SKIPPED", line); n++; printf "  %s  [%s]\n", line, name}
     END{printf "%d skipped\n", n}' \
  target/test-output.log
echo "==> cargo test exit status: $status"
scripts/leak-check.sh
exit "$status"
