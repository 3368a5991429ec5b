import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { createInterface } from 'node:readline';
import dgram from 'node:dgram';
import net from 'node:net';
import { join } from 'node:path';
import { Sandbox } from '../../lib/index.js';
import { attachNetwork, releaseNetwork, resolveNetwork, settleNetwork, type NetworkAttachment, type NetworkOptions } from '../../lib/network/index.js';
import { needsRootWith } from '../helpers/require.js';
import { children, fakeSandbox, inNetns, kill, serveInNetns, sh } from '../helpers/netns.js';

// A sandbox's link must not open the host (Security issue, hole 10): connections from a
// sandbox to the host are refused at once except `hostPorts`, and hutch never turns on the
// host-wide forwarding switch. Traffic only to addresses of links and namespaces this test or
// hutch made, or loopback. The forwarding scenarios run in network namespaces made here
// (the "host" one runs hutch in a child process), so the flags read there are the test's.
const skip = needsRootWith('network tests', ['ip', 'nft', 'nsenter', 'unshare']);

const RANGE = '10.206.0.0/24';
const ROOT = join(import.meta.dirname, '..', '..');
const CHILD = join(ROOT, 'test', 'helpers', 'net-fwd-child.mjs');

const plan = (o: Omit<NetworkOptions, 'mode'> = {}) => resolveNetwork({ mode: 'bridge', range: RANGE, ...o });

/** Script: a TCP connection; prints `<code or 'ok ...'> <ms until it ended>`. */
function timedConnect(host: string, port: number): string {
  return `const t0=performance.now();const s=require('net').connect(${port},'${host}');let d='';
const t=setTimeout(()=>{console.log('timeout '+Math.round(performance.now()-t0));process.exit(0)},5000);
s.on('data',x=>d+=x);s.on('end',()=>{clearTimeout(t);console.log('ok:'+d+' '+Math.round(performance.now()-t0));process.exit(0)});
s.on('error',e=>{clearTimeout(t);console.log(e.code+' '+Math.round(performance.now()-t0));process.exit(0)});`;
}

/** Script: three UDP datagrams to host:port. */
function udpSend(host: string, port: number): string {
  return `const s=require('dgram').createSocket('udp4');let n=0;const go=()=>s.send('ping',${port},'${host}',()=>{if(++n<3)setTimeout(go,50);else setTimeout(()=>process.exit(0),200)});go();`;
}

function listen(server: net.Server, port: number, host: string): Promise<number> {
  return new Promise((resolve) => server.listen(port, host, () => resolve((server.address() as net.AddressInfo).port)));
}

describe.skipIf(skip !== undefined)('network: the host behind a sandbox link', () => {
  const toRelease: NetworkAttachment[] = [];
  const servers: (net.Server | dgram.Socket)[] = [];
  let accepted = 0;
  let v4Port = 0;
  let v6Port = 0;
  let udpPort = 0;
  let udpReceived = 0;

  beforeAll(async () => {
    // Host servers on every address, as a database or a dev server would listen.
    const onConn = (s: net.Socket) => {
      accepted++;
      s.end('host');
    };
    const v4 = net.createServer(onConn);
    const v6 = net.createServer(onConn);
    servers.push(v4, v6);
    v4Port = await listen(v4, 0, '0.0.0.0');
    v6Port = await listen(v6, 0, '::'); // dual-stack: IPv4 too
    const udp = dgram.createSocket('udp4');
    servers.push(udp);
    udp.on('message', () => udpReceived++);
    await new Promise<void>((r) => udp.bind(0, '0.0.0.0', () => r()));
    udpPort = udp.address().port;
  });

  afterAll(async () => {
    for (const a of toRelease) await releaseNetwork(a, { wait: true }).catch(() => {});
    await settleNetwork().catch(() => {});
    for (const c of children) c.kill('SIGKILL');
    for (const s of servers) s.close();
  });

  for (const outbound of ['none', 'nat'] as const) {
    it(`outbound '${outbound}': a host service on 0.0.0.0 or :: is refused at once and sees nothing`, async () => {
      const pid = await fakeSandbox();
      const a = (await attachNetwork(plan({ outbound }), `host-${outbound}`, pid))!;
      toRelease.push(a);
      const before = accepted;
      for (const port of [v4Port, v6Port]) {
        const [code, ms] = (await inNetns(pid, timedConnect(a.hostAddress, port))).split(' ');
        expect(code).toBe('ECONNREFUSED');
        // A reset, not a drop: the program learns at once (a drop would run into the 5 s timeout).
        expect(Number(ms)).toBeLessThan(1000);
      }
      const udpBefore = udpReceived;
      await inNetns(pid, udpSend(a.hostAddress, udpPort));
      // Sent on the host's loopback after the sandbox's datagrams: received in order, so once it is
      // in, theirs would be too.
      await new Promise<void>((r) => {
        const s = dgram.createSocket('udp4');
        s.send('mark', udpPort, '127.0.0.1', () => s.close(() => r()));
      });
      await new Promise((r) => setTimeout(r, 50));
      expect(udpReceived).toBe(udpBefore + 1);
      expect(accepted).toBe(before);
      // Links carry no IPv6 address on either side, so there is no IPv6 path to the host to open.
      expect(sh(`ip -o -6 addr show dev ${a.hostInterface}`).trim()).toBe('');
      expect(sh(`nsenter --net=/proc/${pid}/ns/net ip -o -6 addr show dev eth0`).trim()).toBe('');
      await releaseNetwork(a, { wait: true });
      kill(pid);
    });
  }

  it('hostPorts opens exactly the listed ports, on the link only', async () => {
    const pid = await fakeSandbox();
    const a = (await attachNetwork(plan({ hostPorts: [v4Port, { port: udpPort, protocol: 'udp' }] }), 'hostports', pid))!;
    toRelease.push(a);
    expect((await inNetns(pid, timedConnect(a.hostAddress, v4Port))).split(' ')[0]).toBe('ok:host');
    expect((await inNetns(pid, timedConnect(a.hostAddress, v6Port))).split(' ')[0]).toBe('ECONNREFUSED');
    const udpBefore = udpReceived;
    await inNetns(pid, udpSend(a.hostAddress, udpPort));
    await new Promise((r) => setTimeout(r, 100));
    expect(udpReceived).toBeGreaterThan(udpBefore);
    // Another sandbox does not get this one's ports, neither at its own host side nor at this one's.
    const pid2 = await fakeSandbox();
    const b = (await attachNetwork(plan({ outbound: 'nat' }), 'hostports-other', pid2))!;
    toRelease.push(b);
    expect((await inNetns(pid2, timedConnect(b.hostAddress, v4Port))).split(' ')[0]).toBe('ECONNREFUSED');
    expect((await inNetns(pid2, timedConnect(a.hostAddress, v4Port))).split(' ')[0]).toMatch(/ECONNREFUSED|timeout/);
    await Promise.all([releaseNetwork(a, { wait: true }), releaseNetwork(b, { wait: true })]);
    kill(pid);
    kill(pid2);
  });

  it('through Sandbox.create: the host side is refused, and reached with hostPorts', async () => {
    const http = net.createServer((s) => {
      accepted++;
      s.end('HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello');
    });
    servers.push(http);
    const port = await listen(http, 0, '0.0.0.0');
    // python3 from the host image; by address, the name checked in /etc/hosts apart.
    const get = (sb: Sandbox) => [
      'python3',
      '-c',
      `import socket
print(open('/etc/hosts').read().count('${sb.network!.hostAddress}\\thost.hutch.internal'), end=' ')
try:
    s = socket.create_connection(('${sb.network!.hostAddress}', ${port}), timeout=5)
    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
    print(s.recv(100).split(b'\\r\\n\\r\\n')[1].decode())
except OSError as e:
    print(type(e).__name__)`,
    ];
    const before = accepted;
    {
      await using sb = await Sandbox.create({ image: 'host', network: { mode: 'bridge', range: RANGE } });
      expect((await sb.exec(get(sb), { encoding: 'utf8' })).stdout).toBe('1 ConnectionRefusedError\n');
      expect(accepted).toBe(before);
    }
    {
      await using sb = await Sandbox.create({ image: 'host', network: { mode: 'bridge', range: RANGE, hostPorts: [port] } });
      expect((await sb.exec(get(sb), { encoding: 'utf8' })).stdout).toBe('1 hello\n');
      expect(accepted).toBe(before + 1);
    }
  });

  it('the host still reaches a sandbox, and its replies come back', async () => {
    const pid = await fakeSandbox();
    const a = (await attachNetwork(plan(), 'host-to-sandbox', pid))!;
    toRelease.push(a);
    const srv = await serveInNetns(pid, '0.0.0.0', 7300, 'inside');
    const reply = await new Promise<string>((resolve) => {
      const s = net.connect(7300, a.address);
      let d = '';
      s.on('data', (x) => (d += x));
      s.on('end', () => resolve(d));
      s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    });
    expect(reply).toBe('inside');
    srv.kill('SIGKILL');
    await releaseNetwork(a, { wait: true });
    kill(pid);
  });

  it('hostPorts is validated', () => {
    const bad: [unknown, RegExp][] = [
      ['80', /network\.hostPorts: expected an array/],
      [[0], /network\.hostPorts\[0\]: expected a port number from 1 to 65535/],
      [[70000], /network\.hostPorts\[0\]/],
      [[1.5], /network\.hostPorts\[0\]/],
      [[{ port: 53, protocol: 'icmp' }], /network\.hostPorts\[0\]\.protocol: expected 'tcp' or 'udp'/],
      [[{ prot: 53 }], /network\.hostPorts\[0\]\.prot: .*did you mean 'port'/],
      [[{ protocol: 'udp' }], /network\.hostPorts\[0\]\.port/],
      [[80, { port: 80 }], /network\.hostPorts\[1\]: .*tcp\/80 is also network\.hostPorts\[0\]/],
      ['x', /network\.hostPorts/],
    ];
    for (const [value, message] of bad) {
      expect(() => plan({ hostPorts: value as never }), JSON.stringify(value)).toThrow(message);
      try {
        plan({ hostPorts: value as never });
      } catch (e) {
        expect((e as { code?: string }).code).toBe('EINVAL');
      }
    }
    expect(() => resolveNetwork({ mode: 'none', hostPorts: [80] })).toThrow(/network\.hostPorts: expected mode 'bridge'/);
    const p = plan({ hostPorts: [80, { port: 53, protocol: 'udp' }, { port: 53 }] });
    expect(p.mode === 'bridge' && p.hostPorts).toEqual([
      { port: 80, protocol: 'tcp' },
      { port: 53, protocol: 'udp' },
      { port: 53, protocol: 'tcp' },
    ]);
  });
});

// ---- forwarding: per interface, guarded, restored (in namespaces made here) ----

const TAG = `hf${process.pid % 100000}`;
const HOST_NS = `hutch-test-${TAG}-host`;
const WORLD_NS = `hutch-test-${TAG}-world`;
const PEER_NS = `hutch-test-${TAG}-peer`;
const STATE_DIR = `/run/hutch/test-${TAG}`;
const WORLD_ADDR = '198.18.0.2';
const PEER_ADDR = '198.19.0.2';

interface Line {
  ev: string;
  [k: string]: unknown;
}

/** Runs net-fwd-child.mjs in the test's host netns; resolves with its events once it ends or `until` is seen. */
function child(mode: string, until?: string): { proc: ChildProcess; lines: Promise<Line[]> } {
  const proc = spawn('ip', ['netns', 'exec', HOST_NS, process.execPath, CHILD, mode, RANGE, WORLD_NS, WORLD_ADDR, PEER_ADDR], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, HUTCH_NET_DIR: STATE_DIR },
  });
  children.push(proc);
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  const lines = new Promise<Line[]>((resolve, reject) => {
    const got: Line[] = [];
    createInterface({ input: proc.stdout! }).on('line', (l) => {
      got.push(JSON.parse(l) as Line);
      if (until !== undefined && got.at(-1)!.ev === until) resolve(got);
    });
    proc.on('close', (code) => (code === 0 || until !== undefined && got.some((g) => g.ev === until) ? resolve(got) : reject(new Error(`net-fwd-child ${mode} exited ${code}: ${err}`))));
  });
  return { proc, lines };
}

type Flags = Record<string, string>;
const flagsOf = (l: Line | undefined) => l!.flags as Flags;

describe.skipIf(skip !== undefined)('network: forwarding without the host-wide switch', () => {
  beforeAll(async () => {
    // host <-up0-> world (the "internet"), host <-up1-> peer: two uplinks of a host that does not forward.
    for (const ns of [HOST_NS, WORLD_NS, PEER_NS]) sh(`ip netns add ${ns} && ip -n ${ns} link set lo up`);
    sh(`ip -n ${HOST_NS} link add up0 type veth peer name eth0 netns ${WORLD_NS}`);
    sh(`ip -n ${HOST_NS} link add up1 type veth peer name eth0 netns ${PEER_NS}`);
    sh(`ip -n ${HOST_NS} addr add 198.18.0.1/30 dev up0 && ip -n ${HOST_NS} link set up0 up`);
    sh(`ip -n ${HOST_NS} addr add 198.19.0.1/30 dev up1 && ip -n ${HOST_NS} link set up1 up`);
    sh(`ip -n ${WORLD_NS} addr add ${WORLD_ADDR}/30 dev eth0 && ip -n ${WORLD_NS} link set eth0 up && ip -n ${WORLD_NS} route add default via 198.18.0.1`);
    sh(`ip -n ${PEER_NS} addr add ${PEER_ADDR}/30 dev eth0 && ip -n ${PEER_NS} link set eth0 up && ip -n ${PEER_NS} route add default via 198.19.0.1`);
    // The test's own namespace starts from "this host does not forward", whatever the machine does.
    sh(`ip netns exec ${HOST_NS} sh -c 'echo 0 > /proc/sys/net/ipv4/ip_forward'`);
    mkdirSync(STATE_DIR, { recursive: true, mode: 0o700 });
    await serveInNetns(WORLD_NS, WORLD_ADDR, 7100, 'world');
    await serveInNetns(PEER_NS, PEER_ADDR, 7200, 'peer');
  });

  afterAll(() => {
    for (const c of children) c.kill('SIGKILL');
    for (const ns of [HOST_NS, WORLD_NS, PEER_NS]) {
      try {
        sh(`ip netns del ${ns}`);
      } catch {}
    }
    rmSync(STATE_DIR, { recursive: true, force: true });
  });

  it('a nat sandbox reaches the world; ip_forward is never set and the host forwards nothing else of its own', async () => {
    const lines = await child('life').lines;
    const before = flagsOf(lines.find((l) => l.ev === 'before'));
    const during = lines.find((l) => l.ev === 'during')!;
    const after = lines.find((l) => l.ev === 'after')!;
    expect(before.ip_forward).toBe('0');
    expect(before.up0).toBe('0');
    // NAT works: out by the sandbox's link, the replies in by up0.
    expect(during.sandboxToWorld).toBe('ok world');
    // The host-wide switch, `all` and `default` untouched; hutch's link and the uplinks carrying routes on.
    const f = flagsOf(during);
    expect([f.ip_forward, f.all, f.default, f.lo]).toEqual(['0', '0', '0', '0']);
    expect(f[during.host as string]).toBe('1');
    expect([f.up0, f.up1]).toEqual(['1', '1']);
    expect(during.records).toEqual(expect.arrayContaining(['forwarding.up0', 'forwarding.up1']));
    expect(during.guard).toMatch(/elements = \{[^}]*"up0"[^}]*\}/);
    // The host's own forwarding is as before: world -> peer crosses two uplinks whose flags are
    // on now, and is still not forwarded (the guard).
    expect(during.worldToPeer).toBe('timeout');
    // The last link gone: every flag as it was, no record, no guard.
    const a = flagsOf(after);
    expect(a).toEqual(before);
    expect(after.records).toEqual([]);
    expect(after.guard).not.toMatch(/up0|up1/);
    expect(after.worldToPeer).toBe('timeout');
  });

  it('nat sandboxes attached and released at once share the uplinks and restore them once', async () => {
    const [many] = await child('many').lines;
    expect(many!.reached).toEqual(['ok world', 'ok world', 'ok world', 'ok world']);
    expect(many!.after).toEqual(many!.before);
    expect(many!.records).toEqual([]);
  });

  it('after a SIGKILLed process with a nat sandbox, the next prune restores the flags and removes the rules', async () => {
    const held = child('hold', 'attached');
    const [att] = await held.lines;
    expect(att!.sandboxToWorld).toBe('ok world');
    expect(flagsOf(att).up0).toBe('1');
    held.proc.kill('SIGKILL');
    await new Promise((r) => held.proc.once('close', r));
    process.kill(att!.sandboxPid as number, 'SIGKILL');
    const [pruned] = await child('prune').lines;
    expect(pruned!.removed).toEqual([att!.slot]);
    expect(pruned!.restoredForwarding).toBe(true);
    const f = flagsOf(pruned);
    expect([f.ip_forward, f.all, f.default, f.up0, f.up1]).toEqual(['0', '0', '0', '0', '0']);
    expect(pruned!.table).toBe(false);
    expect(pruned!.files).toEqual([]);
  });
});
