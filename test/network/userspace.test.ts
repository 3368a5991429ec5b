import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import dgram from 'node:dgram';
import net from 'node:net';
import { networkInterfaces } from 'node:os';
import { Sandbox } from '../../lib/index.js';
import { hostMode } from '../../lib/host/mode.js';
import { pruneAll } from '../../lib/prune.js';
import { cgroupDriver } from '../../lib/cgroup/driver.js';
import { NoCgroupDriver } from '../../lib/cgroup/none.js';
import { attachNetwork, networkStateDir, pastaPid, resolveNetwork, settleNetwork, type NetworkAttachment, type NetworkOptions } from '../../lib/network/index.js';
import { insideRuleset, pastaArgs } from '../../lib/network/userspace.js';
import { findProgram } from '../../lib/network/userspace-options.js';
import { linksMade, linksNow } from '../../lib/network/linkpool.js';
import { alive, attachmentOf, inside } from '../helpers/userspace.js';
import { isRoot, needs } from '../helpers/require.js';
import { connectScript, freePort, sh } from '../helpers/netns.js';

// The userspace link (pasta) in every mode: as host root this file sets
// HUTCH_NETWORK_BACKEND=userspace itself (the backend is read at each resolve); as an
// ordinary user it is the default. Real sandboxes of the 'host' image (node, nft, tc inside).
// Traffic goes only to servers this test runs on the host's loopback or its own addresses,
// to the host ports it publishes, and (as root) to a netns "world" it makes behind a veth.
process.env.HUTCH_NETWORK_BACKEND ??= 'userspace';

const hasPasta = findProgram('pasta') !== null;
const skip = needs(hasPasta, 'the userspace network backend needs pasta: apt-get install passt');

/** A host address that is not loopback (the host's own address, reached through pasta's host side). */
const HOST_IP = Object.values(networkInterfaces())
  .flat()
  .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;

const bridge = (o: Omit<NetworkOptions, 'mode'> = {}): NetworkOptions => ({ mode: 'bridge', ...o });

async function listen(host: string, handler: (s: net.Socket) => void, port = 0): Promise<net.Server & { port: number }> {
  const srv = net.createServer(handler);
  await new Promise<void>((r) => srv.listen(port, host, () => r()));
  return Object.assign(srv, { port: (srv.address() as net.AddressInfo).port });
}

/** A host-side sink: counts what one connection sends, resolves with the steady rate in bits/s. */
function sink(host: string, port = 0): Promise<{ port: number; rate: Promise<number>; close: () => void }> {
  return new Promise((resolveSink) => {
    let resolveRate!: (n: number) => void;
    const rate = new Promise<number>((r) => (resolveRate = r));
    const srv = net.createServer((s) => {
      const samples: [number, number][] = [];
      let bytes = 0;
      s.on('data', (d) => {
        bytes += d.length;
        samples.push([performance.now(), bytes]);
      });
      s.on('end', () => {
        s.end();
        resolveRate(steady(samples));
      });
    });
    srv.listen(port, host, () => resolveSink({ port: (srv.address() as net.AddressInfo).port, rate, close: () => srv.close() }));
  });
}

/** Rate in bits/s over the samples after the first 0.4 s (the bucket's burst and slow start). */
function steady(samples: [number, number][]): number {
  const t0 = samples[0]![0];
  const from = samples.find((s) => s[0] >= t0 + 400) ?? samples[0]!;
  const last = samples[samples.length - 1]!;
  return ((last[1] - from[1]) * 8) / ((last[0] - from[0]) / 1000);
}

/** Node inside: sends `bytes` to host:port and closes. */
const sendScript = (host: string, port: number, bytes: number): string =>
  `const s=require('net').connect(${port},'${host}',()=>{const b=Buffer.alloc(65536);let left=${bytes};const w=()=>{while(left>0){left-=b.length;if(!s.write(b)){s.once('drain',w);return;}}s.end();};w();});s.on('data',()=>{});s.on('close',()=>console.log('sent'));s.on('error',e=>{console.log(e.code);process.exit(1)});`;

/** Node inside: downloads from host:port until EOF and prints the steady rate in bits/s (as `steady`). */
const receiveScript = (host: string, port: number): string =>
  `const smp=[];let n=0;const s=require('net').connect(${port},'${host}');s.on('data',d=>{n+=d.length;smp.push([performance.now(),n])});s.on('end',()=>{const t0=smp[0][0];const f=smp.find(x=>x[0]>=t0+400)||smp[0];const l=smp[smp.length-1];console.log(((l[1]-f[1])*8)/((l[0]-f[0])/1000))});s.on('error',e=>{console.log(e.code);process.exit(1)});`;

/** Waits until a spawned process inside printed `ready`. */
async function started(p: ReturnType<Sandbox['spawn']>): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    let out = '';
    p.stdout.on('data', (d: Buffer) => {
      out += d;
      if (out.includes('ready')) resolve();
    });
    p.result.then((r) => reject(new Error(`server inside ended: ${r.stderr}`)), reject);
  });
}

describe.skipIf(skip !== undefined)('network: the userspace link (pasta)', () => {
  const made: Sandbox[] = [];
  const stateDir = networkStateDir();
  /** Sandbox ids named by files of the network state dir (other files' root-mode sandboxes may have theirs). */
  const stateIds = (): string[] =>
    (existsSync(stateDir) ? readdirSync(stateDir) : []).flatMap((f) => {
      try {
        return [String((JSON.parse(readFileSync(`${stateDir}/${f}`, 'utf8')) as { id?: unknown }).id)];
      } catch {
        return [f];
      }
    });

  afterAll(async () => {
    for (const sb of made) await sb.destroy().catch(() => {});
    await Sandbox.settle().catch(() => {});
  });

  async function create(network: NetworkOptions | 'none', extra: Record<string, unknown> = {}): Promise<Sandbox> {
    const sb = await Sandbox.create({ image: 'host', network, ...extra });
    made.push(sb);
    return sb;
  }

  it('validates: egress by name, NET_ADMIN, an unknown backend and a missing pasta are HutchErrors naming the fix', async () => {
    expect(() => resolveNetwork(bridge({ outbound: 'nat', domains: ['pypi.org'] }))).toThrow(/EUNSUPPORTED|egress by name.*host root/);
    try {
      resolveNetwork(bridge({ outbound: 'nat', domains: ['pypi.org'] }));
    } catch (e) {
      expect((e as { code: string }).code).toBe('EUNSUPPORTED');
    }
    await expect(Sandbox.create({ image: 'host', network: bridge(), capabilities: ['NET_ADMIN'] })).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/NET_ADMIN.*drop NET_ADMIN/) });
    expect(() => resolveNetwork(bridge(), 'network', { ...process.env, HUTCH_NETWORK_BACKEND: 'slirp' })).toThrow(/HUTCH_NETWORK_BACKEND.*'userspace' or 'veth'/);
    let missing: unknown;
    try {
      resolveNetwork(bridge(), 'network', { ...process.env, PATH: '/nonexistent' });
    } catch (e) {
      missing = e;
    }
    expect(missing).toMatchObject({ code: 'EUNSUPPORTED', message: expect.stringContaining('apt-get install passt') });
    expect(() => resolveNetwork(bridge({ ports: [{ host: 45353, sandbox: 53, protocol: 'udp' }] }))).toThrow(/EUNSUPPORTED|sandbox: 45353/);
  });

  it('builds pasta arguments that never forward by default and a filter that ends in a refusal', () => {
    const plan = resolveNetwork(bridge({ ports: [], hostPorts: [5432] }));
    if (plan.mode !== 'bridge') throw new Error('bridge');
    expect(plan.backend).toBe('userspace');
    const args = pastaArgs(plan, false);
    for (const [flag, value] of [['--tcp-ports', 'none'], ['--udp-ports', 'none'], ['--tcp-ns', 'none'], ['--udp-ns', 'none']]) {
      expect(args[args.indexOf(flag!) + 1]).toBe(value);
    }
    const rules = insideRuleset({ hostAddress: '10.200.0.1', outbound: 'none', allow: null, hostPorts: plan.hostPorts, closed: [] });
    expect(rules).toContain('ip daddr 10.200.0.1 tcp dport { 5432 } accept');
    expect(rules.trim().split('\n').pop()).toBe('add rule inet hutch out reject with icmpx admin-prohibited');
  });

  it('gives the sandbox eth0 with its address and a default route; destroy leaves no pasta and no state file', async () => {
    const sb = await create(bridge());
    const a = attachmentOf(sb);
    const pasta = pastaPid(a)!;
    expect(pasta).toBeGreaterThan(0);
    expect(alive(pasta)).toBe(true);
    expect(sb.network).toEqual({ address: '10.200.0.2', hostAddress: '10.200.0.1', interface: 'eth0' });
    const r = await sb.exec('ip -o -4 addr show dev eth0; ip route', { encoding: 'utf8' });
    expect(r.stdout).toContain('10.200.0.2/30');
    expect(r.stdout).toContain('default via 10.200.0.1 dev eth0');
    await sb.destroy();
    await settleNetwork();
    expect(alive(pasta)).toBe(false);
    expect(stateIds()).not.toContain(sb.id);
  });

  it('reaches a host loopback server only on hostPorts; the host and its other addresses are refused at once', async () => {
    const srv = await listen('127.0.0.1', (s) => s.end('from-host'));
    const other = await listen('127.0.0.1', (s) => s.end('closed'));
    try {
      const sb = await create(bridge({ hostPorts: [srv.port] }));
      expect(await inside(sb, connectScript('10.200.0.1', srv.port))).toBe('ok from-host');
      expect(await inside(sb, connectScript('10.200.0.1', other.port))).toBe('ECONNREFUSED');
      // outbound 'none': nothing beyond the host side either.
      expect(await inside(sb, connectScript('203.0.113.1', 80))).toBe('ECONNREFUSED');
      // The host's loopback stays the sandbox's own loopback.
      expect(await inside(sb, connectScript('127.0.0.1', srv.port))).toBe('ECONNREFUSED');
      if (HOST_IP) {
        const own = await listen(HOST_IP, (s) => s.end('own'));
        expect(await inside(sb, connectScript(HOST_IP, own.port))).toBe('ECONNREFUSED');
        own.close();
      }
    } finally {
      srv.close();
      other.close();
    }
  });

  it("outbound 'nat' never opens the host's own addresses, allow or not", async () => {
    const sb = await create(bridge({ outbound: 'nat' }));
    const srv = await listen('0.0.0.0', (s) => s.end('host'));
    try {
      for (const addr of ['10.200.0.1', '127.0.0.1', '0.0.0.0', ...(HOST_IP ? [HOST_IP] : [])]) {
        expect(await inside(sb, connectScript(addr, srv.port)), addr).toBe('ECONNREFUSED');
      }
    } finally {
      srv.close();
    }
  });

  it("publishes a port on the host's loopback (another host address is refused at once: this pasta cannot finish that handshake)", async () => {
    const port = await freePort();
    const sb = await create(bridge({ ports: [{ host: port, sandbox: 8080 }] }));
    const server = sb.spawn(['node', '-e', "require('net').createServer(s=>s.end('inside')).listen(8080,'0.0.0.0',()=>console.log('ready'))"]);
    await started(server);
    const get = (host: string): Promise<string> =>
      new Promise((resolve) => {
        const s = net.connect(port, host);
        let d = '';
        s.on('data', (x) => (d += x));
        s.on('end', () => resolve(d));
        s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
      });
    expect(await get('127.0.0.1')).toBe('inside');
    if (HOST_IP) expect(await get(HOST_IP)).toBe('ECONNREFUSED');
    server.kill('SIGKILL');
  });

  it('carries UDP both ways: a hostPorts UDP port of the host loopback, and a published UDP port', async () => {
    const host = dgram.createSocket('udp4');
    host.on('message', (m, r) => host.send(`pong:${m}`, r.port, r.address));
    await new Promise<void>((r) => host.bind(0, '127.0.0.1', () => r()));
    const hostPort = host.address().port;
    const published = await freePort();
    try {
      // The same number both sides: a translated UDP port is refused with this backend (see 'validates').
      const sb = await create(bridge({ hostPorts: [{ port: hostPort, protocol: 'udp' }], ports: [{ host: published, sandbox: published, protocol: 'udp' }] }));
      const ask = (port: number, addr: string): string =>
        `const s=require('dgram').createSocket('udp4');s.on('message',m=>{console.log(String(m));process.exit(0)});s.send('ping',${port},'${addr}');setTimeout(()=>{console.log('timeout');process.exit(0)},3000)`;
      expect(await inside(sb, ask(hostPort, '10.200.0.1'))).toBe('pong:ping');
      const echo = sb.spawn(['node', '-e', `const s=require('dgram').createSocket('udp4');s.on('message',(m,r)=>s.send('inside:'+m,r.port,r.address));s.bind(${published},'0.0.0.0',()=>console.log('ready'))`]);
      await started(echo);
      const client = dgram.createSocket('udp4');
      const answer = await new Promise<string>((resolve) => {
        const t = setTimeout(() => resolve('timeout'), 3000);
        client.on('message', (m) => {
          clearTimeout(t);
          resolve(String(m));
        });
        client.send('hi', published, '127.0.0.1');
      });
      client.close();
      echo.kill('SIGKILL');
      expect(answer).toBe('inside:hi');
    } finally {
      host.close();
    }
  });

  it('the sandbox, root inside, cannot remove its filter or its qdiscs', async () => {
    const srv = await listen('127.0.0.1', (s) => s.end('x'));
    try {
      const sb = await create(bridge({ egress: '10mbit', ingress: '10mbit' }));
      const r = await sb.exec('id -u; nft flush ruleset; echo nft=$?; nft delete table inet hutch; echo nft2=$?; tc qdisc del dev eth0 root; echo tc=$?; tc qdisc del dev eth0 ingress; echo tc2=$?; ip link del ifb0; echo ip=$?', {
        encoding: 'utf8',
      });
      expect(r.stdout).toMatch(/^0\n/);
      for (const k of ['nft', 'nft2', 'tc', 'tc2', 'ip']) expect(r.stdout, String(r.stdout) + String(r.stderr)).not.toContain(`${k}=0`);
      expect(r.stderr).toMatch(/Operation not permitted/);
      // Still in force: the host side refused, both qdiscs there.
      expect(await inside(sb, connectScript('10.200.0.1', srv.port))).toBe('ECONNREFUSED');
      const q = await sb.exec('tc qdisc show', { encoding: 'utf8' });
      expect(q.stdout).toMatch(/qdisc tbf 1: dev eth0 root .*rate 10Mbit/);
      expect(q.stdout).toMatch(/qdisc tbf 1: dev ifb0 root .*rate 10Mbit/);
    } finally {
      srv.close();
    }
  });

  it('shapes both ways to the set rate (±25%, 8 Mbit/s, 2 MiB each way), on a cold link and on one made ahead', async () => {
    const RATE = 8e6;
    const BYTES = 2 * 1024 * 1024;
    // Outside host root the second sandbox of a plan takes the link made ahead after the first
    // (lib/network/linkpool.ts): its shaping was set before the sandbox existed.
    let ports: number[] | undefined;
    for (const ahead of hostMode() === 'root' ? [false] : [false, true]) {
      // The second round listens on the first round's ports: the same plan, so it takes the spare.
      const out = await sink('127.0.0.1', ports?.[0]);
      // ingress: a host server that sends BYTES to whoever connects (the sandbox downloads).
      const source = await listen('127.0.0.1', (s) => {
        const b = Buffer.alloc(65536);
        let left = BYTES;
        const w = (): void => {
          while (left > 0) {
            left -= b.length;
            if (!s.write(b)) {
              s.once('drain', w);
              return;
            }
          }
          s.end();
        };
        w();
      }, ports?.[1]);
      ports ??= [out.port, source.port];
      try {
        if (ahead) await linksMade();
        // Spares of this file's earlier plans may be there too: this one's is among them.
        const spares = linksNow().map((l) => l.pasta);
        const sb = await create(bridge({ egress: '8mbit', ingress: '8mbit', hostPorts: ports }));
        if (ahead) expect(spares).toContain(pastaPid(attachmentOf(sb)));
        // egress: the sandbox sends to the host's sink through the host side.
        expect(await inside(sb, sendScript('10.200.0.1', ports[0]!, BYTES))).toBe('sent');
        const egress = await out.rate;
        const ingress = Number(await inside(sb, receiveScript('10.200.0.1', ports[1]!)));
        const what = ahead ? 'made ahead' : 'cold';
        expect(egress / RATE, `${what}: egress ${(egress / 1e6).toFixed(2)} Mbit/s`).toBeGreaterThan(0.75);
        expect(egress / RATE, `${what}: egress ${(egress / 1e6).toFixed(2)} Mbit/s`).toBeLessThan(1.25);
        expect(ingress / RATE, `${what}: ingress ${(ingress / 1e6).toFixed(2)} Mbit/s`).toBeGreaterThan(0.75);
        expect(ingress / RATE, `${what}: ingress ${(ingress / 1e6).toFixed(2)} Mbit/s`).toBeLessThan(1.25);
      } finally {
        out.close();
        source.close();
      }
    }
  });

  it('a pasta that fails (its host port taken after validation) is an ESETUP with its reason, and leaves no process', async () => {
    const port = await freePort();
    const plan = resolveNetwork(bridge({ ports: [{ host: port, sandbox: 80 }] }));
    const squatter = await new Promise<net.Server>((r) => {
      const srv = net.createServer().listen(port, '127.0.0.1', () => r(srv));
    });
    const sb = await create('none');
    try {
      await expect(attachNetwork(plan, 'taken', (sb as unknown as { core: { pid: number } }).core.pid)).rejects.toMatchObject({ code: 'ESETUP', step: 'network', message: expect.stringMatching(/pasta/) });
      const pastas = readdirSync('/proc')
        .filter((d) => /^\d+$/.test(d))
        .filter((d) => {
          try {
            return readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(`127.0.0.1/${port}:80`);
          } catch {
            return false;
          }
        });
      expect(pastas).toEqual([]);
    } finally {
      squatter.close();
    }
  });

  it('leaves no pasta when the owning process is killed (PR_SET_PDEATHSIG)', async () => {
    const script = `
      import { Sandbox } from ${JSON.stringify(new URL('../../dist/lib/index.js', import.meta.url).href)};
      import { pastaPid } from ${JSON.stringify(new URL('../../dist/lib/network/index.js', import.meta.url).href)};
      const sb = await Sandbox.create({ image: 'host', network: { mode: 'bridge', outbound: 'nat' } });
      console.log(JSON.stringify({ pasta: pastaPid(sb.core.attachment), init: sb.core.pid, id: sb.id }));
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, HUTCH_NETWORK_BACKEND: 'userspace' } });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const pids = await new Promise<{ pasta: number; init: number; id: string }>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d) => {
        out += d;
        if (out.includes('\n')) resolve(JSON.parse(out.split('\n')[0]!));
      });
      child.on('close', (code) => reject(new Error(`child ended (${code}): ${err}`)));
    });
    expect(alive(pids.pasta)).toBe(true);
    child.kill('SIGKILL');
    const deadline = Date.now() + 5000;
    while ((alive(pids.pasta) || alive(pids.init)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(alive(pids.pasta)).toBe(false);
    expect(alive(pids.init)).toBe(false);
    expect(stateIds()).not.toContain(pids.id);
    // The dead process's cgroup and records are prune's, once its init is reaped (a zombie still
    // holds the cgroup). The default grace: its sandbox is named by a record of a dead owner,
    // and a cgroup another live process is creating meanwhile stays untouched.
    while (existsSync(`/proc/${pids.init}`) && Date.now() < deadline + 5000) await new Promise((r) => setTimeout(r, 50));
    const pruned = await pruneAll();
    // Without a cgroup for sandboxes (a pod on a cgroup v1 node) there is none to remove: its record goes.
    if (cgroupDriver() instanceof NoCgroupDriver) expect(pruned.sandboxes).toContain(pids.id);
    else expect(pruned.cgroups.join(' ')).toContain(pids.id);
  });

  describe.runIf(isRoot && hostMode() === 'root')("outbound 'nat' with allow, to a world this test makes (root: a netns behind a veth)", () => {
    const WORLD = `hutch-nu-${process.pid}`;
    const LINK = `hnu${process.pid % 100000}`;
    beforeAll(() => {
      sh(`ip netns add ${WORLD}`);
      sh(`ip link add ${LINK} type veth peer name eth0 netns ${WORLD}`);
      sh(`ip addr add 198.18.0.1/30 dev ${LINK} && ip link set ${LINK} up`);
      sh(`ip -n ${WORLD} addr add 198.18.0.2/30 dev eth0 && ip -n ${WORLD} link set eth0 up && ip -n ${WORLD} link set lo up`);
      sh(`ip -n ${WORLD} addr add 198.18.1.1/32 dev lo && ip -n ${WORLD} addr add 198.18.2.1/32 dev lo`);
      sh(`ip -n ${WORLD} route add default via 198.18.0.1`);
      sh(`ip route add 198.18.1.0/24 via 198.18.0.2 dev ${LINK} && ip route add 198.18.2.0/24 via 198.18.0.2 dev ${LINK}`);
    });
    afterAll(() => {
      try {
        sh(`ip netns del ${WORLD}`);
      } catch {}
      try {
        sh(`ip link del ${LINK} 2>/dev/null`);
      } catch {}
    });

    it('reaches an allowed address, refuses one outside the list at once, and setNetworkPolicy replaces the list', async () => {
      const server = spawn('ip', ['netns', 'exec', WORLD, process.execPath, '-e', "require('net').createServer(s=>s.end('world '+s.localAddress)).listen(7000,'0.0.0.0',()=>console.log('ready'))"], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        await new Promise<void>((r) => server.stdout.on('data', (d) => String(d).includes('ready') && r()));
        const sb = await create(bridge({ outbound: 'nat', allow: ['198.18.1.0/24'] }));
        expect(await inside(sb, connectScript('198.18.1.1', 7000))).toBe('ok world 198.18.1.1');
        expect(await inside(sb, connectScript('198.18.2.1', 7000))).toBe('ECONNREFUSED');
        await sb.setNetworkPolicy({ allow: ['198.18.2.0/24'] });
        expect(await inside(sb, connectScript('198.18.2.1', 7000))).toBe('ok world 198.18.2.1');
        expect(await inside(sb, connectScript('198.18.1.1', 7000))).toBe('ECONNREFUSED');
      } finally {
        server.kill('SIGKILL');
      }
    });
  });
});
