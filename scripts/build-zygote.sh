#!/bin/sh
# Builds libhutch-zygote.so (addon/zygote/helper.c): the C helper a template's zygote loads
# (Python through ctypes) to make each forked child a fresh sandbox. docs/templates.md.
# Usage: build-zygote.sh SOURCE OUTPUT
set -eu
cc=${CC:-cc}
exec "$cc" -std=gnu11 -O2 -Wall -Wextra -fPIC -shared -o "$2" "$1"
