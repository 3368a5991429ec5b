/**
 * The latency peers: each `sample()` does one complete start of `/bin/true` and returns its
 * wall time in milliseconds; `settle()` (outside the timing) lets background work finish so
 * that it does not land on the next peer's sample.
 */
import { Sandbox, type Limits, type SandboxPool } from '../../lib/index.js';
import { teardownsDone } from '../../lib/teardowns.js';
import { explainFailure, timeChild } from './child.js';
import type { OciSetup } from './oci.js';

export interface Peer {
  /** Short name used by --peers and in tables. */
  name: string;
  /** What one sample does. */
  what: string;
  sample(): Promise<number>;
  settle?(): Promise<void>;
}

export const LIMITS: Limits = { memory: '256MiB', pids: 64, cpus: 1 };

function childPeer(name: string, what: string, argv: string[]): Peer {
  return {
    name,
    what,
    async sample() {
      const r = await timeChild(argv);
      if (r.code !== 0) throw new Error(`${argv.join(' ')} exited ${r.code ?? r.signal}: ${explainFailure(argv)}`);
      return r.ms;
    },
  };
}

export function spawnPeer(): Peer {
  return childPeer('spawn', "child_process.spawn('/bin/true') (the floor)", ['/bin/true']);
}

export function unsharePeer(): Peer {
  return childPeer('unshare', 'unshare --user --map-root-user --pid --fork --mount --net --uts --ipc /bin/true (namespaces only, host root)', [
    'unshare', '--user', '--map-root-user', '--pid', '--fork', '--mount', '--net', '--uts', '--ipc', '/bin/true',
  ]);
}

export function bwrapPeer(rootfs: string): Peer {
  return childPeer('bwrap', 'bwrap --unshare-all --ro-bind <busybox layer> / --proc /proc --dev /dev /bin/true', [
    'bwrap', '--unshare-all', '--ro-bind', rootfs, '/', '--proc', '/proc', '--dev', '/dev', '/bin/true',
  ]);
}

let containerSeq = 0;

export function ociPeers(oci: OciSetup): Peer[] {
  const out: Peer[] = [];
  const make = (name: 'crun' | 'runc', prefix: string[] | null, what: string) => {
    if (!prefix) return;
    out.push({
      name,
      what,
      async sample() {
        const id = `hb${process.pid}-${++containerSeq}`;
        const argv = [...prefix, 'run', '--bundle', oci.bundle, id];
        const r = await timeChild(argv);
        if (r.code !== 0) throw new Error(`${name} exited ${r.code ?? r.signal}: ${explainFailure([...prefix, 'run', '--bundle', oci.bundle, `${id}x`])}`);
        return r.ms;
      },
    });
  };
  make('crun', oci.crun, `crun run of an OCI bundle on the busybox layer${oci.wrapper ? ' (through nsenter, see the hybrid-cgroup note)' : ''}`);
  make('runc', oci.runc, 'runc run of the same OCI bundle');
  if (oci.wrapper) out.push(childPeer('nsenter', "crun's wrapper alone: nsenter --mount=<ns> /bin/true", [...oci.wrapper, '/bin/true']));
  return out;
}

/** The milliseconds `run` takes to run /bin/true; an error naming `what` when it did not succeed. */
export async function timeTrue(what: string, run: () => Promise<{ exitCode: number | null; reason: string }>): Promise<number> {
  const t0 = performance.now();
  const r = await run();
  const ms = performance.now() - t0;
  if (r.exitCode !== 0) throw new Error(`${what}: /bin/true ended with ${r.reason} ${r.exitCode}`);
  return ms;
}

export function hutchRunPeer(): Peer {
  return {
    name: 'hutch-run',
    what: "Sandbox.run({ image: 'busybox', command: ['/bin/true'] }) (default limits, default seccomp)",
    sample: () => timeTrue('Sandbox.run', () => Sandbox.run({ image: 'busybox', command: ['/bin/true'] })),
    // Sandbox.run resolves once the command has ended and its sandbox is killed; the rest of
    // the teardown runs in the background: let it finish outside the timing, like the pool's
    // refill. (Not Sandbox.settle(): that also drops the blank made for the next run.)
    settle: () => teardownsDone(),
  };
}

export function hutchLimitsPeer(): Peer {
  return {
    name: 'hutch-limits',
    what: `Sandbox.run with limits ${JSON.stringify(LIMITS)}`,
    sample: () => timeTrue('Sandbox.run with limits', () => Sandbox.run({ image: 'busybox', command: ['/bin/true'], limits: LIMITS })),
    // Sandbox.run resolves once the command has ended and its sandbox is killed; the rest of
    // the teardown runs in the background: let it finish outside the timing, like the pool's
    // refill. (Not Sandbox.settle(): that also drops the blank made for the next run.)
    settle: () => teardownsDone(),
  };
}

/** The pool's ready count, read from its private state (the API has no such probe). */
function poolReady(pool: SandboxPool): number | null {
  const ready = (pool as unknown as { ready?: unknown }).ready;
  return Array.isArray(ready) ? ready.length : null;
}

export function poolPeer(pool: SandboxPool, size: number): Peer {
  return {
    name: 'pool-run',
    what: `SandboxPool.run(['/bin/true']), size ${size}, a fresh sandbox per call (refill awaited outside the timing)`,
    sample: () => timeTrue('pool.run', () => pool.run(['/bin/true'])),
    async settle() {
      // The pool destroys the used sandbox and refills in the background; wait for that so
      // the refill's CPU does not land on the next peer's sample.
      const deadline = performance.now() + 10_000;
      for (;;) {
        const n = poolReady(pool);
        if (n === null) return void (await new Promise((r) => setTimeout(r, 50)));
        if (n >= size || performance.now() > deadline) return;
        await new Promise((r) => setTimeout(r, 1));
      }
    },
  };
}

export function execPeer(sb: Sandbox): Peer {
  return {
    name: 'exec',
    what: "sandbox.exec(['/bin/true']) into one live busybox sandbox",
    sample: () => timeTrue('exec', () => sb.exec(['/bin/true'])),
  };
}

export interface PeerResult {
  peer: Peer;
  samples: number[];
  failures: number;
  errors: string[];
  disabled: boolean;
}

/**
 * Round-robin: every round takes one sample of each peer, the order rotated each round so
 * that no peer always follows the same neighbour; the first `warmup` rounds are discarded.
 * A peer failing its first five attempts in a row is dropped (the reason is kept).
 */
export async function interleave(peers: Peer[], warmup: number, iterations: number, label: string): Promise<PeerResult[]> {
  const results = peers.map((peer) => ({ peer, samples: [] as number[], failures: 0, errors: [] as string[], disabled: false, ok: 0 }));
  const rounds = warmup + iterations;
  const tty = process.stderr.isTTY;
  for (let r = 0; r < rounds; r++) {
    const k = r % results.length;
    const order = [...results.slice(k), ...results.slice(0, k)];
    for (const res of order) {
      if (res.disabled) continue;
      try {
        const ms = await res.peer.sample();
        res.ok++;
        if (r >= warmup) res.samples.push(ms);
      } catch (e) {
        res.failures++;
        const msg = (e as Error).message ?? String(e);
        if (res.errors.length < 3) res.errors.push(msg);
        if (res.ok === 0 && res.failures >= 5) {
          res.disabled = true;
          process.stderr.write(`\nbench: ${label}: dropping ${res.peer.name}: ${msg}\n`);
        }
      }
      if (res.peer.settle) await res.peer.settle();
    }
    if (tty && (r % 5 === 0 || r === rounds - 1)) process.stderr.write(`\r  ${label}: round ${r + 1}/${rounds}${r < warmup ? ' (warm-up)' : ''}   `);
  }
  if (tty) process.stderr.write('\n');
  return results.map(({ ok: _ok, ...rest }) => rest);
}
