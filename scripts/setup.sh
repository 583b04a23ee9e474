#!/usr/bin/env bash
# Sets up a Debian (bookworm) host for banger: installs the system
# packages it drives, builds the binaries and installs them.
#
#   scripts/setup.sh              packages + release build + install to /usr/local/bin
#   scripts/setup.sh --deps-only  packages only (what the tests need)
#   PREFIX=/opt/banger scripts/setup.sh
#
# Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  e2fsprogs         # mkfs.ext4 -d, debugfs, resize2fs: disks without mounting
  bubblewrap        # confines e2fsck/debugfs/resize2fs on guest-written disks
  xfsprogs          # mkfs.xfs -m reflink=1 for a reflink-capable state dir
  nftables          # the guests' network guard and per-VM NAT
  iproute2          # ip netns for the host tests
  iputils-ping      # reachability checks in the host tests
  bind9-dnsutils    # dig, for checking banger's DNS in the host tests
  debootstrap       # root images from Debian packages
  cpio              # checking the initramfs we write
  tmux              # driving interactive sessions in tests
  busybox-static    # a root tree without systemd, for the banger-init tests
  python3-minimal   # a host service the isolation test's guests must not reach
  openssh-client    # banger vm ssh
  ca-certificates
  pkg-config
  gcc               # the bundled SQLite is C
  libc6-dev
)

deps_only=0
for arg in "$@"; do
  case "$arg" in
    --deps-only) deps_only=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "==> system packages already installed"
fi

# QEMU microvm is the VMM where there is no hardware KVM. Snapshots want
# QEMU >= 9 (the `mapped-ram` migration format restores in about half the
# time of 7.2's stream), which bookworm has in its backports suite.
qemu_ok() {
  qemu-system-x86_64 --version 2>/dev/null | awk 'NR==1 { split($4, v, "."); exit !(v[1] >= 9) }'
}
if ! qemu_ok; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  qemu_suite=()
  if [ "$codename" = bookworm ]; then
    list=/etc/apt/sources.list.d/banger-bookworm-backports.sources
    if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo "==> adding bookworm-backports to apt's sources ($list), for QEMU 10"
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
        as_root tee "$list" >/dev/null
    fi
    qemu_suite=(-t bookworm-backports)
  fi
  echo "==> installing QEMU ${qemu_suite[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${qemu_suite[@]}" qemu-system-x86
  qemu_ok || { echo "setup.sh: QEMU >= 9 is needed for snapshots; found: $(qemu-system-x86_64 --version | head -1)" >&2; exit 1; }
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup.sh: cargo not found. banger needs Rust >= 1.85 (https://rustup.rs), then run this again." >&2
  exit 1
fi

# QEMU guests reach their agent over vsock; this host kernel has no
# vhost-vsock, so a userspace vhost-user backend (rust-vmm's
# vhost-device-vsock) runs beside each QEMU. Not in Debian: built from
# crates.io once, cached outside the clone by version.
VHOST_VSOCK_VERSION=0.3.0
if ! vhost-device-vsock --version 2>/dev/null | grep -q "$VHOST_VSOCK_VERSION"; then
  cache="${BANGER_TOOL_CACHE:-/var/cache/banger-tools}/vhost-device-vsock-$VHOST_VSOCK_VERSION"
  if [ ! -x "$cache/bin/vhost-device-vsock" ]; then
    echo "==> building vhost-device-vsock $VHOST_VSOCK_VERSION (once; about 3 minutes)"
    as_root mkdir -p "$cache"
    as_root cargo install --locked --quiet --root "$cache" vhost-device-vsock --version "$VHOST_VSOCK_VERSION"
  fi
  as_root install -m 0755 "$cache/bin/vhost-device-vsock" /usr/local/bin/vhost-device-vsock
fi

# Firecracker VMs run under the jailer as this unprivileged user.
if ! getent passwd banger-vmm >/dev/null; then
  echo "==> creating the system user banger-vmm (jailed Firecracker VMMs run as it)"
  as_root useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin banger-vmm
fi

[ "$deps_only" -eq 1 ] && exit 0

echo "==> building (release)"
cargo build --release --locked -p banger

echo "==> building the static guest init and agent"
guest_dir=$(scripts/build-guest.sh)

prefix="${PREFIX:-/usr/local}"
echo "==> installing banger and bangerd to $prefix/bin, banger-init to $prefix/lib/banger"
as_root install -d "$prefix/bin" "$prefix/lib/banger"
as_root install -m 0755 target/release/banger target/release/bangerd "$prefix/bin/"
as_root install -m 0755 "$guest_dir/banger-init" "$prefix/lib/banger/banger-init"
as_root install -m 0755 "$guest_dir/banger-agent" "$prefix/lib/banger/banger-agent"
if [ "$prefix" != /usr/local ]; then
  echo "    (set guest.init and guest.agent to $prefix/lib/banger/banger-{init,agent} in /etc/banger/config.toml)"
fi
echo "==> done: try \`banger doctor\`"
