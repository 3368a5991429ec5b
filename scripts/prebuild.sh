#!/bin/sh
# `npm run prebuild`: the binaries the npm package ships, in prebuilds/<platform>-<arch>/:
#   hutch.glibc.node  the addon, one N-API build for every supported Node (prebuildify --napi)
#   hutch-init        the static init (scripts/build-init.sh)
#   templates/hutch_template.node, templates/libhutch-zygote.so   templates' host addon and
#                     zygote helper; templates/hutch_zygote_node.node the node zygote's
#                     addon (N-API: any node the image has) (in a folder of their own: node-gyp-build picks the
#                     addon among the .node files of prebuilds/<platform>-<arch>/, and an
#                     untagged one there would match any libc)
# for linux-x64 and linux-arm64 (glibc). The architecture that is not this machine's is
# cross-built with Debian's cross toolchain (apt-get install g++-aarch64-linux-gnu
# gcc-aarch64-linux-gnu, or g++-x86-64-linux-gnu on an arm64 machine).
# Usage: scripts/prebuild.sh [ARCH...]   (default: x64 arm64)
#        scripts/prebuild.sh --check     (npm pack's prepack: every prebuild there and newer than its sources)
set -eu
cd "$(dirname "$0")/.."
if [ "${1:-}" = --check ]; then
  for arch in x64 arm64; do
    for f in prebuilds/linux-$arch/hutch.glibc.node prebuilds/linux-$arch/hutch-init prebuilds/linux-$arch/templates/hutch_template.node \
      prebuilds/linux-$arch/templates/libhutch-zygote.so prebuilds/linux-$arch/templates/hutch_zygote_node.node; do
      [ -f "$f" ] || { echo "prebuild: $f is missing: run npm run prebuild before npm pack" >&2; exit 1; }
      newer=$(find addon binding.gyp scripts/build-init.sh scripts/build-zygote.sh -newer "$f" -type f ! -name "*.py" ! -name "*.cjs" | head -1) # zygote.py and zygote.cjs ship as source
      [ -z "$newer" ] || { echo "prebuild: $f is older than $newer: run npm run prebuild before npm pack" >&2; exit 1; }
    done
  done
  exit 0
fi
archs=${*:-x64 arm64}
case $(uname -m) in
  x86_64) host=x64 ;;
  aarch64) host=arm64 ;;
  *) host=$(uname -m) ;;
esac
for arch in $archs; do
  case $arch in
    x64) triple=x86_64-linux-gnu ;;
    arm64) triple=aarch64-linux-gnu ;;
    *) echo "prebuild: unknown arch $arch (x64 or arm64)" >&2; exit 2 ;;
  esac
  out=prebuilds/linux-$arch
  rm -rf "$out"
  echo "== prebuild linux-$arch"
  if [ "$arch" = "$host" ]; then
    npx prebuildify --napi --tag-libc --strip
  else
    for t in gcc g++ strip; do
      command -v "$triple-$t" >/dev/null 2>&1 || {
        echo "prebuild: cross-building linux-$arch needs $triple-$t: apt-get install g++-$(echo "$triple" | sed 's/_/-/g') gcc-$(echo "$triple" | sed 's/_/-/g')" >&2
        exit 1
      }
    done
    CC=$triple-gcc CXX=$triple-g++ LINK=$triple-g++ AR=$triple-ar PREBUILD_STRIP_BIN=$triple-strip \
      npx prebuildify --napi --tag-libc --strip --arch "$arch"
  fi
  cp build/Release/hutch-init "$out/hutch-init"
  # Templates (lib/template/native.ts finds them beside the addon): the host's part of the
  # addon, and the helper a zygote loads (scripts/build-zygote.sh, built with $CC).
  rm -f "$out/hutch_template.node" "$out/libhutch-zygote.so"
  mkdir -p "$out/templates"
  cp build/Release/hutch_template.node build/Release/libhutch-zygote.so build/Release/hutch_zygote_node.node "$out/templates/"
  file "$out"/* "$out"/templates/* 2>/dev/null || ls -lR "$out"
done
# prebuildify moves the addon out of build/ (and the last build may be another arch's): the
# checkout's own build is remade for this machine, so `npm run demo` and the tests keep working.
echo "== rebuild build/ for this machine"
npx node-gyp rebuild >/dev/null 2>&1
