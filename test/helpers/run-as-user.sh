#!/bin/sh
# Runs test files as an ordinary user, as CI's user run does (HUTCH_REQUIRE_ALL=1, a store of
# the user's own). Run as root from the built worktree:
#   sh test/helpers/run-as-user.sh [--tun] [--serial] USER test/network/userspace.test.ts [more files]
# --tun: in a private mount namespace whose /dev/net/tun is a 0666 node (for a host whose
#   device is 0600 root, like the development VM; the host's own node is not changed).
# --serial: with vitest.timing.config.ts, for the files it runs one at a time (SERIAL_FILES,
#   network-userspace.test.ts among them); the default config leaves those out.
set -eu
tun=0
config=
while :; do
  case "${1:-}" in
    --tun) tun=1; shift ;;
    --serial) config="-c vitest.timing.config.ts"; shift ;;
    *) break ;;
  esac
done
user="$1"; shift
home=$(getent passwd "$user" | cut -d: -f6)
dir=$(pwd)
uid=$(id -u "$user")
# vitest bundles its config into node_modules/.vite-temp: a directory the user may write.
mkdir -p node_modules/.vite-temp && chmod 1777 node_modules/.vite-temp
run="cd '$dir' && exec env -i HOME='$home' USER='$user' PATH=/usr/local/bin:/usr/bin:/bin \
  HUTCH_REQUIRE_ALL=1 HUTCH_ROOT='/var/tmp/hutch-store-$user' XDG_RUNTIME_DIR='/run/user/$uid' \
  ${HUTCH_CGROUP_PARENT:+HUTCH_CGROUP_PARENT='$HUTCH_CGROUP_PARENT'} \
  npx vitest run $config $*"
if [ "$tun" = 1 ]; then
  node=$(mktemp -d /tmp/hutch-tun.XXXXXX)
  trap 'rm -rf "$node"' EXIT
  mknod "$node/tun" c 10 200 && chmod 0666 "$node/tun"
  unshare -m --propagation private sh -c "mount --bind '$node/tun' /dev/net/tun && runuser -u '$user' -- sh -c \"$run\""
else
  runuser -u "$user" -- sh -c "$run"
fi
