#!/bin/sh
# Debian's arm64 nodejs under qemu-user loads an arm64 hutch addon and calls it. Nothing is
# installed on the host: apt runs with a private state, cache and architecture (arm64) under
# DIR, downloads nodejs and its libraries, and dpkg -x unpacks them into DIR/root, which qemu
# uses as the library root (-L). Debian 12's nodejs is 18: N-API 8 (the addon's) is there.
# Usage: scripts/arm64-node.sh DIR ADDON
set -eu
dir=$1
addon=$(readlink -f "$2")
init=$(dirname "$addon")/hutch-init
mkdir -p "$dir/state/lists/partial" "$dir/cache/archives/partial" "$dir/debs" "$dir/root"
: >"$dir/status"
opts="-o Dir::State=$dir/state -o Dir::State::status=$dir/status -o Dir::Cache=$dir/cache
  -o Dir::Etc::SourceParts=/etc/apt/sources.list.d -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o APT::Sandbox::User=root -qq"
# shellcheck disable=SC2086
apt-get $opts update
# shellcheck disable=SC2086
pkgs=$(apt-cache $opts depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances \
  nodejs | grep -v '^ ' | grep -v '^<' | sort -u)
# shellcheck disable=SC2086
(cd "$dir/debs" && apt-get $opts download $pkgs)
for d in "$dir"/debs/*.deb; do dpkg -x "$d" "$dir/root"; done
node=$dir/root/usr/bin/node
[ -x "$node" ] || { echo "arm64-node: no node in the downloaded packages" >&2; exit 1; }
cat >"$dir/load.cjs" <<'JS'
const [addon, init] = process.argv.slice(2);
const m = require(addon);
if (!Array.isArray(m.steps) || m.steps[0] !== 'clone') throw new Error('steps: ' + JSON.stringify(m.steps));
const p = m.pipe();
if (!Array.isArray(p)) throw new Error('pipe: ' + JSON.stringify(p));
m.close(p[0]); m.close(p[1]);
const r = m.setInit(init);
if (typeof r !== 'number') throw new Error('setInit: ' + JSON.stringify(r));
console.log(`arm64 node ${process.version} (${process.arch}) loaded ${addon}: ${m.steps.length} steps, pipe, setInit ok`);
JS
qemu-aarch64-static -L "$dir/root" "$node" "$dir/load.cjs" "$addon" "$init"
