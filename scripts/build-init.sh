#!/bin/sh
# Builds hutch's init (addon/init/init.c), a static binary exec'd as PID 1 of every sandbox.
# With musl when it is installed (apt-get install musl-tools) and the target is this machine's
# architecture: musl's startup is a few instructions, where glibc's static startup probes the
# CPU's caches with cpuid, about 0.4 ms of every sandbox's start in a VM (each cpuid traps to
# the hypervisor). Otherwise, and when cross-building (CC=aarch64-linux-gnu-gcc, as
# scripts/prebuild.sh does), static glibc.
# Usage: build-init.sh SOURCE OUTPUT
set -eu
src=$1
out=$2
flags="-std=gnu11 -O2 -Wall -Wextra -Wno-unused-parameter -ffunction-sections -fdata-sections"
cc=${CC:-cc}
if ! command -v "$cc" >/dev/null 2>&1; then
  echo "hutch: building the init needs a C compiler ($cc not found): apt-get install gcc libc6-dev" >&2
  exit 1
fi
host=$(cc -dumpmachine 2>/dev/null || echo none)
target=$("$cc" -dumpmachine 2>/dev/null || echo none)
if command -v musl-gcc >/dev/null 2>&1 && [ "$host" = "$target" ]; then
  # musl-gcc leaves out the system include dirs: give it the kernel's UAPI headers alone.
  inc=$(mktemp -d)
  trap 'rm -rf "$inc"' EXIT
  ln -s /usr/include/linux "$inc/linux"
  ln -s /usr/include/asm-generic "$inc/asm-generic"
  asm=/usr/include/$host/asm
  [ -d "$asm" ] || asm=/usr/include/asm
  ln -s "$asm" "$inc/asm"
  # shellcheck disable=SC2086
  musl-gcc $flags -isystem "$inc" -static -s -Wl,--gc-sections -o "$out" "$src"
else
  # shellcheck disable=SC2086
  "$cc" $flags -static -s -Wl,--gc-sections -o "$out" "$src"
fi
