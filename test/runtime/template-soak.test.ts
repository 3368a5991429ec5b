/**
 * Template soak: many runs through one template keep this process's fds, the cgroups under
 * this file's parent and the host's mounts flat (host-wide: in SERIAL_FILES).
 */
import { readdirSync, readlinkSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';
import { cgroupsUnder, fdCount, mountCount, privateCgroupParent, removeCgroupParent } from '../helpers/reliability.js';
import { isRoot, needs } from '../helpers/require.js';

const skip = needs(isRoot, 'root is needed');
const RUNS = Number(process.env.HUTCH_TEMPLATE_SOAK ?? 300);
const parent = privateCgroupParent('tplsoak');
/** This process's fds and what each points to. */
const fdTargets = (): Record<string, string> => Object.fromEntries(readdirSync('/proc/self/fd').map((fd) => {
  try {
    return [fd, readlinkSync(`/proc/self/fd/${fd}`)];
  } catch {
    return [fd, '?'];
  }
}));
afterAll(() => removeCgroupParent(parent));

describe.skipIf(skip)('template soak', () => {
  it(`${RUNS} runs (4 at a time, some failing, timing out or over the output cap) leave fds, cgroups and mounts flat`, async () => {
    // Warm: what hutch opens once per process (cgroup driver, /dev/null, the addons).
    await (await Sandbox.template({ zygote: 'python' })).close();
    await Sandbox.settle();
    const fds = fdCount();
    const fdsBefore = fdTargets();
    const mounts = mountCount();
    const cgroups = cgroupsUnder(parent).length;
    const t = await Sandbox.template({ zygote: 'python', preload: ['json'], limits: { memory: '128MiB', pids: 32 }, size: 2 });
    let i = 0;
    const worker = async (): Promise<void> => {
      while (i < RUNS) {
        const k = i++;
        const kind = k % 10;
        const r = kind === 7
          ? await t.run(['python3', '-c', 'import time; time.sleep(5)'], { timeoutMs: 50 })
          : kind === 8
            ? await t.run(['python3', '-c', 'print("x" * 100000)'], { output: 1000 })
            : await t.run(['python3', '-c', `import sys, json; print(json.dumps(${k})); sys.exit(${kind === 9 ? 3 : 0})`], { encoding: 'utf8' });
        if (kind === 7) expect(r.reason).toBe('timeout');
        else if (kind === 8) expect(r.reason).toBe('output-limit');
        else {
          expect(r.stdout).toBe(`${k}\n`);
          expect(r.exitCode).toBe(kind === 9 ? 3 : 0);
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    await t.close();
    await Sandbox.settle();
    // What is left, if anything: the fds' targets (a socket, a pidfd, a mount...) say whose.
    const left = Object.entries(fdTargets()).filter(([fd, to]) => fdsBefore[fd] !== to).map(([fd, to]) => `${fd} -> ${to}`);
    expect(fdCount(), `fds left: ${left.join(', ')}`).toBe(fds);
    expect(mountCount()).toBe(mounts);
    expect(cgroupsUnder(parent).length).toBe(cgroups);
  }, 600_000);
});
