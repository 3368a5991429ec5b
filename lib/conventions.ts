/**
 * Fixed conventions shared by lib/, the addon and init (addon/init/init.c, addon/child.cc):
 * one definition each, at the bottom of the layers.
 */

/** PATH when the image sets none: the only default (lib/plan/image.ts sandboxEnv sends it; init.c has none). */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * init holds the scratch tmpfs (the overlay's upper and work dirs) open as this fd
 * (init.c's `SCRATCH_FD`, set up by addon/child.cc's `fds` step): the host reaches the
 * writable layer through `/proc/<init pid>/fd/4` while the sandbox runs, and nowhere else.
 */
export const SCRATCH_FD = 4;

/** The overlay's upper dir of a running sandbox, through init's scratch fd. */
export function upperDirOf(initPid: number): string {
  return `/proc/${initPid}/fd/${SCRATCH_FD}/upper`;
}

/** File owners in an image must be below this to map into a sandbox's id range (65536 ids). */
export const ID_LIMIT = 65536;
