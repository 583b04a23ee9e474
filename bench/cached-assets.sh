# Sourced by the benchmarks: the default kernel and image from the test
# cache (scripts/test.sh fills it). Sets cache, kernel_dir and rootfs.
cache=$(ls -d "${BANGER_TEST_CACHE:-/var/cache/banger-test}"/*/state 2>/dev/null | head -1 || true)
if [ -z "$cache" ]; then
  echo "no cached default assets: run scripts/test.sh once first" >&2
  exit 1
fi
kernel_dir=$(ls -d "$cache"/kernels/* | head -1)
rootfs=$(ls "$cache"/images/*/rootfs.ext4 | head -1)
