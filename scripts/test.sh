#!/usr/bin/env bash
# The test command (README, .ci/run): system packages the tests drive,
# every test tier the host supports, then the leak check.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --deps-only
cargo test --workspace --locked --all-targets
scripts/leak-check.sh
