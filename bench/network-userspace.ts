/**
 * `npm run bench:netuser` (`node dist/bench/network-userspace.js [iterations] [MiB]`): the
 * userspace link (pasta), in one run:
 *   - Sandbox.create p50/p90 with network 'none', with a userspace bridge whose link was made
 *     ahead (lib/network/linkpool.ts: a spare ready before each sample), and with the pool
 *     empty (HUTCH_LINK_SPARES=0: pasta started per create), interleaved with pasta alone
 *     (started with hutch's arguments against a namespace made once, until it writes its pid:
 *     the floor of a cold userspace bridge), and pasta's own CPU per start;
 *   - the top TCP rate the link carries, both ways, between a Node process inside (the 'host'
 *     image) and a Node sink/source on the host's loopback, reached through `hostPorts`;
 *   - shaping accuracy at 1, 10 and 100 Mbit/s both ways (payload rate / asked rate).
 * Outside host root, as an ordinary user would run it. As host root it makes a user with
 * subordinate ids and a delegated cgroup (scripts/rootless-user.sh; HUTCH_BENCH_USER, default
 * hutchbench), runs itself as that user with a 0666 /dev/net/tun of its own, and removes the
 * user's cgroups and store afterwards (as bench/rootless.ts). Talks only to servers it runs on
 * the host's loopback.
 */
import net from 'node:net';
import { Sandbox } from '../lib/index.js';
import type { NetworkOptions } from '../lib/network/index.js';
import { summarize } from './lib/stats.js';
import { Readable } from 'node:stream';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadavg } from 'node:os';
import { pastaArgs } from '../lib/network/userspace.js';
import { linksMade, linksNow } from '../lib/network/linkpool.js';
import { hostMode } from '../lib/host/mode.js';
import { asBenchUser } from './lib/as-user.js';

if (hostMode() === 'root') {
  asBenchUser('--tun');
  process.exit(0);
}
process.env.HUTCH_NETWORK_BACKEND ??= 'userspace';
const [N, MIB] = [Number(process.argv[2] ?? 30), Number(process.argv[3] ?? 256)];
const image = 'host'; // node inside

/** Sandbox.create alone, then destroy (untimed). */
async function createMs(network: 'none' | NetworkOptions): Promise<number> {
  const started = performance.now();
  const sb = await Sandbox.create({ image, network });
  const took = performance.now() - started;
  await sb.destroy();
  return took;
}

/** A loopback server; `onConn` gets each socket. */
async function server(onConn: (s: net.Socket) => void): Promise<net.Server & { port: number }> {
  const srv = net.createServer(onConn);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  return Object.assign(srv, { port: (srv.address() as net.AddressInfo).port });
}

/** bits/s over (time, bytes) samples, leaving out the first `skipMs` (burst, slow start). */
function rateOf(samples: [number, number][], skipMs: number): number {
  const t0 = samples[0]![0];
  const from = samples.find((s) => s[0] >= t0 + skipMs) ?? samples[0]!;
  const last = samples[samples.length - 1]!;
  return ((last[1] - from[1]) * 8) / ((last[0] - from[0]) / 1000);
}

const SEND = (port: number, bytes: number): string =>
  `const s=require('net').connect(${port},'10.200.0.1',()=>{const b=Buffer.alloc(262144);let l=${bytes};const w=()=>{while(l>0){l-=b.length;if(!s.write(b)){s.once('drain',w);return}}s.end()};w()});s.on('data',()=>{})`;
const RECV = (port: number, skipMs: number): string =>
  `const m=[];let n=0;const s=require('net').connect(${port},'10.200.0.1');s.on('data',d=>{n+=d.length;m.push([performance.now(),n])});s.on('end',()=>{const t0=m[0][0];const f=m.find(x=>x[0]>=t0+${skipMs})||m[0];const l=m[m.length-1];console.log(((l[1]-f[1])*8)/((l[0]-f[0])/1000))})`;

/** Both directions through one sandbox: [sandbox -> host, host -> sandbox] in bits/s. */
async function both(network: Omit<NetworkOptions, 'mode' | 'hostPorts'>, bytes: number, skipMs: number): Promise<[number, number]> {
  let resolveUp!: (n: number) => void;
  const up = new Promise<number>((r) => (resolveUp = r));
  const sink = await server((s) => {
    const m: [number, number][] = [];
    let n = 0;
    s.on('data', (d) => {
      n += d.length;
      m.push([performance.now(), n]);
    });
    s.on('end', () => resolveUp(rateOf(m, skipMs)));
  });
  const source = await server((s) => {
    const chunk = Buffer.alloc(262144);
    Readable.from((function* () {
      for (let sent = 0; sent < bytes; sent += chunk.length) yield chunk;
    })()).pipe(s);
  });
  const sb = await Sandbox.create({ image, network: { mode: 'bridge', ...network, hostPorts: [sink.port, source.port] } });
  try {
    await sb.exec(['node', '-e', SEND(sink.port, bytes)]);
    const egress = await up;
    const r = await sb.exec(['node', '-e', RECV(source.port, skipMs)], { encoding: 'utf8' });
    return [egress, Number(String(r.stdout).trim())];
  } finally {
    await sb.destroy();
    sink.close();
    source.close();
  }
}

/** A user + network namespace made once (`unshare -Urn`), for pasta alone to join. */
const target = spawn('unshare', ['-Urn', 'sleep', '3600'], { stdio: 'ignore' });
const tmp = mkdtempSync(join(tmpdir(), 'hutch-bench-pasta-'));
const CLK_TCK = 100;

/** pasta alone, hutch's arguments, until its pid file is written; then ended. Wall ms and its CPU ms. */
async function pastaMs(): Promise<[number, number]> {
  const pidFile = join(tmp, 'pid');
  rmSync(pidFile, { force: true });
  const args = pastaArgs({ egressBps: null, ingressBps: null, outbound: 'nat', allow: null, ports: [], hostPorts: [], range: { network: 0x0ac80000, prefix: 30 }, names: null }, process.getuid?.() === 0)
    .slice(1)
    .map((a) => (a === '/proc/self/fd/3' ? pidFile : a === '/proc/self/fd/4' ? `/proc/${target.pid}/ns/user` : a === '/proc/self/fd/5' ? `/proc/${target.pid}/ns/net` : a));
  const started = performance.now();
  const p = spawn('pasta', args, { stdio: 'ignore' });
  while (!(statSync(pidFile, { throwIfNoEntry: false })?.size ?? 0)) {
    if (p.exitCode !== null) throw new Error(`pasta exited ${p.exitCode}`);
    await new Promise((r) => setTimeout(r, 1));
  }
  const took = performance.now() - started;
  const stat = readFileSync(`/proc/${p.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  const cpu = ((Number(stat[11]) + Number(stat[12])) * 1000) / CLK_TCK;
  const exited = new Promise((r) => p.once('exit', r));
  p.kill('SIGTERM');
  await exited;
  return [took, cpu];
}

const none: number[] = [];
const ready: number[] = [];
const cold: number[] = [];
const alone: number[] = [];
const aloneCpu: number[] = [];
let misses = 0;
const load = (): string => loadavg().map((l) => l.toFixed(2)).join(' ');
const loadBefore = load();
await createMs('none'); // warm: image, store, first clone
await createMs({ mode: 'bridge' }); // the first of its plan: cold, and spares are made for it
await new Promise((r) => setTimeout(r, 100)); // the target namespace exists
try {
  await pastaMs();
  for (let i = 0; i < N; i++) {
    none.push(await createMs('none'));
    // A spare ready (made after the previous create returned: untimed, as an idle service's).
    await linksMade();
    if (linksNow().length === 0) misses++;
    ready.push(await createMs({ mode: 'bridge' }));
    process.env.HUTCH_LINK_SPARES = '0';
    cold.push(await createMs({ mode: 'bridge' }));
    delete process.env.HUTCH_LINK_SPARES;
    const [w, c] = await pastaMs();
    alone.push(w);
    aloneCpu.push(c);
  }
} finally {
  target.kill('SIGKILL');
  rmSync(tmp, { recursive: true, force: true });
}
const f = (x: number): string => x.toFixed(1);
const [a, b, k, c] = [summarize(none), summarize(ready), summarize(cold), summarize(alone)];
console.log(`Sandbox.create (${image}) as uid ${process.getuid?.()} (mode ${hostMode()}), ${N} interleaved each, ms; load average before ${loadBefore}, after ${load()}`);
console.log(`| network | p50 | p90 |`);
console.log(`| 'none' | ${f(a.p50)} | ${f(a.p90)} |`);
console.log(`| bridge, a link made ahead | ${f(b.p50)} | ${f(b.p90)} |`);
console.log(`| bridge, pool empty (pasta per create) | ${f(k.p50)} | ${f(k.p90)} |`);
console.log(`| pasta alone, start to ready (the floor of a cold link) | ${f(c.p50)} | ${f(c.p90)} |`);
console.log(`bridge / none at p50: ${(b.p50 / a.p50).toFixed(2)}x with a link made ahead (goal 2x; ${misses} of ${N} samples found no spare), ${(k.p50 / a.p50).toFixed(2)}x with the pool empty; (none + pasta alone) / none: ${((a.p50 + c.p50) / a.p50).toFixed(2)}x; pasta's own CPU per start p50 ${f(summarize(aloneCpu).p50)} ms`);
await Sandbox.settle();
// The rest measures the link itself: no spares made in the background meanwhile.
process.env.HUTCH_LINK_SPARES = '0';

const [up, down] = await both({}, MIB * 1024 * 1024, 300);
console.log(`\ntop TCP rate, ${MIB} MiB one connection: sandbox -> host ${(up / 1e9).toFixed(2)} Gbit/s, host -> sandbox ${(down / 1e9).toFixed(2)} Gbit/s`);

console.log(`\nshaping, payload rate / asked (3 s of traffic each way, the first 0.5 s left out)`);
console.log(`| asked | egress | ingress |`);
for (const [label, bps] of [['1mbit', 1e6], ['10mbit', 1e7], ['100mbit', 1e8]] as const) {
  const [e, i] = await both({ egress: label, ingress: label }, Math.round((bps / 8) * 3), 500);
  console.log(`| ${label} | ${((e / bps) * 100).toFixed(1)}% | ${((i / bps) * 100).toFixed(1)}% |`);
}
await Sandbox.settle();
