#!/usr/bin/env bash
# hutch's runtime tests inside an unprivileged podman container: the restrictions of a
# Kubernetes pod with `hostUsers: false` (docs/kubernetes.md says which flag stands for which
# pod field, and why each is needed).
#
# 1. Builds an image from this host's files (no registry): a rootfs of the files of a few
#    Debian packages (node, python3, busybox, util-linux, bubblewrap, ...) and the shared
#    libraries they load, plus this checkout (built: node_modules, build/, dist/) at /hutch;
#    imported with `podman import`.
# 2. Runs a probe inside (can this container make the user, pid, mount and net namespaces and
#    mount proc, tmpfs and overlay that hutch needs? with unshare(1) and bwrap), then the test
#    command, as root of the container's own user namespace (hutch's mode: userns-root), with
#    HUTCH_REQUIRE_ALL=1 and the store on a volume (an emptyDir in the pod).
# 3. Removes the container, the image, the volume and the /etc/subuid and /etc/subgid entries
#    it added (none when `containers` already had one).
#
# Usage: scripts/container-test.sh [--keep-image] [--probe-only] [--rootless USER] [-- TEST COMMAND...]
#   default command: npx vitest run --configLoader native --config vitest.rootless.config.mjs,
#   with HUTCH_ROOTLESS_FILES passed in (default: test/kernel/namespaces.test.ts and the files
#   scripts/rootless-ci.sh runs as an ordinary user)
#   --keep-image     leave the image (localhost/hutch-ct:test) for another run
#   --probe-only     run only the namespace probe
#   --rootless USER  run podman as USER (rootless podman; USER needs ranges in /etc/subuid and
#                    /etc/subgid of at least 65536 ids); the container's root is then USER's
#                    uid on the host, and its ids come from USER's ranges
# Env: HUTCH_CT_PODMAN_ARGS  extra podman run arguments, e.g. "--read-only --mount
#                            type=tmpfs,destination=/hutch/node_modules/.vite-temp" for
#                            readOnlyRootFilesystem (not the default: some tests plant files
#                            in the host's /usr/local)
#      HUTCH_ROOTLESS_FILES  the test files the rootless config runs (passed into the container)
#      HUTCH_CT_IDS          the container's id count (default 65536, a pod's default; the
#                            kubelet's userNamespaces.idsPerPod sets another)
#      HUTCH_CT_CAPS         the capabilities the container keeps (default
#                            setuid,setgid,setfcap,chown,fowner,dac_override,sys_ptrace)
#      HUTCH_CT_RUNTIME      OCI runtime (default: crun on pure cgroup v2, runc on v1/hybrid,
#                            where crun refuses a hybrid layout with v2 controllers)
# Needs root (podman as root gives the container a user namespace of its own with
# --userns=auto) and the project built (npm ci). Exit status: the test command's.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

keep_image=0
probe_only=0
rootless=
while [ $# -gt 0 ]; do
  case "$1" in
    --keep-image) keep_image=1; shift ;;
    --probe-only) probe_only=1; shift ;;
    --rootless) rootless=${2:?--rootless needs a user name}; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then
  # The tests that hold outside host root, with the rootless config (its own cache dir; every
  # file it is given, serial ones included): HUTCH_ROOTLESS_FILES names them.
  set -- npx vitest run --configLoader native --config vitest.rootless.config.mjs
fi
# By default the files scripts/rootless-ci.sh runs as an ordinary user (the runtime and
# security tests that are not about host root), and the namespaces test.
default_files="test/kernel/namespaces.test.ts"
if [ -f scripts/rootless-ci.sh ]; then
  default_files="$default_files $(sed -n '/^files="/,/"$/p' scripts/rootless-ci.sh | tr -d '"\\' | sed 's/^files=//' | tr -s ' \n' ' ')"
fi
rootless_files=$(echo ${HUTCH_ROOTLESS_FILES:-$default_files})

fail() { echo "container-test: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (podman as root gives the container a user namespace of its own with --userns=auto)"
command -v podman >/dev/null || fail "podman is missing: apt-get install podman uidmap"
[ -f build/Release/hutch.node ] && [ -f dist/lib/index.js ] && [ -d node_modules/vitest ] ||
  fail "build the project first: npm ci (or npx node-gyp rebuild && npx tsc -p tsconfig.json)"

start=$(date +%s%N)
ms() { echo $(( ($(date +%s%N) - start) / 1000000 )); }
image=localhost/hutch-ct:test
name=hutch-ct-$$
# No "hutch" in the volume's name or mount point: the suite's leak check counts every mount
# whose line says hutch.
volume=ct-store-$$
# Nor in the temp dir's: podman's storage is under it where /var is overlayfs.
tmp=$(mktemp -d /var/tmp/ct-test.XXXXXX)
added_subid=0
tun_mode=
# Podman's overlay storage cannot sit on overlayfs (/var under v2vm is one): then a storage of
# this run's own under $tmp.
pm=(podman)
if [ -n "$rootless" ]; then
  # Rootless podman as that user, in its own session dir and from its home.
  ruid=$(id -u "$rootless") || fail "no user $rootless"
  grep -q "^$rootless:" /etc/subuid && grep -q "^$rootless:" /etc/subgid ||
    fail "$rootless has no range in /etc/subuid and /etc/subgid (rootless podman needs one)"
  rhome=$(getent passwd "$rootless" | cut -d: -f6)
  if [ ! -d "/run/user/$ruid" ]; then
    mkdir -p "/run/user/$ruid" && chown "$rootless:" "/run/user/$ruid" && chmod 700 "/run/user/$ruid"
  fi
  pm=(runuser -u "$rootless" -- env "XDG_RUNTIME_DIR=/run/user/$ruid" "HOME=$rhome" sh -c 'cd ~ && exec podman "$@"' podman)
elif [ "$(stat -fc %T /var/lib 2>/dev/null)" = overlayfs ]; then
  pm=(podman --root "$tmp/storage" --runroot "$tmp/runroot" --storage-driver overlay)
fi

cleanup() {
  "${pm[@]}" rm -f -t 0 "$name" >/dev/null 2>&1 || true
  "${pm[@]}" volume rm -f "$volume" >/dev/null 2>&1 || true
  [ "$keep_image" = 1 ] || "${pm[@]}" rmi -f "$image" >/dev/null 2>&1 || true
  if mountpoint -q "$tmp/store" 2>/dev/null; then umount "$tmp/store" || true; fi
  rm -rf "$tmp"
  [ -z "$tun_mode" ] || chmod "$tun_mode" /dev/net/tun
  if [ "$added_subid" = 1 ]; then
    sed -i '/^containers:2147483648:268435456$/d' /etc/subuid /etc/subgid
  fi
}
trap cleanup EXIT

# --userns=auto takes the container's ids from the ranges of the user `containers` in
# /etc/subuid and /etc/subgid. 2^31.. is above every ordinary range and above hutch's own
# root-mode range (1073741824..2^31, lib/identity.ts); 2^28 ids hold 4096 containers of 65536.
if ! grep -q '^containers:' /etc/subuid || ! grep -q '^containers:' /etc/subgid; then
  grep -q '^containers:' /etc/subuid || echo 'containers:2147483648:268435456' >>/etc/subuid
  grep -q '^containers:' /etc/subgid || echo 'containers:2147483648:268435456' >>/etc/subgid
  added_subid=1
fi

# /dev/net/tun is 0666 on a Debian host (udev's default rule): any user may open it, and its
# use is confined to the opener's own network namespace. Some machines (this CI's) leave it
# 0600; root of the container's user namespace is not host root and then cannot open it.
tun_mode=
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
  tun_mode=$(stat -c %a /dev/net/tun)
  chmod 0666 /dev/net/tun
fi

# ---------------------------------------------------------------- the image, from host files
build_image() {
  local stage=$tmp/rootfs list=$tmp/files
  # stdin: the packages' paths. Out: each file or symlink (directories come with them), by its
  # real directory (Debian 12 is merged-/usr), and every shared library the ELF files among
  # them and the native addons in argv (the project's, node_modules') load, with its symlink chain; one ldd run for all.
  local filelist='
import os, re, subprocess, sys
skip = re.compile(r"^/usr/share/(doc|man|info|locale|lintian|bash-completion|zsh)/|^/usr/include/node/|^/etc/")
out, elves = set(), sys.argv[1:]
def add(p):
    out.add(os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p)))
    if os.path.islink(p): out.add(os.path.realpath(p))
for line in sys.stdin:
    p = line.rstrip("\n")
    if skip.search(p) or not (os.path.islink(p) or os.path.isfile(p)): continue
    add(p)
    if not os.path.islink(p):
        with open(p, "rb") as f:
            if f.read(4) == b"\x7fELF": elves.append(p)
# npm (npx) as installed, which may be newer than the nodejs package listed.
for d, _, fs in os.walk("/usr/lib/node_modules/npm"):
    for f in fs: out.add(os.path.join(d, f))
ldd = subprocess.run(["ldd", *elves], capture_output=True, text=True).stdout
for lib in set(re.findall(r"(/[^ \t\n:]+) \(0x", ldd)):
    if os.path.exists(lib): add(lib)
print("\n".join(sorted(out)))
'
  mkdir -p "$stage"/usr/{bin,sbin,lib,lib64}
  # Debian 12 is merged-/usr: the top-level dirs are symlinks, as on the host.
  ln -s usr/bin "$stage/bin"; ln -s usr/sbin "$stage/sbin"; ln -s usr/lib "$stage/lib"; ln -s usr/lib64 "$stage/lib64"
  # The packages whose files the tests and the 'host' image use (gcc: the security tests
  # build their probes with gcc -static; docker-registry, skopeo, umoci: the registry tests);
  # their shared libraries are added by ldd.
  local pkgs="coreutils dash bash busybox-static grep sed findutils util-linux mount procps
    bubblewrap iproute2 nftables uidmap passt tar gzip diffutils hostname libc-bin nodejs
    python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3-minimal
    gcc gcc-12 cpp cpp-12 libgcc-12-dev libc6-dev linux-libc-dev libcrypt-dev binutils
    binutils-x86-64-linux-gnu binutils-aarch64-linux-gnu docker-registry skopeo umoci mawk"
  # shellcheck disable=SC2086
  dpkg -L $pkgs 2>/dev/null |
    python3 -c "$filelist" $(find "$repo/build/Release" "$repo/node_modules" -name '*.node' -type f) >"$list"
  tar -C / --no-recursion -cf - -P -T "$list" 2>/dev/null |
    tar -C "$stage" --keep-directory-symlink -xf - 2>/dev/null || true
  [ -x "$stage/usr/bin/node" ] && [ -x "$stage/usr/bin/busybox" ] || fail "the rootfs lacks node or busybox"
  # /etc: users and name service, and a linker cache for this file set.
  mkdir -p "$stage/etc" "$stage"/{proc,sys,dev,run,root,var/tmp,var/lib/store,tmp,usr/local/bin}
  chmod 1777 "$stage/tmp" "$stage/var/tmp"
  printf 'root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$stage/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$stage/etc/nsswitch.conf"
  printf '127.0.0.1 localhost\n::1 localhost\n' >"$stage/etc/hosts"
  cp /etc/os-release "$stage/etc/os-release" 2>/dev/null || true
  # skopeo reads its trust policy (the registry tests).
  if [ -f /etc/containers/policy.json ]; then
    mkdir -p "$stage/etc/containers" && cp /etc/containers/policy.json "$stage/etc/containers/"
  fi
  # awk: Debian's alternatives link (/etc is not taken from the host).
  [ -e "$stage/usr/bin/awk" ] || ln -s mawk "$stage/usr/bin/awk"
  ldconfig -r "$stage" 2>/dev/null || true
  # The project, built, at /hutch.
  mkdir -p "$stage/hutch"
  tar -C "$repo" --exclude=./.git --exclude=./prebuilds --exclude=./bench/results -cf - . | tar -C "$stage/hutch" -xf -
  echo "   rootfs: $(du -sm "$stage" | cut -f1) MiB, $(wc -l <"$list") host files ($(ms) ms)"
  tar -C "$stage" --numeric-owner -cf - . |
    "${pm[@]}" import --change 'WORKDIR /hutch' --change 'ENV PATH=/usr/local/bin:/usr/bin:/usr/sbin' \
      --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
  rm -rf "$stage"
  echo "   imported $image ($(ms) ms)"
}

echo "== container-test: image from this host's files"
if [ "$keep_image" = 1 ] && "${pm[@]}" image exists "$image"; then
  echo "   reusing $image"
else
  build_image
fi

# ---------------------------------------------------------------- the store
# A podman volume, or, where podman's storage is on tmpfs (v2vm), an ext4 image of its own:
# overlayfs in a user namespace keeps its upper dir's metadata in user.* xattrs, which tmpfs
# has only from Linux 6.6. `:U` gives the directory to the container's root.
store_mount=(--mount "type=volume,source=$volume,destination=/var/lib/store")
if [ "$(stat -fc %T "$tmp")" = tmpfs ]; then
  truncate -s 4G "$tmp/store.img"
  mkfs.ext4 -q -F "$tmp/store.img"
  mkdir -p "$tmp/store"
  mount -o loop "$tmp/store.img" "$tmp/store"
  store_mount=(-v "$tmp/store:/var/lib/store:U")
fi

# ---------------------------------------------------------------- the flags
# One line per pod setting; docs/kubernetes.md has the table (flag -> pod field -> why).
cgroup_v2=0
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && cgroup_v2=1
runtime=${HUTCH_CT_RUNTIME:-$([ "$cgroup_v2" = 1 ] && echo crun || echo runc)}
flags=(
  --runtime "$runtime"
  # hostUsers: false. The container's root is an unprivileged host id range of its own
  # (65536 ids, as a pod gets); hutch sees mode 'userns-root'.
  --userns="auto:size=${HUTCH_CT_IDS:-65536}"
  # securityContext.seccompProfile {type: Localhost, localhostProfile: hutch.json}: the
  # runtime's default profile refuses setns and sethostname without CAP_SYS_ADMIN.
  --security-opt "seccomp=$repo/deploy/seccomp/hutch.json"
  # securityContext.procMount: Unmasked. A fresh proc mount (each sandbox's pid namespace)
  # is refused while the container's /proc has masked or read-only sub-mounts.
  # /sys/fs/cgroup: the container's cgroup namespace mounted read-write: containerd's
  # `cgroup_writable = true` (2.1+) on the pod's RuntimeClass handler, or CRI-O's
  # io.kubernetes.cri-o.cgroup2-mount-hierarchy-rw annotation. On cgroup v2 the runtime hands
  # the container's cgroup to its root (crun and runc chown it); on v1 nothing does, and
  # hutch runs without cgroup limits (EUNSUPPORTED for them).
  # Two options: podman 4.3 takes "/proc/*:/sys/fs/cgroup" in one for /proc only (the cgroup
  # mount stays read-only; measured under v2vm).
  --security-opt 'unmask=/proc/*' --security-opt unmask=/sys/fs/cgroup
  # securityContext.capabilities {drop: [ALL], add: [SETUID, SETGID, SETFCAP, CHOWN, FOWNER,
  # DAC_OVERRIDE, SYS_PTRACE]}, all of them over the container's own user namespace only. SYS_PTRACE:
  # writeFile/readFile open beneath /proc/<init>/root of a non-dumpable init. SETFCAP: a
  # child user namespace's map that holds the container's uid 0 (the kernel asks it of any
  # map with the parent's root, 5.12+); SETUID, SETGID: a map of more than one id (the
  # sandboxes' range); CHOWN, FOWNER, DAC_OVERRIDE: image layers given the range's owners
  # and modes at import, and the store's files of those owners read and removed later.
  --cap-drop=all --cap-add="${HUTCH_CT_CAPS:-setuid,setgid,setfcap,chown,fowner,dac_override,sys_ptrace}"
  # securityContext.allowPrivilegeEscalation: false (no_new_privs; hutch needs no setuid
  # binary in userns-root mode: it writes the maps itself).
  --security-opt no-new-privileges
  # The pod's cgroup namespace (private by default on cgroup v2 nodes).
  --cgroupns=private
  # /dev/net/tun: pasta's tap device for `network: 'bridge'` (resources.limits of a device
  # plugin, or a hostPath CharDevice volume, in the pod).
  --device /dev/net/tun
  # The store on a volume, not the container's overlay root (an overlay upper dir cannot be
  # on overlayfs): an emptyDir in the pod.
  "${store_mount[@]}"
  # Not pod settings: this machine's hard limits are below podman's defaults and podman
  # cannot raise them (no CAP_SYS_RESOURCE here).
  --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=32768:32768
  --env HUTCH_REQUIRE_ALL=1 --env HUTCH_ROOT=/var/lib/store --env CI=1
  --env "HUTCH_ROOTLESS_FILES=$rootless_files"
)
# shellcheck disable=SC2206
extra=(${HUTCH_CT_PODMAN_ARGS:-})

probe='set -u
ok=0
try() { if out=$("$@" 2>&1); then echo "   ok    $*"; else echo "   FAIL  $*: $out"; ok=1; fi; }
echo "   mode: uid $(id -u), uid_map: $(tr -s " " <"/proc/self/uid_map" | tr "\n" ";")"
try unshare -Urnpf --mount-proc true
try unshare -Urnpfm sh -c "mount -t tmpfs t /tmp && mkdir /tmp/l /tmp/u /tmp/w /tmp/m && mount -t overlay o -o lowerdir=/tmp/l,upperdir=/tmp/u,workdir=/tmp/w,userxattr /tmp/m"
try bwrap --unshare-all --uid 0 --gid 0 --ro-bind / / --proc /proc --dev /dev --tmpfs /tmp true
try bwrap --unshare-all --hostname probe --ro-bind / / --proc /proc --dev /dev --tmpfs /tmp true
try unshare -Urun hostname probe
try unshare -Urm nsenter --mount=/proc/self/ns/mnt true
try unshare -Urn ip tuntap add dev probe0 mode tap
echo "   cgroup: $(cat /proc/self/cgroup | tr "\n" " ")"
echo "   writable cgroup dirs: $(for d in /sys/fs/cgroup /sys/fs/cgroup/*/; do [ -w "$d" ] && printf "%s " "$d"; done)"
exit $ok'

echo "== container-test: probe (namespaces, proc, tmpfs, overlay inside the container)"
echo "   podman run --rm ${flags[*]} ${extra[*]} $image ..."
set +e
"${pm[@]}" run --rm --name "$name" "${flags[@]}" "${extra[@]}" "$image" sh -c "$probe"
rc=$?
set -e
[ "$rc" = 0 ] || fail "the container cannot make the namespaces hutch needs (probe above)"
[ "$probe_only" = 1 ] && { echo "container-test: probe PASS ($(ms) ms)"; exit 0; }

echo "== container-test: $* (inside, HUTCH_REQUIRE_ALL=1)"
set +e
"${pm[@]}" run --rm --name "$name" "${flags[@]}" "${extra[@]}" "$image" "$@"
rc=$?
set -e
if [ "$rc" = 0 ]; then echo "container-test: PASS ($(ms) ms)"; else echo "container-test: FAIL, exit $rc ($(ms) ms)"; fi
exit "$rc"
