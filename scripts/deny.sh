#!/usr/bin/env bash
# Dependency policy: licenses, banned/duplicate crates, sources.
# The advisories check needs the RustSec database from GitHub, which is
# unreachable from these machines; it runs where the network allows
# (BANGER_DENY_ADVISORIES=1).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "==> installing cargo-deny from crates.io"
  cargo install cargo-deny --locked --quiet
fi
checks=(bans licenses sources)
[ "${BANGER_DENY_ADVISORIES:-0}" = 1 ] && checks+=(advisories)
cargo deny --locked check "${checks[@]}"
