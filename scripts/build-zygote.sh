#!/bin/sh
# Builds libhutch-zygote.so (addon/zygote/helper.c, serve.c, mounts.c and
# mmap_hint.c): the C helper a template's
# zygote loads (Python through ctypes) to make each forked child a fresh sandbox.
# docs/templates.md. Usage: build-zygote.sh OUTPUT SOURCE...
set -eu
cc=${CC:-cc}
out=$1
shift
exec "$cc" -std=gnu11 -O2 -Wall -Wextra -fPIC -shared -o "$out" "$@"
