#!/bin/sh
# CI (issue 15): the runtime and security tests that are not about host root, run as an
# ordinary user with subordinate ids and a delegated cgroup (scripts/rootless-user.sh), with
# HUTCH_REQUIRE_ALL=1. Run as root from the project directory; leaves the user, removes its
# cgroups and its store.
set -eu
cd "$(dirname "$0")/.."
user=${HUTCH_ROOTLESS_USER:-hutchci}
files="test/runtime/exec.test.ts test/kernel/limits.test.ts test/kernel/limits-defaults.test.ts test/kernel/mounts.test.ts
  test/kernel/rootfs.test.ts test/runtime/tty.test.ts test/runtime/pool.test.ts test/image/sandbox-commit.test.ts
  test/security/escape.test.ts test/security/files.test.ts test/security/policy.test.ts test/security/seccomp-kernel.test.ts
  test/network/userspace.test.ts test/network/userspace-links.test.ts test/image/registry.test.ts test/image/build.test.ts"
sh scripts/rootless-user.sh setup "$user"
# The user must read the built checkout; where it lies in a directory closed to others (under
# /root, say), the tests run from a copy (without .git) in a temp dir it can read.
copy=
if ! runuser -u "$user" -- test -r "$PWD/package.json"; then
  copy=$(mktemp -d /tmp/hutch-rootless-src-XXXXXX)
  chmod 0755 "$copy"
  tar --exclude=./.git -cf - . | tar -C "$copy" -xf -
  chmod 0755 "$copy" # tar gave it the checkout's own mode
  cd "$copy"
fi
store=$(mktemp -d /tmp/hutch-rootless-ci-XXXXXX)
chown "$user:" "$store"
# vite writes its config bundle into node_modules/.vite-temp, which the user cannot create.
mkdir -p node_modules/.vite-temp && chmod 1777 node_modules/.vite-temp
status=0
sh scripts/rootless-user.sh run "$user" --tun -- env HUTCH_REQUIRE_ALL="${HUTCH_REQUIRE_ALL:-1}" HUTCH_ROOT="$store/store" \
  HUTCH_ROOTLESS_FILES="$(echo $files)" npx vitest run --configLoader native --config vitest.rootless.config.mjs || status=$?
sh scripts/rootless-user.sh teardown "$user"
sh scripts/rootless-user.sh run "$user" --no-cgroup -- node -e "
  const { removeStoreTree } = await import('./dist/lib/host/ids.js');
  const { idSource } = await import('./dist/lib/host/ids.js');
  idSource(); removeStoreTree('$store', 'store');" --input-type=module 2>/dev/null || true
rm -rf "$store"
if [ -n "$copy" ]; then cd / && rm -rf "$copy"; fi
exit $status
