import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import {
  attachNetwork,
  releaseNetwork,
  pruneNetwork,
  resolveNetwork,
  settleNetwork,
  hostsLines,
  type NetworkAttachment,
  type NetworkOptions,
} from '../../lib/network/index.js';
import { needsRootWith } from '../helpers/require.js';
import { children, connectScript, fakeSandbox, freePort, inNetns, kill, serveInNetns, sh } from '../helpers/netns.js';

// Traffic only between namespaces and links this test makes (or loopback). The "outside
// host" is a netns made here, reached through a link made here; its addresses come from
// 198.18.0.0/15 (benchmarking range) and never leave this machine.
const skip = needsRootWith('network tests', ['ip', 'tc', 'nft', 'nsenter', 'unshare']);

const RANGE = '10.201.0.0/24';
const OUT_NS = `hutch-test-${process.pid}-out`;
const OUT_LINK = `hutcho${process.pid % 100000}`;
const OUT_HOST_SIDE = '198.18.0.1';
const OUT_ALLOWED = '198.18.1.1';
const OUT_DENIED = '198.18.2.1';

function connectFromHost(host: string, port: number, timeoutMs = 1500): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, host);
    let d = '';
    const t = setTimeout(() => {
      s.destroy();
      resolve('timeout');
    }, timeoutMs);
    s.on('data', (x) => (d += x));
    s.on('end', () => {
      clearTimeout(t);
      resolve(`ok ${d}`);
    });
    s.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      resolve(e.code ?? 'error');
    });
  });
}

function nftChains(): string {
  try {
    return sh('nft list table inet hutch 2>/dev/null');
  } catch {
    return '';
  }
}

/** hutch links of this file's range (other test files may have theirs at the same time). */
function hxLinks(): string[] {
  return sh('ip -o link').split('\n').filter((l) => /hx0ac901[0-9a-f]{2}/.test(l));
}

const plan = (o: Omit<NetworkOptions, 'mode'> = {}) => resolveNetwork({ mode: 'bridge', range: RANGE, ...o });

describe.skipIf(skip !== undefined)('network: bridge links', () => {
  const toRelease: NetworkAttachment[] = [];
  let linksBefore: string[] = [];

  beforeAll(() => {
    linksBefore = hxLinks();
    // The "outside host": a netns behind a link of this test, with one allowed and one denied address.
    sh(`ip netns add ${OUT_NS}`);
    sh(`ip link add ${OUT_LINK} type veth peer name eth0 netns ${OUT_NS}`);
    sh(`ip addr add ${OUT_HOST_SIDE}/30 dev ${OUT_LINK} && ip link set ${OUT_LINK} up`);
    sh(`ip -n ${OUT_NS} addr add 198.18.0.2/30 dev eth0 && ip -n ${OUT_NS} link set eth0 up && ip -n ${OUT_NS} link set lo up`);
    sh(`ip -n ${OUT_NS} addr add ${OUT_ALLOWED}/32 dev lo && ip -n ${OUT_NS} addr add ${OUT_DENIED}/32 dev lo`);
    sh(`ip -n ${OUT_NS} route add default via ${OUT_HOST_SIDE}`);
    sh(`ip route add 198.18.1.0/24 via 198.18.0.2 dev ${OUT_LINK} && ip route add 198.18.2.0/24 via 198.18.0.2 dev ${OUT_LINK}`);
  });

  afterAll(async () => {
    for (const a of toRelease) await releaseNetwork(a, { wait: true }).catch(() => {});
    await settleNetwork().catch(() => {});
    for (const c of children) c.kill('SIGKILL');
    try {
      sh(`ip netns del ${OUT_NS}`);
    } catch {}
    try {
      sh(`ip link del ${OUT_LINK} 2>/dev/null`);
    } catch {}
    await pruneNetwork();
  });

  it('mode none makes no link', async () => {
    expect(await attachNetwork(resolveNetwork('none'), 'none1', process.pid)).toBeNull();
    expect(await attachNetwork(resolveNetwork({ mode: 'none' }), 'none2', process.pid)).toBeNull();
  });

  it('gives the sandbox a /30 and a gateway on the host side', async () => {
    const pid = await fakeSandbox();
    const t0 = performance.now();
    const a = (await attachNetwork(plan(), 'bridge-basic', pid))!;
    const attachMs = performance.now() - t0;
    toRelease.push(a);
    expect(a.interface).toBe('eth0');
    expect(a.hostInterface).toMatch(/^hx[0-9a-f]{8}$/);
    expect(a.address.startsWith('10.201.0.')).toBe(true);
    const inside = sh(`nsenter --net=/proc/${pid}/ns/net ip -o -4 addr show dev eth0`);
    expect(inside).toContain(`${a.address}/30`);
    expect(sh(`nsenter --net=/proc/${pid}/ns/net ip route`)).toContain(`default via ${a.hostAddress}`);

    // The host side's own address: refused at once unless the port is in hostPorts (network/host.test.ts).
    const srv = net.createServer((s) => s.end('hello')).listen(0, a.hostAddress);
    await new Promise((r) => srv.once('listening', r));
    const port = (srv.address() as net.AddressInfo).port;
    expect(await inNetns(pid, connectScript(a.hostAddress, port))).toBe('ECONNREFUSED');
    // The host's other addresses are not the sandbox's to reach.
    srv.close();
    const srv2 = net.createServer((s) => s.end('no')).listen(0, OUT_HOST_SIDE);
    await new Promise((r) => srv2.once('listening', r));
    expect(await inNetns(pid, connectScript(OUT_HOST_SIDE, (srv2.address() as net.AddressInfo).port, 800))).toBe('ECONNREFUSED');
    srv2.close();

    expect(hostsLines('box', a)).toEqual([
      '127.0.0.1\tlocalhost',
      '::1\tlocalhost ip6-localhost ip6-loopback',
      `${a.address}\tbox`,
      `${a.hostAddress}\thost.hutch.internal`,
    ]);

    const t1 = performance.now();
    await releaseNetwork(a);
    const releaseMs = performance.now() - t1;
    await releaseNetwork(a, { wait: true });
    const goneMs = performance.now() - t1;
    console.log(`attach ${attachMs.toFixed(2)} ms, release ${releaseMs.toFixed(2)} ms (link gone after ${goneMs.toFixed(1)} ms, netlink)`);
    await releaseNetwork(a); // idempotent
    expect(existsSync(`/sys/class/net/${a.hostInterface}`)).toBe(false);
    expect(nftChains()).not.toContain(`fwd_${a.slot}`);
    expect(existsSync(`${a.stateDir}/${a.slot}.lease`)).toBe(false);
    kill(pid);
  });

  it('two sandboxes cannot reach each other', async () => {
    const [p1, p2] = [await fakeSandbox(), await fakeSandbox()];
    const a = (await attachNetwork(plan({ outbound: 'nat' }), 'iso-a', p1))!;
    toRelease.push(a);
    const b = (await attachNetwork(plan({ outbound: 'nat' }), 'iso-b', p2))!;
    toRelease.push(b);
    const srvB = await serveInNetns(p2, '0.0.0.0', 7000, 'b');
    // b is up: its own host side reaches it.
    expect(await connectFromHost(b.address, 7000)).toBe('ok b');
    expect(await inNetns(p1, connectScript(b.address, 7000, 800))).toBe('timeout');
    // Nor through b's host side address (a local address of the host, but not a's).
    const srvHostB = net.createServer((s) => s.end('hb')).listen(0, b.hostAddress);
    await new Promise((r) => srvHostB.once('listening', r));
    expect(await inNetns(p1, connectScript(b.hostAddress, (srvHostB.address() as net.AddressInfo).port, 800))).toBe('ECONNREFUSED');
    srvHostB.close();
    srvB.kill('SIGKILL');
    await Promise.all([releaseNetwork(a, { wait: true }), releaseNetwork(b, { wait: true })]);
    kill(p1);
    kill(p2);
  });

  it('outbound nat admits an allowed address and drops another', async () => {
    const allowed = await serveInNetns(OUT_NS, OUT_ALLOWED, 7100, 'allowed');
    const denied = await serveInNetns(OUT_NS, OUT_DENIED, 7100, 'denied');
    const pid = await fakeSandbox();
    const a = (await attachNetwork(plan({ outbound: 'nat', allow: [`${OUT_ALLOWED}/32`] }), 'allow', pid))!;
    toRelease.push(a);
    expect(await inNetns(pid, connectScript(OUT_ALLOWED, 7100))).toBe('ok allowed');
    expect(await inNetns(pid, connectScript(OUT_DENIED, 7100, 800))).toBe('timeout');
    await releaseNetwork(a, { wait: true });

    // Without nat nothing beyond the host side is reachable.
    const b = (await attachNetwork(plan(), 'no-nat', pid))!;
    toRelease.push(b);
    expect(await inNetns(pid, connectScript(OUT_ALLOWED, 7100, 800))).toBe('timeout');
    await releaseNetwork(b, { wait: true });
    allowed.kill('SIGKILL');
    denied.kill('SIGKILL');
    kill(pid);
  });

  it('publishes a port on the host, 127.0.0.1 included, and to another host', async () => {
    const pid = await fakeSandbox();
    const hostPort = await freePort();
    // Resolved before the port was taken: the race two processes can have.
    const racer = plan({ ports: [{ host: hostPort, sandbox: 9090 }] });
    const a = (await attachNetwork(plan({ ports: [{ host: hostPort, sandbox: 8080 }] }), 'ports', pid))!;
    toRelease.push(a);
    const srv = await serveInNetns(pid, '0.0.0.0', 8080, 'published');
    expect(await connectFromHost('127.0.0.1', hostPort)).toBe('ok published');
    expect(await connectFromHost(OUT_HOST_SIDE, hostPort)).toBe('ok published');
    expect(await inNetns(OUT_NS, connectScript(OUT_HOST_SIDE, hostPort))).toBe('ok published');
    // A second sandbox cannot take the same host port.
    expect(() => plan({ ports: [{ host: hostPort, sandbox: 80 }] })).toThrow(/published by sandbox ports/);
    const pid2 = await fakeSandbox();
    const links = hxLinks().length;
    await expect(attachNetwork(racer, 'racer', pid2)).rejects.toMatchObject({ code: 'EINVAL' });
    expect(hxLinks().length).toBe(links);
    // The loser's cleanup left the winner's mapping alone.
    expect(await connectFromHost('127.0.0.1', hostPort)).toBe('ok published');
    kill(pid2);
    srv.kill('SIGKILL');
    await releaseNetwork(a, { wait: true });
    expect(nftChains()).not.toMatch(new RegExp(`\\. ${hostPort} :`));
    expect(await connectFromHost('127.0.0.1', hostPort, 500)).toMatch(/ECONNREFUSED|timeout/);
    kill(pid);
  });

  it('shaped links release their ifb and qdiscs too', async () => {
    const pid = await fakeSandbox();
    const a = (await attachNetwork(plan({ egress: '10mbit', ingress: '20mbit' }), 'shaped', pid))!;
    expect(sh(`tc qdisc show dev ${a.hostInterface}`)).toMatch(/tbf .*rate 20Mbit/);
    expect(sh(`tc qdisc show dev ${a.ifb}`)).toMatch(/tbf .*rate 10Mbit/);
    await releaseNetwork(a, { wait: true });
    expect(existsSync(`/sys/class/net/${a.ifb}`)).toBe(false);
    kill(pid);
  });

  it('a failure halfway leaves nothing behind', async () => {
    const dead = spawn('true');
    await new Promise((r) => dead.on('close', r));
    const before = hxLinks().length;
    await expect(attachNetwork(plan({ egress: '1mbit', outbound: 'nat' }), 'halfway', dead.pid!)).rejects.toMatchObject({ code: 'ESETUP', step: 'network' });
    expect(hxLinks().length).toBe(before);
    expect(nftChains()).not.toMatch(/fwd_0ac9/);
  });

  it('prune removes what a crashed owner left', async () => {
    const pid = await fakeSandbox();
    const a = (await attachNetwork(plan({ egress: '5mbit', outbound: 'nat', ports: [{ host: await freePort(), sandbox: 80 }] }), 'crashed', pid))!;
    // Simulate the owner's crash: the lease now names a process that has ended.
    const dead = spawn('true');
    await new Promise((r) => dead.on('close', r));
    const leaseFile = `${a.stateDir}/${a.slot}.lease`;
    const lease = JSON.parse(readFileSync(leaseFile, 'utf8'));
    writeFileSync(leaseFile, JSON.stringify({ ...lease, ownerPid: dead.pid }));
    const r = await pruneNetwork();
    expect(r.removed).toContain(a.slot);
    expect(existsSync(`/sys/class/net/${a.hostInterface}`)).toBe(false);
    expect(existsSync(`/sys/class/net/${a.ifb}`)).toBe(false);
    expect(nftChains()).not.toContain(`fwd_${a.slot}`);
    expect(existsSync(leaseFile)).toBe(false);
    kill(pid);
  });

  it('leaves no hutch link behind', async () => {
    for (const a of toRelease) await releaseNetwork(a, { wait: true });
    await settleNetwork();
    expect(hxLinks()).toEqual(linksBefore);
  });
});
