import { describe, it, expect, afterAll, beforeEach } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { networkInterfaces } from 'node:os';
import { Sandbox } from '../../lib/index.js';
import { hostMode } from '../../lib/host/mode.js';
import { pastaPid, type NetworkAttachment, type NetworkOptions } from '../../lib/network/index.js';
import { linkSpares, linksMade, linksNow, readyLinks } from '../../lib/network/linkpool.js';
import { insideRuleset, nftInside } from '../../lib/network/userspace.js';
import { findProgram } from '../../lib/network/userspace-options.js';
import { formatCidr } from '../../lib/network/cidr.js';
import { alive, attachmentOf, inside } from '../helpers/userspace.js';
import { needs } from '../helpers/require.js';
import { pruneAll } from '../../lib/prune.js';
import { cgroupDriver } from '../../lib/cgroup/driver.js';
import { NoCgroupDriver } from '../../lib/cgroup/none.js';
import { connectScript } from '../helpers/netns.js';

// Userspace links made ahead (lib/network/linkpool.ts): outside host root a bridge sandbox
// whose plan matches a prepared link joins its user + net namespace, pasta already attached.
// Everything is asserted from inside the sandboxes and against the kernel's namespace inodes.
// As host root (HUTCH_NETWORK_BACKEND=userspace) sandboxes get ranges of their own: no link
// is made ahead there, which the last block checks. scripts/rootless-ci.sh runs this file as an
// ordinary user.
process.env.HUTCH_NETWORK_BACKEND ??= 'userspace';

const skip = needs(findProgram('pasta') !== null, 'the userspace network backend needs pasta: apt-get install passt');
const outsideRoot = hostMode() !== 'root';
/** A host address that is not loopback (pasta would carry a connection to it to the host). */
const HOST_IP = Object.values(networkInterfaces())
  .flat()
  .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;

/** What the sandbox's init sees of itself: its namespaces, maps, capabilities, mounts, eth0. */
async function view(sb: Sandbox): Promise<{ net: string; user: string; uidMap: string; gidMap: string; caps: string; mounts: string; eth0: string }> {
  const out = await inside(
    sb,
    `const fs=require('fs');const os=require('os');console.log(JSON.stringify({net:fs.readlinkSync('/proc/self/ns/net'),user:fs.readlinkSync('/proc/self/ns/user'),
uidMap:fs.readFileSync('/proc/self/uid_map','utf8').trim().split(/\\s+/).join(' '),gidMap:fs.readFileSync('/proc/self/gid_map','utf8').trim().split(/\\s+/).join(' '),
caps:fs.readFileSync('/proc/self/status','utf8').split('\\n').filter(l=>/^Cap/.test(l)).join(';'),
mounts:fs.readFileSync('/proc/self/mounts','utf8').split('\\n').map(l=>l.split(' ').slice(1,3).join(' ')).sort().join(';'),
eth0:(os.networkInterfaces().eth0||[]).filter(a=>a.family==='IPv4').map(a=>a.cidr).join(',')}))`,
  );
  return JSON.parse(out);
}

/** A namespace fd of this process as the kernel names it (`net:[inode]`). */
const nsOf = (fd: number): string => readlinkSync(`/proc/self/fd/${fd}`);

async function listen(handler: (s: net.Socket) => void, host = '127.0.0.1'): Promise<net.Server & { port: number }> {
  const srv = net.createServer(handler);
  await new Promise<void>((r) => srv.listen(0, host, () => r()));
  return Object.assign(srv, { port: (srv.address() as net.AddressInfo).port });
}

describe.skipIf(skip !== undefined || !outsideRoot)('network: userspace links made ahead', () => {
  const made: Sandbox[] = [];
  const saved = process.env.HUTCH_LINK_SPARES;

  beforeEach(async () => {
    // Each test starts from an empty pool (settle drops the spares of the one before).
    for (const sb of made.splice(0)) await sb.destroy().catch(() => {});
    await Sandbox.settle();
    if (saved === undefined) delete process.env.HUTCH_LINK_SPARES;
    else process.env.HUTCH_LINK_SPARES = saved;
  });

  afterAll(async () => {
    for (const sb of made) await sb.destroy().catch(() => {});
    await Sandbox.settle();
  });

  async function create(network: NetworkOptions, extra: Record<string, unknown> = {}): Promise<Sandbox> {
    const sb = await Sandbox.create({ image: 'host', network, ...extra });
    made.push(sb);
    return sb;
  }

  it('a sandbox made from a prepared link has its namespaces, the mode\'s maps and what a cold sandbox has; each spare is used once', async () => {
    const srv = await listen((s) => s.end('from-host'));
    const other = await listen((s) => s.end('closed'));
    const network: NetworkOptions = { mode: 'bridge', hostPorts: [srv.port], egress: '10mbit', ingress: '10mbit' };
    try {
      // The first of its plan is cold; a spare is made once its create has returned.
      const cold = await create(network);
      await linksMade();
      const spare = linksNow();
      expect(spare).toHaveLength(1);
      const spareNs = { net: nsOf(spare[0]!.netns), user: nsOf(spare[0]!.userns) };
      expect(alive(spare[0]!.pasta)).toBe(true);

      const warm = await create(network);
      // The pool gave its one link away: none left until the replacement is made.
      expect(linksNow()).toEqual([]);
      expect(pastaPid(attachmentOf(warm))).toBe(spare[0]!.pasta);
      const [c, w] = [await view(cold), await view(warm)];
      // The spare's namespaces are the sandbox's own, not the cold sandbox's.
      expect(w.net).toBe(spareNs.net);
      expect(w.user).toBe(spareNs.user);
      expect(w.net).not.toBe(c.net);
      expect(w.user).not.toBe(c.user);
      // The mode's maps (sandbox root is a subordinate id, or the caller with one id), the same
      // capabilities and mounts as the cold sandbox, eth0 with its address.
      expect(w.uidMap).toBe(c.uidMap);
      expect(w.gidMap).toBe(c.gidMap);
      expect(w.uidMap).toMatch(/^0 \d+ \d+$/);
      expect(w.caps).toBe(c.caps);
      expect(w.mounts).toBe(c.mounts);
      expect(w.mounts).toContain('/proc proc');
      expect(w.eth0).toBe('10.200.0.2/30');
      expect(c.eth0).toBe('10.200.0.2/30');

      // The filter and shaping hold as on a cold link, and root inside cannot remove them.
      for (const sb of [cold, warm]) {
        expect(await inside(sb, connectScript('10.200.0.1', srv.port))).toBe('ok from-host');
        expect(await inside(sb, connectScript('10.200.0.1', other.port))).toBe('ECONNREFUSED');
        expect(await inside(sb, connectScript('203.0.113.1', 80))).toBe('ECONNREFUSED');
        const r = await sb.exec('id -u; nft flush ruleset; echo nft=$?; tc qdisc del dev eth0 root; echo tc=$?; ip link set eth0 down; echo ip=$?', { encoding: 'utf8' });
        expect(r.stdout).toMatch(/^0\n/);
        for (const k of ['nft', 'tc', 'ip']) expect(r.stdout, String(r.stdout) + String(r.stderr)).not.toContain(`${k}=0`);
        const q = await sb.exec('tc qdisc show', { encoding: 'utf8' });
        expect(q.stdout).toMatch(/qdisc tbf 1: dev eth0 root .*rate 10Mbit/);
        expect(q.stdout).toMatch(/qdisc tbf 1: dev ifb0 root .*rate 10Mbit/);
        // Still filtered after the attempts above.
        expect(await inside(sb, connectScript('10.200.0.1', other.port))).toBe('ECONNREFUSED');
      }

      // The replacement is a new link: other namespaces, another pasta.
      await linksMade();
      const next = linksNow();
      expect(next).toHaveLength(1);
      expect(nsOf(next[0]!.netns)).not.toBe(spareNs.net);
      expect(nsOf(next[0]!.userns)).not.toBe(spareNs.user);
      expect(next[0]!.pasta).not.toBe(spare[0]!.pasta);
      const third = await create(network);
      const t = await view(third);
      expect(t.net).not.toBe(w.net);
      expect(t.net).not.toBe(c.net);
      expect(t.user).not.toBe(w.user);

      // A released sandbox's link goes with it: its pasta ends, and it is never offered again.
      const pasta = pastaPid(attachmentOf(warm))!;
      await warm.destroy();
      await linksMade();
      const deadline = Date.now() + 5000;
      while (alive(pasta) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(alive(pasta)).toBe(false);
      for (const l of linksNow()) expect(nsOf(l.netns)).not.toBe(w.net);
    } finally {
      srv.close();
      other.close();
    }
  });

  it('Sandbox.run with a bridge takes a link made ahead (and no blank of its own)', async () => {
    const network: NetworkOptions = { mode: 'bridge', outbound: 'nat', allow: ['192.0.2.0/24'] };
    const run = async (): Promise<string> => {
      const r = await Sandbox.run({ image: 'host', network, command: ['readlink', '/proc/self/ns/net'], encoding: 'utf8' });
      expect(r.exitCode).toBe(0);
      return String(r.stdout).trim();
    };
    const first = await run();
    await linksMade();
    const spare = linksNow();
    expect(spare).toHaveLength(1);
    const spareNet = nsOf(spare[0]!.netns);
    const second = await run();
    expect(second).toBe(spareNet);
    expect(second).not.toBe(first);
  });

  it.skipIf(needs(!outsideRoot || HOST_IP !== undefined, 'a non-loopback IPv4 address on the host (the refilter test connects to it)') !== undefined)('a spare whose filter predates a host address is refiltered before use: the sandbox cannot reach that address', async () => {
    const network: NetworkOptions = { mode: 'bridge', outbound: 'nat' };
    const srv = await listen((s) => s.end('host'), '0.0.0.0');
    try {
      await create(network);
      await linksMade();
      const [link] = readyLinks();
      // As if it had been made before the host had HOST_IP: its filter lets it through.
      const stale = { ...link!.rules, closed: link!.rules.closed.filter((c) => formatCidr(c) !== `${HOST_IP}/32`) };
      expect(stale.closed.length).toBe(link!.rules.closed.length - 1);
      await nftInside([link!.userns, link!.netns], insideRuleset(stale), 'a stale filter (test)');
      link!.rules = stale;
      const netns = nsOf(link!.netns);
      const sb = await create(network);
      expect((await view(sb)).net).toBe(netns);
      expect(await inside(sb, connectScript(HOST_IP!, srv.port))).toBe('ECONNREFUSED');
      expect(await inside(sb, connectScript('10.200.0.1', srv.port))).toBe('ECONNREFUSED');
    } finally {
      srv.close();
    }
  });

  it('two sandboxes created at once never share a link', async () => {
    const network: NetworkOptions = { mode: 'bridge', outbound: 'nat', allow: ['192.0.2.0/24'] };
    await create(network);
    await linksMade();
    expect(linksNow()).toHaveLength(1);
    const [a, b] = await Promise.all([create(network), create(network)]);
    const [va, vb] = [await view(a), await view(b)];
    expect(va.net).not.toBe(vb.net);
    expect(va.user).not.toBe(vb.user);
    expect(pastaPid(attachmentOf(a))).not.toBe(pastaPid(attachmentOf(b)));
    expect(va.eth0).toBe('10.200.0.2/30');
    expect(vb.eth0).toBe('10.200.0.2/30');
    // The allow list is in force in both (an address outside it refused at once).
    for (const sb of [a, b]) expect(await inside(sb, connectScript('203.0.113.1', 80))).toBe('ECONNREFUSED');
  });

  it('a prepared link whose pasta died is not used: the create takes a cold link, filtered', async () => {
    const srv = await listen((s) => s.end('from-host'));
    const network: NetworkOptions = { mode: 'bridge', hostPorts: [srv.port] };
    try {
      await create(network);
      await linksMade();
      const [spare] = linksNow();
      const spareNet = nsOf(spare!.netns);
      process.kill(spare!.pasta, 'SIGKILL');
      const deadline = Date.now() + 5000;
      while (existsSync(`/proc/${spare!.pasta}`) && !/^State:\s+Z/m.test(readFileSync(`/proc/${spare!.pasta}/status`, 'utf8')) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 10));
      }
      const sb = await create(network);
      const v = await view(sb);
      expect(v.net).not.toBe(spareNet);
      expect(pastaPid(attachmentOf(sb))).not.toBe(spare!.pasta);
      expect(alive(pastaPid(attachmentOf(sb))!)).toBe(true);
      expect(v.eth0).toBe('10.200.0.2/30');
      expect(await inside(sb, connectScript('10.200.0.1', srv.port))).toBe('ok from-host');
      expect(await inside(sb, connectScript('203.0.113.1', 80))).toBe('ECONNREFUSED');
      // The dead link's fds are closed: this process holds no fd of its namespace any more.
      const held = readdirSync('/proc/self/fd').flatMap((fd) => {
        try {
          return [readlinkSync(`/proc/self/fd/${fd}`)];
        } catch {
          return [];
        }
      });
      expect(held).not.toContain(spareNet);
    } finally {
      srv.close();
    }
  });

  it('HUTCH_LINK_SPARES: 0 makes none, a bad value is an EINVAL naming the variable; published ports are always cold', async () => {
    expect(() => linkSpares({ HUTCH_LINK_SPARES: 'lots' })).toThrow(/HUTCH_LINK_SPARES/);
    process.env.HUTCH_LINK_SPARES = 'lots';
    await expect(Sandbox.create({ image: 'host', network: { mode: 'bridge' } })).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringContaining('HUTCH_LINK_SPARES') });
    process.env.HUTCH_LINK_SPARES = '0';
    await create({ mode: 'bridge' });
    await create({ mode: 'bridge' });
    await linksMade();
    expect(linksNow()).toEqual([]);
    process.env.HUTCH_LINK_SPARES = '2';
    await create({ mode: 'bridge', ports: [{ host: 0 + (await freeTcpPort()), sandbox: 80 }] });
    await linksMade();
    expect(linksNow()).toEqual([]);
    await create({ mode: 'bridge' });
    await linksMade();
    expect(linksNow()).toHaveLength(2);
  });

  it('settle releases every spare, and the spares of a process that is killed die with it', async () => {
    await create({ mode: 'bridge' });
    await linksMade();
    const pastas = linksNow().map((l) => l.pasta);
    expect(pastas.length).toBeGreaterThan(0);
    for (const sb of made.splice(0)) await sb.destroy();
    await Sandbox.settle();
    expect(linksNow()).toEqual([]);
    for (const p of pastas) expect(alive(p)).toBe(false);

    // Another process with a spare, killed with SIGKILL: PR_SET_PDEATHSIG ends its pasta.
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      const { Sandbox } = await import(${JSON.stringify(new URL('../../dist/lib/index.js', import.meta.url).href)});
      const { linksMade, linksNow } = await import(${JSON.stringify(new URL('../../dist/lib/network/linkpool.js', import.meta.url).href)});
      const sb = await Sandbox.create({ image: 'host', network: { mode: 'bridge' } });
      await linksMade();
      console.log(JSON.stringify({ spares: linksNow().map((l) => l.pasta), init: sb.core.pid, id: sb.id }));
      setInterval(() => {}, 1000);`], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, HUTCH_LINK_SPARES: '1' } });
    const got = await new Promise<{ spares: number[]; init: number; id: string }>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (d) => {
        out += d;
        if (out.includes('\n')) resolve(JSON.parse(out.split('\n')[0]!));
      });
      child.on('exit', (code) => reject(new Error(`child exited ${code}: ${out}`)));
    });
    expect(got.spares).toHaveLength(1);
    expect(alive(got.spares[0]!)).toBe(true);
    child.kill('SIGKILL');
    const deadline = Date.now() + 10_000;
    while ((alive(got.spares[0]!) || alive(got.init)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(alive(got.spares[0]!)).toBe(false);
    expect(alive(got.init)).toBe(false);
    // The dead process's sandbox (cgroup, records) is prune's once its init is reaped.
    while (existsSync(`/proc/${got.init}`) && Date.now() < deadline + 5000) await new Promise((r) => setTimeout(r, 50));
    const pruned = await pruneAll();
    if (cgroupDriver() instanceof NoCgroupDriver) expect(pruned.sandboxes).toContain(got.id);
    else expect(pruned.cgroups.join(' ')).toContain(got.id);
  });
});

async function freeTcpPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

describe.skipIf(skip !== undefined || outsideRoot)('network: userspace links as host root', () => {
  it('are never made ahead (each sandbox has its own id range): every link is cold', async () => {
    const a = await Sandbox.create({ image: 'host', network: { mode: 'bridge' } });
    const b = await Sandbox.create({ image: 'host', network: { mode: 'bridge' } });
    try {
      await linksMade();
      expect(linksNow()).toEqual([]);
      expect(pastaPid(attachmentOf(b))).not.toBe(pastaPid(attachmentOf(a)));
    } finally {
      await a.destroy();
      await b.destroy();
    }
  });
});
