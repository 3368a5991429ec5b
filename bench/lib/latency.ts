/**
 * The latency group: startup (one-off sandboxes and their peers), pool and exec. Whatever of
 * the three is selected runs as ONE interleaved round-robin, so every ratio in the table
 * compares samples taken side by side under the same machine noise.
 */
import { Sandbox, type SandboxPool } from '../../lib/index.js';
import type { BenchArgs } from './args.js';
import { which } from './child.js';
import { defer } from './cleanup.js';
import { prepareOci } from './oci.js';
import { bwrapPeer, execPeer, hutchLimitsPeer, hutchRunPeer, interleave, ociPeers, poolPeer, spawnPeer, unsharePeer, type Peer } from './peers.js';
import type { LatencySection } from './results.js';
import { summarize } from './stats.js';

export interface BenchContext {
  args: BenchArgs;
  /** Temporary directory of this run (removed at the end). */
  tmp: string;
  /** The busybox image's single layer directory: the rootfs of bwrap, crun and runc. */
  rootfs: string;
  /** Host ids the store's layers are owned by (sandbox root), or null when not shifted. */
  range: { uid: number; gid: number; size: number } | null;
}

async function waitPoolFull(pool: SandboxPool, size: number): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const ready = (pool as unknown as { ready?: unknown[] }).ready;
    if (!Array.isArray(ready)) return void (await new Promise((r) => setTimeout(r, 1000)));
    if (ready.length >= size) return;
    if (Date.now() > deadline) throw new Error(`the pool did not fill to ${size} in 60 s (has ${ready.length})`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export async function latencyGroup(ctx: BenchContext): Promise<LatencySection> {
  const { args } = ctx;
  const want = (s: 'startup' | 'pool' | 'exec') => args.only.has(s);
  const notes: string[] = [];
  const peers: Peer[] = [spawnPeer()];
  const missing = (cmd: string) => {
    if (which(cmd)) return false;
    notes.push(`${cmd} is not installed: its peer is skipped`);
    return true;
  };
  if ((want('startup') || want('pool')) && !missing('bwrap')) peers.push(bwrapPeer(ctx.rootfs));
  if (want('startup')) {
    if (!missing('unshare')) peers.push(unsharePeer());
    const have = { crun: !!which('crun'), runc: !!which('runc') };
    if (!have.crun) notes.push('crun is not installed: its peer is skipped');
    if (!have.runc) notes.push('runc is not installed: its peer is skipped');
    if ((have.crun || have.runc) && (!ctx.range && process.geteuid?.() !== 0)) {
      notes.push('crun/runc peers need root here (the bundle is rootful); skipped');
    } else if (have.crun || have.runc) {
      const oci = prepareOci(ctx.tmp, ctx.rootfs, ctx.range, have);
      notes.push(...oci.notes);
      peers.push(...ociPeers(oci));
    }
    peers.push(hutchRunPeer(), hutchLimitsPeer());
  }
  if (want('pool')) {
    const pool = Sandbox.pool({ image: 'busybox', size: args.poolSize });
    defer('pool', () => pool.close());
    await waitPoolFull(pool, args.poolSize);
    peers.push(poolPeer(pool, args.poolSize));
  }
  if (want('exec')) {
    const sb = await Sandbox.create({ image: 'busybox' });
    defer('exec sandbox', () => sb.destroy());
    peers.push(execPeer(sb));
  }
  const kept = args.peers.size > 0 ? peers.filter((p) => args.peers.has(p.name)) : peers;
  const results = await interleave(kept, args.warmup, args.iterations, 'latency');
  const titleParts = (['startup', 'pool', 'exec'] as const).filter(want);
  return {
    kind: 'latency',
    title: `Latency: ${titleParts.join(', ')}`,
    description:
      'One complete start of `/bin/true` per sample, from the call to the end (for hutch: create, exec, destroy; for the ' +
      'commands: spawn to exit). Peers sampled round-robin in one loop, order rotated each round.',
    warmup: args.warmup,
    rows: results.map((r) => ({ name: r.peer.name, what: r.peer.what, summary: summarize(r.samples, r.failures), errors: r.errors, dropped: r.disabled })),
    notes,
  };
}
