// Soak: create/exec/destroy cycles across the option combinations the tests use, then
// compare what this process and the host hold: fds, RSS (within noise), cgroups, mounts,
// namespaces held by any process, links and leases, store size. Growth must be zero.
// CI runs HUTCH_SOAK cycles (default 1000); HUTCH_SOAK=10000 is the long run.
// It counts every mount of the host: npm test runs it after the parallel part, alone
// (vitest.timing.config.ts; by hand: npx vitest run --config vitest.timing.config.ts <this file>).
import { chmodSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, describe, expect, it } from 'vitest';
import { HutchError, ImageStore, Sandbox, type ExecOptions, type SandboxOptions, type SeccompProfile } from '../../lib/index.js';
import { isRoot, needs } from '../helpers/require.js';
import {
  cgroupsUnder, duBytes, fdCount, leases, linkNames, mountCount, namespaceInodes, privateCgroupParent,
  removeCgroupParent, rmRoot, tempRoot,
} from '../helpers/reliability.js';

const skip = needs(isRoot && readFileSync('/proc/self/mountinfo', 'utf8').includes('cgroup'), 'root and cgroups are needed');
const CYCLES = Number(process.env.HUTCH_SOAK ?? 1000);
const parent = privateCgroupParent('soak');
const root = tempRoot('soak');
const store = new ImageStore({ root });
const dataDir = mkdtempSync(join(tmpdir(), 'hutch-rel-soak-data-'));
writeFileSync(join(dataDir, 'in.txt'), 'mounted\n', { mode: 0o644 });
// Readable by the sandbox's root, which is an unprivileged uid on the host.
chmodSync(dataDir, 0o755);

afterAll(() => {
  rmRoot(root);
  rmSync(dataDir, { recursive: true, force: true });
  removeCgroupParent(parent);
});

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

interface Combo {
  name: string;
  sandbox: SandboxOptions;
  command: string[] | string;
  exec?: ExecOptions;
  check: (stdout: string, exitCode: number | null) => boolean;
  /** Run once every `every` cycles (slow ones: helpers spawned per sandbox). */
  every?: number;
}

const profile: SeccompProfile = { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['mkdir', 'mkdirat'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 }] };

const COMBOS: Combo[] = [
  { name: 'plain', sandbox: { image: 'busybox' }, command: ['true'], check: (_, c) => c === 0 },
  { name: 'limits', sandbox: { image: 'busybox', limits: { memory: '64MiB', memorySwap: 0, pids: 64, cpus: 0.5, nofile: 256, nproc: 64, fileSize: '1MiB', stack: '8MiB', cpuTimeMs: 5000 } }, command: 'ulimit -n', check: (o) => o.trim() === '256' },
  { name: 'mounts+env', sandbox: { image: 'busybox', mounts: [{ source: dataDir, target: '/data' }], env: { FOO: 'bar' } }, command: 'cat /data/in.txt; echo $FOO', check: (o) => o === 'mounted\nbar\n' },
  { name: 'user+readonly', sandbox: { image: 'busybox', user: '1000:1000', readonlyRootfs: true }, command: 'id -u; touch /x 2>/dev/null || echo ro', check: (o) => o === '1000\nro\n' },
  { name: 'unconfined', sandbox: { image: 'busybox', seccomp: 'unconfined' }, command: ['true'], check: (_, c) => c === 0 },
  { name: 'profile', sandbox: { image: 'busybox', seccomp: profile }, command: 'mkdir /tmp/d 2>/dev/null || echo denied', check: (o) => o === 'denied\n' },
  { name: 'small disk', sandbox: { image: 'busybox', limits: { disk: '2MiB' } }, command: 'dd if=/dev/zero of=/big bs=64k count=64 2>/dev/null || echo full', check: (o) => o === 'full\n' },
  { name: 'exec options', sandbox: { image: 'busybox', hostname: 'soak', cwd: '/tmp' }, command: 'cat; pwd; echo $X; hostname', exec: { stdin: 'in\n', env: { X: 'y' }, timeoutMs: 10_000, output: '64KiB' }, check: (o) => o === 'in\n/tmp\ny\nsoak\n' },
  { name: 'timeout', sandbox: { image: 'busybox' }, command: 'sleep 5', exec: { timeoutMs: 20 }, check: () => true, every: 10 },
  { name: 'output cap', sandbox: { image: 'busybox' }, command: 'yes', exec: { output: '4KiB' }, check: (o) => o.length === 4096, every: 10 },
  { name: 'host image', sandbox: { image: 'host', limits: { memory: '128MiB' } }, command: ['true'], check: (_, c) => c === 0, every: 5 },
  { name: 'bridge', sandbox: { image: 'busybox', network: { mode: 'bridge', egress: '10mbit', ingress: '10mbit' } }, command: 'ip -4 addr show eth0 | grep -c inet', check: (o) => o.trim() === '1', every: 50 },
];

/** The combination for cycle i: the frequent ones in turn, the slow ones every so often. */
function comboFor(i: number): Combo {
  const slow = COMBOS.filter((c) => c.every && i % c.every === 0);
  if (slow.length > 0) return slow[(i / 5) % slow.length | 0]!;
  const fast = COMBOS.filter((c) => !c.every);
  return fast[i % fast.length]!;
}

interface Snapshot {
  fds: number;
  rss: number;
  heap: number;
  cgroups: number;
  mounts: number;
  store: number;
  leases: number;
}

function snapshot(): Snapshot {
  gc();
  gc();
  return {
    fds: fdCount(),
    rss: process.memoryUsage().rss,
    heap: process.memoryUsage().heapUsed,
    cgroups: cgroupsUnder(parent).length,
    mounts: mountCount(),
    store: duBytes(root),
    leases: leases().filter((l) => l.ownerPid === process.pid).length,
  };
}

/** Namespace links of a sandbox's init that are its own (not the host's). */
function ownNamespaces(pid: number, host: Set<string>): string[] {
  const out: string[] = [];
  for (const n of ['mnt', 'pid', 'net', 'user', 'uts', 'ipc']) {
    try {
      const l = readlinkSync(`/proc/${pid}/ns/${n}`);
      if (!host.has(l)) out.push(l);
    } catch {}
  }
  return out;
}

async function cycle(i: number, seen: { ns: Set<string>; slots: Set<string>; host: Set<string> }): Promise<void> {
  const c = comboFor(i);
  const sb = await Sandbox.create({ ...c.sandbox, store });
  try {
    if (i % 25 === 0) for (const n of ownNamespaces(sb.pid, seen.host)) seen.ns.add(n);
    if (sb.network) seen.slots.add(leases().find((l) => l.id === sb.id)?.slot ?? '');
    const r = await sb.exec(c.command, { ...c.exec, encoding: 'utf8' });
    if (!c.check(r.stdout as string, r.exitCode)) {
      throw new Error(`cycle ${i} (${c.name}): unexpected result ${JSON.stringify({ ...r, usage: undefined })}`);
    }
  } finally {
    await sb.destroy();
  }
}

describe.skipIf(skip)(`soak: ${CYCLES} create/exec/destroy cycles`, () => {
  it('leaves no fd, memory, cgroup, mount, namespace, link, lease or store byte behind', async () => {
    const host = new Set(['mnt', 'pid', 'net', 'user', 'uts', 'ipc'].map((n) => readlinkSync(`/proc/self/ns/${n}`)));
    const seen = { ns: new Set<string>(), slots: new Set<string>(), host };
    // Warm-up: every combination once (builtin images, seccomp programs, drivers, nft table).
    for (let i = 0; i < 60; i++) await cycle(i === 0 ? 0 : i, seen);
    // ... and concurrently, so caches bounded by design (the id-range namespaces kept for
    // reuse, at most a few) are as full before the soak as they can be after it.
    await Promise.all(Array.from({ length: 8 }, (_, i) => cycle(i, seen)));
    await Sandbox.settle(); // what destroy leaves to the background (the record's removal from tmp/)
    const before = snapshot();
    const t0 = performance.now();
    const concurrency = 2;
    let next = 0;
    const errors: unknown[] = [];
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < CYCLES && errors.length === 0) {
          const i = next++;
          await cycle(i, seen).catch((e: unknown) => errors.push(e));
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    if (errors.length > 0) throw errors[0];
    await Sandbox.settle();
    const after = snapshot();
    const growth = {
      fds: after.fds - before.fds,
      rssMiB: +((after.rss - before.rss) / 2 ** 20).toFixed(1),
      heapMiB: +((after.heap - before.heap) / 2 ** 20).toFixed(1),
      cgroups: after.cgroups - before.cgroups,
      mounts: after.mounts - before.mounts,
      storeBytes: after.store - before.store,
      leases: after.leases - before.leases,
    };
    console.log(`soak: ${CYCLES} cycles in ${seconds.toFixed(1)} s (${((seconds * 1000) / CYCLES).toFixed(1)} ms/cycle, ${concurrency} at a time); growth ${JSON.stringify(growth)}; rss ${(before.rss / 2 ** 20).toFixed(0)} -> ${(after.rss / 2 ** 20).toFixed(0)} MiB`);
    expect(growth.fds).toBe(0);
    expect(growth.cgroups).toBe(0);
    expect(after.cgroups).toBe(0);
    expect(growth.mounts).toBe(0);
    expect(growth.storeBytes).toBe(0);
    expect(growth.leases).toBe(0);
    // RSS: V8 and malloc arenas move by a few MiB; a leak of one object per cycle shows as much more.
    expect(growth.heapMiB).toBeLessThan(8);
    expect(growth.rssMiB).toBeLessThan(48);
    // No namespace of a destroyed sandbox is held by any process.
    const held = namespaceInodes();
    expect([...seen.ns].filter((n) => held.has(n))).toEqual([]);
    const links = linkNames();
    expect([...seen.slots].filter((s) => s && links.some((l) => l.startsWith(`hx${s}`)))).toEqual([]);
  }, 150_000);

  it('a destroyed sandbox refuses work with EDESTROYED and stays destroyed', async () => {
    const sb = await Sandbox.create({ image: 'busybox', store });
    await sb.destroy();
    await sb.destroy();
    const e = await sb.exec(['true']).catch((x: unknown) => x);
    expect(HutchError.is(e) && e.code).toBe('EDESTROYED');
  });
});
