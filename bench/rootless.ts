/**
 * `npm run bench:rootless`: hutch as an ordinary user (issue 15, docs/rootless.md), side by
 * side in one run with the peers that user has: child_process.spawn and bubblewrap run by the
 * same user. As root it makes a user with subordinate ids and a delegated cgroup
 * (scripts/rootless-user.sh), runs itself as that user, and removes the user's cgroups and
 * store afterwards. Options: --iterations N (default 200), --warmup N (default 20).
 *
 * Reported: p50/p90/p99 of each peer and the ratios the issue asks for: rootless Sandbox.run
 * against bubblewrap, rootless exec against spawn.
 */
import { join } from 'node:path';
import { ImageStore, Sandbox } from '../lib/index.js';
import { hostMode } from '../lib/host/mode.js';
import { idSource } from '../lib/host/ids.js';
import { bwrapPeer, execPeer, hutchRunPeer, interleave, spawnPeer } from './lib/peers.js';
import { ms, ratio, summarize } from './lib/stats.js';
import { asBenchUser } from './lib/as-user.js';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}

async function asUser(): Promise<void> {
  const iterations = arg('iterations', 200);
  const warmup = arg('warmup', 20);
  const store = ImageStore.default();
  const image = await store.resolve('busybox');
  const rootfs = image.layersDir ? join(image.layersDir, image.lowerdirs[0]!) : '';
  const live = await Sandbox.create({ image: 'busybox' });
  // The same peer as the root-mode benches: between samples it waits for the teardowns only
  // (Sandbox.settle() would also drop the blank made ahead for the next run, as an idle
  // process's does after 2 s, and every sample would pay a cold create).
  const run = hutchRunPeer();
  const peers = [spawnPeer(), bwrapPeer(rootfs), run, execPeer(live)];
  const results = await interleave(peers, warmup, iterations, 'rootless');
  await live.destroy();
  await Sandbox.settle();
  const host = await Sandbox.checkHost();
  const p50 = (name: string) => summarize(results.find((r) => r.peer.name === name)?.samples ?? []).p50;
  console.log(`hutch rootless bench: mode ${host.mode}, uid ${process.getuid?.()}, ids ${idSource().kind}, ${iterations} rounds after ${warmup} warm-up, peers interleaved`);
  for (const r of results) {
    const s = summarize(r.samples, r.failures);
    console.log(`  ${r.peer.name.padEnd(10)} p50 ${ms(s.p50).padStart(9)}  p90 ${ms(s.p90).padStart(9)}  p99 ${ms(s.p99).padStart(9)}  n=${s.n}${r.disabled ? `  dropped: ${r.errors[0]}` : ''}   ${r.peer.what}`);
  }
  console.log(`  Sandbox.run / bwrap (same user): ${ratio(p50('hutch-run'), p50('bwrap'))} (goal <= 0.5x)`);
  console.log(`  exec / spawn:                    ${ratio(p50('exec'), p50('spawn'))} (goal <= 1.5x)`);
}

if (hostMode() === 'root') asBenchUser();
else await asUser();

