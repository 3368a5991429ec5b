#!/bin/sh
# An ordinary user for hutch's rootless tests, set up as a distribution would for rootless
# containers: subordinate id ranges in /etc/subuid and /etc/subgid, and a delegated cgroup
# (as systemd's Delegate=yes: a directory per hierarchy, chowned to the user, that the user's
# processes are moved into). Run as root.
#
#   scripts/rootless-user.sh setup USER           make the user, its ranges and its cgroups
#   scripts/rootless-user.sh run USER [--no-cgroup] [--tun] -- CMD...
#                                                  run CMD as USER inside its delegated cgroups
#                                                  (--no-cgroup: in the caller's, not delegated;
#                                                  --tun: a 0666 /dev/net/tun for pasta)
#   scripts/rootless-user.sh teardown USER        remove its cgroups (the user and ranges stay)
#
# The delegated directories are hutch-delegate-USER next to the caller's own cgroup in each
# hierarchy (never inside another's subtree); teardown kills what is left in them and removes
# them, deepest first. On a pure cgroup v2 host, as systemd delegates a unit: the controllers
# are enabled in the delegated cgroup, the user's processes run in its leaf app/ (cgroup v2's
# "no internal processes" rule), and hutch is given the empty sibling sandboxes/ through
# HUTCH_CGROUP_PARENT.
set -eu
cmd=${1:?usage: rootless-user.sh setup|run|teardown USER}
user=${2:?usage: rootless-user.sh setup|run|teardown USER}
shift 2

# One line per hierarchy hutch uses: "<mount> <caller's cgroup path>".
hierarchies() {
  while IFS=: read -r _ ctrls path; do
    case "$ctrls" in
      '') [ -d /sys/fs/cgroup/unified ] && echo "/sys/fs/cgroup/unified $path" || echo "/sys/fs/cgroup $path" ;;
      name=*) ;;
      *)
        for c in cpuset memory pids cpu cpuacct blkio freezer; do
          case ",$ctrls," in *",$c,"*) [ -d "/sys/fs/cgroup/$c" ] && echo "/sys/fs/cgroup/$c $path"; break ;; esac
        done
        ;;
    esac
  done </proc/self/cgroup | sort -u
}

pure_v2() { ! grep -qv '^0::' /proc/self/cgroup; }

delegated_dirs() {
  hierarchies | while read -r mount path; do
    [ "$path" = / ] && path=
    echo "$mount$path/hutch-delegate-$user"
  done
}

case "$cmd" in
  setup)
    id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$user"
    for f in /etc/subuid /etc/subgid; do
      grep -q "^$user:" "$f" 2>/dev/null || echo "$user:300000000:1000000" >>"$f"
    done
    delegated_dirs | while read -r d; do
      mkdir -p "$d"
      case "$d" in
        */cpuset/*)
          cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
          cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
          ;;
      esac
      if pure_v2; then
        for c in $(cat "$d/cgroup.controllers"); do echo "+$c" >"$d/cgroup.subtree_control" 2>/dev/null || true; done
        mkdir -p "$d/app"
        chown "$user:" "$d/app" "$d/app/cgroup.procs" "$d/app/cgroup.threads" "$d/app/cgroup.subtree_control"
      fi
      chown "$user:" "$d"
      for f in cgroup.procs tasks cgroup.subtree_control cgroup.threads; do
        [ -e "$d/$f" ] && chown "$user:" "$d/$f"
      done
    done
    ;;
  run)
    delegate=1
    tun=0
    while :; do
      case "${1:-}" in
        --no-cgroup) delegate=0; shift ;;
        --tun) tun=1; shift ;;
        *) break ;;
      esac
    done
    [ "${1:-}" = -- ] && shift
    dirs=
    parent=
    if [ "$delegate" = 1 ]; then
      dirs=$(delegated_dirs | tr '\n' ' ')
      if pure_v2; then
        d=$(delegated_dirs)
        dirs="$d/app"
        parent="HUTCH_CGROUP_PARENT=${d#/sys/fs/cgroup}/sandboxes"
      fi
    fi
    home=$(getent passwd "$user" | cut -d: -f6)
    if [ "$tun" = 1 ]; then
      # pasta (the userspace link) opens /dev/net/tun, which Debian's udev makes 0666 but some
      # hosts leave 0600: a private mount namespace gets a 0666 node of its own (the host's
      # node is not changed).
      node=$(mktemp -d /tmp/hutch-tun.XXXXXX)
      mknod "$node/tun" c 10 200 && chmod 0666 "$node/tun"
      # shellcheck disable=SC2016
      sh -c 'for d in '"$dirs"'; do echo $$ >"$d/cgroup.procs"; done; exec "$@"' sh \
        unshare -m --propagation private sh -c 'mount --bind "$0/tun" /dev/net/tun && exec "$@"' "$node" \
        runuser -u "$user" -- env HOME="$home" $parent "$@" || status=$?
      rm -rf "$node"
      exit "${status:-0}"
    fi
    # shellcheck disable=SC2016
    exec sh -c 'for d in '"$dirs"'; do echo $$ >"$d/cgroup.procs"; done; exec "$@"' sh \
      runuser -u "$user" -- env HOME="$home" $parent "$@"
    ;;
  teardown)
    delegated_dirs | while read -r d; do
      [ -d "$d" ] || continue
      # Deepest first: sandboxes' leaves, hutch's subtree root, then the delegated dir.
      find "$d" -depth -type d | while read -r c; do
        if [ -e "$c/cgroup.kill" ]; then echo 1 >"$c/cgroup.kill" 2>/dev/null || true; fi
        for p in $(cat "$c/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        i=0
        while ! rmdir "$c" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
      done
    done
    ;;
  *)
    echo "rootless-user.sh: unknown command $cmd" >&2
    exit 2
    ;;
esac
