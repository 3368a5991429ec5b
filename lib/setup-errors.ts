/**
 * From the child's `{ step, errno, path }` to a HutchError ESETUP: the message names the step,
 * the object and the kernel's answer, plus a known hint keyed by step + errno.
 */
import { HutchError, errnoName, type HutchErrorStep } from './errors.js';
import type { NativeFailure } from './native.js';

export { SETUP_STEPS } from './errors.js';
/** A step a setup or exec failure names (lib/errors.ts). */
export type SetupStep = HutchErrorStep;

const HINTS: Record<string, string> = {
  'exec_init:ESRCH': 'hutch-init started but ended before it said ready (killed, or out of memory in its cgroup?); the status is in the message. Check the sandbox\'s memory/pids limits, and that build/Release/hutch-init is the one built with this addon',
  'clone:EPERM': 'user namespaces may be disabled: sysctl -w kernel.unprivileged_userns_clone=1 / user.max_user_namespaces=15000, or run as root',
  'clone:ENOSPC': 'too many namespaces: raise user.max_user_namespaces (and max_pid/mnt/net_namespaces)',
  'clone:EINVAL': 'the kernel lacks clone3 features hutch needs (Linux >= 5.7); see Sandbox.checkHost()',
  'clone:EBUSY': 'CLONE_INTO_CGROUP refused: the target cgroup has controllers but also processes ("no internal processes" rule)',
  'mount_ns:EPERM': 'a user namespace nested in the sandbox\'s could not be made (hutch makes one per start to lock the sandbox\'s mounts): user namespaces may be restricted (sysctl kernel.unprivileged_userns_clone=1, kernel.apparmor_restrict_unprivileged_userns=0)',
  'mount_ns:ENOSPC': 'too many user or mount namespaces: raise user.max_user_namespaces and user.max_mnt_namespaces (hutch needs two of each per starting sandbox)',
  'layers:ENOENT': 'the store\'s layers directory is missing: the image store was removed or moved; import the image again',
  'overlay:ENOENT': 'a layer directory of the image is missing from the store; run ImageStore.prune() and import the image again',
  'overlay:EINVAL': 'overlayfs refused the layers: too many layers for one mount (about 500 is the limit), or a layer on a filesystem overlay cannot use',
  'overlay:EPERM': 'overlayfs in a user namespace needs Linux >= 5.11',
  'bind:ENOENT': 'the mount source does not exist on the host',
  'bind:ENOTDIR': 'a mount target inside is a file where a directory is needed (or the other way round)',
  'proc:EPERM': 'the host\'s /proc is partly hidden (e.g. inside a container with masked /proc paths); hutch needs a fully visible /proc',
  'cwd:ENOENT': 'the working directory does not exist inside the sandbox; create it first or pick another cwd',
  'cwd:ENOTDIR': 'the working directory is not a directory inside the sandbox',
  'exec:ENOENT': 'command not found in the sandbox (is it in the image? is PATH right?)',
  'exec:EACCES': 'the command is not executable (mode, or a noexec mount)',
  'exec:ENOEXEC': 'the file is not an executable this kernel can run',
  'rlimit:EPERM': 'an rlimit above the hard limit of this process cannot be set without CAP_SYS_RESOURCE',
  'rlimit:EINVAL': 'an rlimit value is out of range',
  'scratch:ENOMEM': 'the disk limit does not fit in memory; lower limits.disk',
};

export function setupError(f: NativeFailure, extra?: string): HutchError {
  // The addon names steps from addon/steps.h and init from its protocol: the lists TypeScript has.
  const step = (f.step ?? 'clone') as HutchErrorStep;
  const errno = errnoName(f.errno);
  const hint = HINTS[`${step}:${errno}`];
  const what = f.path ? `: ${f.path}` : '';
  const msg = `sandbox setup failed at ${step}${what}: ${errno}${extra ? `; ${extra}` : ''}${hint ? `; ${hint}` : ''}`;
  const details: { step: HutchErrorStep; errno: string; path?: string; hint?: string } = { step, errno };
  if (f.path) details.path = f.path;
  if (hint) details.hint = hint;
  return new HutchError('ESETUP', msg, details);
}
