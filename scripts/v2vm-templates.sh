#!/bin/sh
# Inside ../shared/tools/v2vm (.ci/run): the template tests with the store on an XFS image, as a
# host's store is on a disk (the guest's /tmp is a tmpfs, which before Linux 6.6 keeps no user.*
# xattrs: overlay could not remove an image's directories in a writable layer there).
set -eu
dir=$(mktemp -d /tmp/vmtpl-XXXXXX) # no "hutch" in it: the suite's leak check looks for that in mounts
truncate -s 2G "$dir/store.img"
mkfs.xfs -q "$dir/store.img"
mkdir "$dir/store"
/usr/bin/mount -o loop "$dir/store.img" "$dir/store"
status=0
env HUTCH_ROOT="$dir/store/root" npx vitest run --config vitest.vm-templates.config.ts || status=$?
/usr/bin/umount "$dir/store" || /usr/bin/umount -l "$dir/store" || true
rm -rf "$dir"
exit $status
