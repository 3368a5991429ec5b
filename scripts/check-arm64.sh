#!/bin/sh
# The arm64 prebuilds, proven as far as an x86-64 machine allows (qemu-user, Debian's
# qemu-user-static; the cross toolchain g++-aarch64-linux-gnu):
#   1. the aarch64 init (prebuilds/linux-arm64/hutch-init) runs under qemu as PID 1 of a new PID
#      namespace and answers its control protocol (test/arm64/init-driver.c);
#   2. units of the addon's C++ (fd passing, the netlink builder against the real kernel, the
#      setup-step table) cross-compiled for aarch64 pass under qemu (test/arm64/units.cc);
#   3. with HUTCH_ARM64_NODE=1, Debian's arm64 nodejs (downloaded into a private apt state under
#      $TMPDIR, nothing installed on the host) loads prebuilds/linux-arm64/hutch.glibc.node
#      under qemu and calls it.
# Usage: scripts/check-arm64.sh   (after npm run prebuild)
set -eu
cd "$(dirname "$0")/.."
pre=prebuilds/linux-arm64
for f in "$pre/hutch-init" "$pre/hutch.glibc.node"; do
  [ -f "$f" ] || { echo "check-arm64: $f is missing: run npm run prebuild" >&2; exit 1; }
done
qemu=$(command -v qemu-aarch64-static || true)
[ -n "$qemu" ] || { echo "check-arm64: needs qemu-user-static (apt-get install qemu-user-static)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== arm64: the init under qemu-aarch64"
cc -std=gnu11 -O2 -Wall -o "$tmp/init-driver" test/arm64/init-driver.c
# qemu-user before 9.1 has no openat2, which the init's exec uses for the cwd.
ver=$("$qemu" --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
set -- $ver
expect=
if [ "$1" -lt 9 ] || { [ "$1" -eq 9 ] && [ "$2" -lt 1 ]; }; then expect=cwd-enosys; fi
"$tmp/init-driver" "$qemu" "$pre/hutch-init" $expect
# The same driver against this machine's own init, natively: the driver itself is sound.
if [ -f prebuilds/linux-x64/hutch-init ] && [ "$(uname -m)" = x86_64 ]; then
  "$tmp/init-driver" /usr/bin/env prebuilds/linux-x64/hutch-init
fi

echo "== arm64: units of the addon's C++ under qemu-aarch64"
nodeinc=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")/include/node
[ -f "$nodeinc/node_api.h" ] || nodeinc=$(node -p "require('path').join(process.execPath, '../../include/node')")
aarch64-linux-gnu-g++ -std=c++17 -O2 -Wall -Wno-unused-function -Wno-unused-parameter \
  -DNAPI_VERSION=8 -DNODE_ADDON_API_DISABLE_CPP_EXCEPTIONS -I"$nodeinc" -I"$(node -p "require('node-addon-api').include_dir")" \
  -ffunction-sections -fdata-sections -static -Wl,--gc-sections -o "$tmp/units" test/arm64/units.cc
"$qemu" "$tmp/units"

if [ "${HUTCH_ARM64_NODE:-0}" = 1 ]; then
  echo "== arm64: Debian's arm64 nodejs loads the addon under qemu-aarch64"
  sh scripts/arm64-node.sh "$tmp/node-root" "$pre/hutch.glibc.node"
fi
echo "check-arm64: ok"
