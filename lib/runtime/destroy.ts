/**
 * The end of a sandbox: destroy (kill init, wait for it, free every host resource) and the
 * build step's stopKeepingUpper (kill everything, keep the writable layer readable).
 */
import { constants as fsc, openSync } from 'node:fs';
import { HutchError } from '../errors.js';
import { native } from '../native.js';
import { releaseNetwork } from '../network/index.js';
import { Trace } from '../trace.js';
import { upperDirOf } from '../conventions.js';
import type { SandboxCore } from './core.js';

/** Sandbox.destroy: idempotent, later calls return the same promise. */
export function destroySandbox(core: SandboxCore): Promise<void> {
  if (core.destroying) return core.destroying;
  // A parked pidfd (lib/runtime/control.ts) is opened first: a failure leaves the sandbox as it was.
  try {
    core.unparkPidfd();
  } catch (e) {
    return Promise.reject(e);
  }
  core.state = 'destroyed';
  core.opts.signal?.removeEventListener('abort', core.onAbort);
  const n = native();
  core.destroying = (async () => {
    const tr = new Trace('destroy');
    if (!core.initExit) n.pidfdKill(core.spawned.pidfd, 9);
    core.egress?.close();
    core.ctlWatch?.close();
    core.ctlWatch = null;
    n.close(core.spawned.ctlFd);
    if (core.pidWatch) core.pidWatch.ref();
    await core.exitedP;
    tr.mark('exit');
    core.ids.release();
    n.close(core.spawned.pidfd);
    const errors: unknown[] = [];
    // The owner record goes last, once the cgroup and the disk it vouches for are gone: a
    // prune elsewhere would take a cgroup without a record for a crashed sandbox's.
    await Promise.all([
      core.cgroup?.destroy().then(() => tr.mark('cgroup'), (e) => errors.push(e)),
      core.attachment ? releaseNetwork(core.attachment).catch((e) => errors.push(e)) : undefined,
      core.disk ? core.upperHeld.then(() => core.disk!.release()).catch((e) => errors.push(e)) : undefined,
    ]);
    await core.store.release(core.id).then(() => tr.mark('release'), (e) => errors.push(e));
    tr.end();
    core.emit('destroyed');
    if (errors.length > 0) {
      throw new HutchError('ECLEANUP', `sandbox ${core.id} was destroyed but cleanup failed: ${errors.map(String).join('; ')}`, { step: 'destroy', cause: errors[0] });
    }
  })();
  return core.destroying;
}

/** Sandbox.stopKeepingUpper: opens the writable layer, then destroys the sandbox; the disk waits for `release()`. */
export async function stopKeepingUpper(core: SandboxCore): Promise<{ fd: number; release: () => void }> {
  if (core.state === 'destroyed') throw core.gone();
  let fd: number;
  try {
    fd = openSync(upperDirOf(core.pid), fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
  } catch (e) {
    throw new HutchError('ESETUP', `cannot open the writable layer of sandbox ${core.id}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { step: 'open', errno: (e as NodeJS.ErrnoException).code, cause: e });
  }
  let release!: () => void;
  core.upperHeld = new Promise((r) => (release = r));
  const done = destroySandbox(core);
  await core.exitedP;
  return {
    fd,
    release: () => {
      release();
      void done.catch(() => undefined);
    },
  };
}
