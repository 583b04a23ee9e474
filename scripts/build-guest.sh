#!/usr/bin/env bash
# Builds the binaries that run inside guests (static: the initramfs and
# minimal images have no libc) and prints the directory they are in.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" -p banger-init -p banger-agent >&2
echo "${CARGO_TARGET_DIR:-$(pwd)/target}/$target/release"
