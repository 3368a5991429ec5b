#!/bin/sh
# A perf profile of N serial Sandbox.run starts of /bin/true, drawn as a flame graph SVG, with
# each phase's share printed (docs/performance.md, "Where the time goes").
# Usage: bench/profile-starts.sh OUT.svg [N] [title]   (root; perf; npm run build:ts first)
# The workload runs in a cgroup2 directory of its own and perf records the whole machine
# filtered by that cgroup: the sandboxes' leaves sit below it, so init and the command are
# recorded too (a plain `perf record -- node ...` misses them).
# With KWORKERS=1, a second run of the same N starts is recorded without the cgroup filter and
# the kernel threads' part of a start is printed by the work they ran (bench/kworkers.ts): the
# network namespace's cleanup_net, RCU callbacks, cgroup and IPC namespace teardown. Kernel
# threads belong to the root cgroup, so the first recording never sees them; /proc/stat does.
set -eu
out=$1
n=${2:-1000}
title=${3:-"Sandbox.run of /bin/true (busybox), $n starts"}
hz=499
cd "$(dirname "$0")/.."
root=/sys/fs/cgroup/unified
[ -f "$root/cgroup.procs" ] || root=/sys/fs/cgroup
name=hutch-profile-$$
tmp=$(mktemp -d)
mkdir "$root/$name"
trap 'rmdir "$root/$name/hutch" 2>/dev/null || true; rmdir "$root/$name" 2>/dev/null || true; rm -rf "$tmp"' EXIT
perf record -a -g -e cpu-clock -F $hz -G "$name" -o "$tmp/perf.data" -- \
  sh -c "echo \$\$ > $root/$name/cgroup.procs && exec node --perf-basic-prof dist/bench/starts.js $n"
perf script -i "$tmp/perf.data" > "$tmp/perf.txt" 2>/dev/null
node dist/bench/flame.js "$tmp/perf.txt" "$out" "$title" "perf record -a -g -e cpu-clock -F $hz -G <the workload's cgroup>: the benchmark process and every sandbox it starts"
if [ "${KWORKERS:-0}" = 1 ]; then
  perf record -a -g -e cpu-clock -F $hz -o "$tmp/all.data" -- node dist/bench/starts.js "$n"
  perf script -i "$tmp/all.data" > "$tmp/all.txt" 2>/dev/null
  node dist/bench/kworkers.js "$tmp/all.txt" "$n" $hz
fi
