import { describe, it, expect, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import net from 'node:net';
import { attachNetwork, pruneNetwork, releaseNetwork, resolveNetwork, settleNetwork, type NetworkAttachment, type NetworkOptions } from '../../lib/network/index.js';
import { createVeth, deleteLinks } from '../../lib/network/netlink.js';
import { deleteTableIfIdle, hutchLinksOnHost, TABLE } from '../../lib/network/nat.js';
import { needs, needsRootWith } from '../helpers/require.js';
import { children, connectScript, fakeSandbox, freePort, inNetns, sh } from '../helpers/netns.js';

// The link work done through rtnetlink from the addon, checked with iproute2's own view from
// the host (`ip`, `tc`, `nsenter`). Traffic only between a stand-in sandbox and the host side
// of the link made here.
// One test needs no hutch link anywhere on the host: npm test runs this file after the parallel
// part, alone (vitest.timing.config.ts; by hand: npx vitest run --config vitest.timing.config.ts <this file>).
const skip = needsRootWith('netlink tests', ['ip', 'tc', 'nft', 'nsenter', 'unshare']);

const RANGE = '10.205.0.0/24';
function thisRange(): string[] {
  return hutchLinksOnHost().filter((n) => n.startsWith('hx0acd00'));
}

const plan = (o: Omit<NetworkOptions, 'mode'> = {}) => resolveNetwork({ mode: 'bridge', range: RANGE, ...o });

describe.skipIf(skip !== undefined)('network: rtnetlink from the addon', () => {
  const made: NetworkAttachment[] = [];

  afterAll(async () => {
    for (const a of made) await releaseNetwork(a, { wait: true }).catch(() => {});
    await settleNetwork().catch(() => {});
    for (const c of children) c.kill('SIGKILL');
  });

  it('a prune on a host whose state dir does not exist yet removes the idle table (its lock dir is made)', async (ctx) => {
    // The idle-table branch takes the state dir's lock; on a fresh host that dir did not exist
    // and the prune failed with ENOENT (seen under v2vm as a HutchPruneWarning).
    const why = needs(hutchLinksOnHost().length === 0, `no hutch link on the host (there are: ${hutchLinksOnHost().join(', ')})`);
    if (why !== undefined) return ctx.skip(why);
    const stateDir = join(mkdtempSync(join(tmpdir(), 'hutch-net-')), 'fresh');
    try {
      sh(`nft add table ${TABLE}`); // the table exists, idle
      const r = await pruneNetwork(undefined, { stateDir });
      expect(r.removed).toEqual([]);
      expect(() => sh(`nft list table ${TABLE} 2>/dev/null`)).toThrow();
      expect(existsSync(stateDir)).toBe(true);
    } finally {
      rmSync(dirname(stateDir), { recursive: true, force: true });
    }
  });

  it('the table is made again before a link when a prune removed it', async (ctx) => {
    // Only when no hutch link exists anywhere: the same check prune makes. npm test runs this
    // file after the parallel part, alone (vitest.timing.config.ts): no other test file holds
    // a link then, so a link here is another process's, and CI (HUTCH_REQUIRE_ALL=1) fails.
    const removed = await deleteTableIfIdle();
    const why = needs(removed, `no hutch link on the host, so that prune may remove the table (there are: ${hutchLinksOnHost().join(', ')})`);
    if (why !== undefined) return ctx.skip(why);
    expect(() => sh(`nft list table ${TABLE} 2>/dev/null`)).toThrow();
    const pid = await fakeSandbox();
    const a = (await attachNetwork(plan(), 'nl-table', pid))!;
    made.push(a);
    expect(sh(`nft list table ${TABLE}`)).toContain('skeleton_v4');
  });

  it('makes the pair, addresses, route and no IPv6 address, as ip sees them', async () => {
    const pid = await fakeSandbox();
    const a = (await attachNetwork(plan(), 'nl-basic', pid))!;
    made.push(a);
    const ns = `nsenter --net=/proc/${pid}/ns/net`;
    // Host side: the /30's first address, up, addrgenmode none, one queue each way.
    const host = sh(`ip -d addr show dev ${a.hostInterface}`);
    expect(host).toContain(`inet ${a.hostAddress}/30`);
    expect(host).toMatch(/state UP/);
    expect(sh(`ip -d link show dev ${a.hostInterface}`)).toContain('addrgenmode none');
    expect(host).not.toContain('inet6');
    expect(readdirSync(`/sys/class/net/${a.hostInterface}/queues`).sort()).toEqual(['rx-0', 'tx-0']);
    // Sandbox side: eth0, born in its netns (the veth's peer), the second address, default route.
    const inside = sh(`${ns} ip -d addr show dev eth0`);
    expect(inside).toContain(`inet ${a.address}/30`);
    expect(inside).toMatch(/state UP/);
    expect(inside).not.toContain('inet6');
    expect(sh(`${ns} ip route show default`).trim()).toBe(`default via ${a.hostAddress} dev eth0`);
    expect(sh(`${ns} ip -o link`).split('\n').filter(Boolean).map((l) => l.split(':')[1]!.trim().split('@')[0])).toEqual(['lo', 'eth0']);
    // A plain link has no nftables chains of its own: the table's skeleton filters it.
    expect(sh(`nft list table ${TABLE}`)).not.toContain(`fwd_${a.slot}`);

    // The host side refuses what hostPorts does not open (network/host.test.ts).
    const srv = net.createServer((s) => s.end('hello')).listen(0, a.hostAddress);
    await new Promise((r) => srv.once('listening', r));
    expect(await inNetns(pid, connectScript(a.hostAddress, (srv.address() as net.AddressInfo).port))).toBe('ECONNREFUSED');
    srv.close();
  });

  it('a sandbox reaches its hostPorts on its own host side only', async () => {
    const [p1, p2] = [await fakeSandbox(), await fakeSandbox()];
    const port = await freePort();
    const a = (await attachNetwork(plan({ hostPorts: [port] }), 'nl-iso-a', p1))!;
    const b = (await attachNetwork(plan({ hostPorts: [port] }), 'nl-iso-b', p2))!;
    made.push(a, b);
    // b's host side is a local address of the host, but not on a's link.
    const srv = net.createServer((s) => s.end('b-host')).listen(port, b.hostAddress);
    await new Promise((r) => srv.once('listening', r));
    expect(await inNetns(p2, connectScript(b.hostAddress, port))).toBe('ok b-host');
    expect(await inNetns(p1, connectScript(b.hostAddress, port, 800))).toBe('ECONNREFUSED');
    srv.close();
    // Nor b itself (forwarded between two hutch links).
    const srvB = spawn('nsenter', [`--net=/proc/${p2}/ns/net`, process.execPath, '-e', `require('net').createServer(s=>s.end('b')).listen(7300,'0.0.0.0',()=>console.log('ready'))`], { stdio: ['ignore', 'pipe', 'ignore'] });
    children.push(srvB);
    await new Promise((r) => srvB.stdout!.once('data', r));
    expect(await inNetns(p1, connectScript(b.address, 7300, 800))).toBe('timeout');
    srvB.kill('SIGKILL');
  });

  it('shapes with tbf and an ifb redirect, as tc sees them', async () => {
    const pid = await fakeSandbox();
    const a = (await attachNetwork(plan({ egress: '10mbit', ingress: '20mbit' }), 'nl-shaped', pid))!;
    made.push(a);
    expect(sh(`tc qdisc show dev ${a.hostInterface}`)).toMatch(/qdisc tbf 1: root .*rate 20Mbit burst 20000b lat 50ms/);
    expect(sh(`tc qdisc show dev ${a.hostInterface}`)).toMatch(/qdisc ingress ffff:/);
    expect(sh(`tc qdisc show dev ${a.ifb}`)).toMatch(/qdisc tbf 1: root .*rate 10Mbit burst 10000b lat 50ms/);
    const filter = sh(`tc filter show dev ${a.hostInterface} ingress`);
    expect(filter).toContain('match 00000000/00000000 at 0');
    expect(filter).toContain(`mirred (Egress Redirect to device ${a.ifb}) stolen`);
    expect(sh(`ip -d link show ${a.ifb}`)).toMatch(/state UNKNOWN|UP/);
  });

  it('release hands off at once; settle sees links, rules and lease gone', async () => {
    const pid = await fakeSandbox();
    const a = (await attachNetwork(plan({ egress: '5mbit', outbound: 'nat' }), 'nl-release', pid))!;
    expect(sh(`nft list table ${TABLE}`)).toContain(`fwd_${a.slot}`);
    await releaseNetwork(a);
    await settleNetwork();
    expect(existsSync(`/sys/class/net/${a.hostInterface}`)).toBe(false);
    expect(existsSync(`/sys/class/net/${a.ifb}`)).toBe(false);
    expect(sh(`nft list table ${TABLE}`)).not.toContain(`fwd_${a.slot}`);
    expect(existsSync(`${a.stateDir}/${a.slot}.lease`)).toBe(false);
    expect(sh(`nsenter --net=/proc/${pid}/ns/net ip -o link`)).not.toContain('eth0');
  });

  it('a published port is free again when release returns', async () => {
    const pid = await fakeSandbox();
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const a = (await attachNetwork(plan({ ports: [{ host: port, sandbox: 80 }] }), 'nl-port', pid))!;
    await releaseNetwork(a);
    // No wait for the link: the port's elements and the lease's claim on it are gone already.
    const again = plan({ ports: [{ host: port, sandbox: 80 }] });
    expect(again.mode).toBe('bridge');
    expect(sh(`nft list map ${TABLE} ports`)).not.toMatch(new RegExp(`\\. ${port} :`));
    await settleNetwork();
  });

  it('netlink failures are ESETUP naming the request and errno, and leave nothing', async () => {
    const dead = spawn('true');
    await new Promise((r) => dead.on('close', r));
    const before = thisRange();
    await expect(attachNetwork(plan({ egress: '1mbit' }), 'nl-dead', dead.pid!)).rejects.toMatchObject({ code: 'ESETUP', step: 'network', errno: 'ENOENT' });
    expect(thisRange()).toEqual(before);

    // An existing name: the kernel's EEXIST, with its extended ack when it gives one.
    const pid = await fakeSandbox();
    const a = (await attachNetwork(plan(), 'nl-dup', pid))!;
    made.push(a);
    let err: unknown;
    try {
      createVeth(a.hostInterface, 'eth1', pid);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'ESETUP', step: 'network', errno: 'EEXIST' });
    expect((err as Error).message).toContain(`creating ${a.hostInterface}`);
    // Deleting a link that is already gone is not a failure.
    await expect(deleteLinks(['hx0acdffffi'])).resolves.toBeUndefined();
  });

  it('leaves nothing of its range behind', async () => {
    for (const a of made) await releaseNetwork(a, { wait: true });
    await settleNetwork();
    expect(thisRange()).toEqual([]);
  });
});
