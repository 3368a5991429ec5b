import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { Sandbox } from '../../lib/index.js';
import { pruneAll } from '../../lib/prune.js';
import type { EgressRequest } from '../../lib/network/policy.js';
import { abandonQueue, queueNumber } from '../../lib/network/nfqueue.js';
import { needsRootWith } from '../helpers/require.js';
import { shIn, useInet } from '../helpers/egress.js';
import { CrashChild, ROOT } from '../helpers/reliability.js';

// The name check of HTTP/TLS through the netfilter queue (lib/network/nfqueue.ts): first data
// segments held until the SNI/Host is read, decided, released or reset; one queue per hutch
// process; fail closed when the process is gone. Traffic only to the namespace this file
// makes (198.19.251-254.0/24, bench/inet.ts) and to what hutch makes on the link.
const skip = needsRootWith('egress queue tests', ['ip', 'nft', 'curl', 'python3', 'openssl']);
const RANGE = '10.216.0.0/24';
const CHILD = join(ROOT, 'test', 'helpers', 'egress-child.mjs');

function tables(): string[] {
  return execFileSync('nft', ['list', 'tables'], { encoding: 'utf8' }).split('\n').map((l) => l.trim()).filter((l) => /^table ip hutchq\d+$/.test(l));
}

function inetTable(): string {
  try {
    return execFileSync('nft', ['list', 'table', 'inet', 'hutch'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return '';
  }
}

/** A TLS ClientHello for `name` (Python's own), sent in two segments cut inside the name, a pause between; prints what came back. */
const splitHello = (name: string, address: string) => `python3 -c "
import socket, ssl, time
c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
i, o = ssl.MemoryBIO(), ssl.MemoryBIO(); t = c.wrap_bio(i, o, server_hostname='${name}')
try: t.do_handshake()
except ssl.SSLWantReadError: pass
h = o.read(); k = h.find(b'${name}') + 3
try:
    s = socket.create_connection(('${address}', 443), timeout=10); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(h[:k]); time.sleep(0.4); s.sendall(h[k:]); d = s.recv(5); print('record', d[0] if d else 'eof')
except ConnectionResetError: print('reset')
except OSError as e: print(type(e).__name__)
"`;

/** An HTTP request whose Host header is cut in two segments, a pause between; prints the status line or what failed. */
const splitHost = (host: string, address: string, port = 80) => `python3 -c "
import socket, time
r = b'GET / HTTP/1.1\\r\\nHost: ${host}\\r\\nConnection: close\\r\\n\\r\\n'; k = r.find(b'Host: ') + 8
try:
    s = socket.create_connection(('${address}', ${port}), timeout=10); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(r[:k]); time.sleep(0.4); s.sendall(r[k:]); d = s.recv(100); print('read', d.split(b'\\r\\n')[0].decode() if d else 'eof')
except ConnectionResetError: print('reset')
except OSError as e: print(type(e).__name__)
"`;

describe.skipIf(skip !== undefined)('egress: the name check through the netfilter queue', () => {
  const world = useInet(() => 251 + (process.pid % 4), RANGE);
  const net = world.net;
  const sh = (sb: Sandbox, cmd: string) => shIn(sb, cmd, 40_000);
  // A server on a third address of the internet that reports every byte it receives: what
  // would have gone through unchecked.
  let raw: ChildProcess | undefined;
  const rawSeen: string[] = [];
  let rawAddress = '';
  beforeAll(async () => {
    rawAddress = world.inet.a.replace(/\.11$/, '.13');
    execFileSync('ip', ['-n', world.inet.ns, 'addr', 'add', `${rawAddress}/24`, 'dev', 'eth0']);
    // TCP Fast Open on the internet's side, for every listener made from now on (0x400) with
    // cookies (0x2): a client that has a cookie sends its first bytes in the SYN.
    execFileSync('ip', ['netns', 'exec', world.inet.ns, 'sysctl', '-qw', 'net.ipv4.tcp_fastopen=1027']);
    raw = spawn('ip', ['netns', 'exec', world.inet.ns, process.execPath, '-e', `
      require('net').createServer((s) => {
        let got = '';
        s.on('data', (d) => { console.log(JSON.stringify(d.toString('latin1'))); got += d.toString('latin1'); if (got.includes('\\r\\n\\r\\n')) s.end('HTTP/1.1 204 No Content\\r\\n\\r\\n'); });
        s.on('error', () => {});
      })
        .listen(80, '${rawAddress}', () => console.log('"ready"'));`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => {
      let buf = '';
      raw!.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const l = JSON.parse(buf.slice(0, i)) as string;
          buf = buf.slice(i + 1);
          if (l === 'ready') resolve();
          else rawSeen.push(l);
        }
      });
    });
  });
  afterAll(() => {
    raw?.kill('SIGKILL');
  });

  it('a ClientHello or an HTTP head split over two segments is decided on the whole name; a new connection on the same ports is decided again', async () => {
    const sb = await Sandbox.create({ network: net({ domains: ['ok.example', 'raw.example'], dns: { servers: [world.inet.dns], hosts: { 'raw.example': rawAddress } } }) });
    try {
      const a = world.inet.a;
      expect((await sh(sb, 'getent hosts ok.example | cut -d" " -f1')).stdout.trim()).toBe(a); // admits its address
      const r = await sh(sb, [splitHello('ok.example', a), splitHello('shared.example', a), splitHost('ok.example', a), splitHost('shared.example', a)].join('; '));
      // 22: the server's handshake record; the refused ones are reset once the name is whole, never a timeout.
      expect(r.stdout).toBe('record 22\nreset\nread HTTP/1.1 200 OK\nreset\n');
      expect(r.violations).toContainEqual(expect.objectContaining({ host: 'shared.example', address: a, port: 443, protocol: 'tcp', reason: 'not allowed' }));
      expect(r.violations).toContainEqual(expect.objectContaining({ host: 'shared.example', address: a, port: 80, protocol: 'tcp', reason: 'not allowed' }));
      expect(world.inet.seen.filter((l) => l.includes('shared.example'))).toEqual([]);
      // Nothing of a refused connection reached the server, not even its first segment.
      expect((await sh(sb, 'getent hosts raw.example | cut -d" " -f1')).stdout.trim()).toBe(rawAddress);
      const n0 = rawSeen.length;
      const head = await sh(sb, `${splitHost('nope.example', rawAddress)}; ${splitHost('raw.example', rawAddress)}`);
      expect(head.stdout).toBe('reset\nread HTTP/1.1 204 No Content\n');
      expect(rawSeen.slice(n0).join('')).toBe('GET / HTTP/1.1\r\nHost: raw.example\r\nConnection: close\r\n\r\n');
      // A new connection on the ports of one just allowed (reset, then the same source port at
      // once) is checked again: the earlier answer does not carry over.
      const n1 = rawSeen.length;
      const reuse = await sh(sb, `python3 -c "
import socket, struct
def get(host):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.settimeout(10); s.bind(('', 40123))
    try:
        s.connect(('${rawAddress}', 80)); s.sendall(('GET / HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' % host).encode())
        d = s.recv(100); print(host, d.split(b'\\r\\n')[0].decode() if d else 'eof')
    except OSError as e: print(host, type(e).__name__)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); s.close()
get('raw.example'); get('evil.example'); get('raw.example')
"`);
      expect(reuse.stdout).toBe('raw.example HTTP/1.1 204 No Content\nevil.example ConnectionResetError\nraw.example HTTP/1.1 204 No Content\n');
      expect(rawSeen.slice(n1).join('')).not.toContain('evil');
    } finally {
      await sb.destroy();
    }
  });

  it('data in a SYN (TCP Fast Open) never reaches the server before its name is decided', async () => {
    const sb = await Sandbox.create({ network: net({ domains: ['raw.example'], dns: { servers: [world.inet.dns], hosts: { 'raw.example': rawAddress, 'evil.example': rawAddress } } }) });
    try {
      expect((await sh(sb, 'getent hosts raw.example | cut -d" " -f1')).stdout.trim()).toBe(rawAddress);
      const n0 = rawSeen.length;
      // Each request sent with MSG_FASTOPEN: the first connection fetches the cookie (its data
      // follows the handshake), later ones carry their request in the SYN.
      const r = await sh(sb, `python3 -c "
import socket
def get(host):
    s = socket.socket()
    try:
        s.sendto(('GET / HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' % host).encode(), socket.MSG_FASTOPEN, ('${rawAddress}', 80)); s.settimeout(10)
        d = s.recv(100); print(host, d.split(b'\\r\\n')[0].decode() if d else 'eof')
    except OSError as e: print(host, type(e).__name__)
get('raw.example'); get('evil.example'); get('raw.example'); get('evil.example')
"; awk '/^TcpExt:/ { if (!h) { split($0, n); h = 1 } else { for (i = 2; i <= NF; i++) if (n[i] == "TCPFastOpenActiveFail") print "fail", $i } }' /proc/net/netstat`);
      const lines = r.stdout.trim().split('\n');
      expect(lines.slice(0, 4)).toEqual(['raw.example HTTP/1.1 204 No Content', 'evil.example ConnectionResetError', 'raw.example HTTP/1.1 204 No Content', 'evil.example ConnectionResetError']);
      // The client did send data in a SYN (a cookie was cached), and that SYN was never answered.
      expect(Number(lines[4]!.split(' ')[1])).toBeGreaterThan(0);
      expect(rawSeen.slice(n0).join('')).not.toContain('evil');
      expect(r.violations.filter((v) => v.host === 'evil.example')).toHaveLength(2);
    } finally {
      await sb.destroy();
    }
  });

  it('a refused name on a shared address is reset at once, with a violation; ask on a name holds the segments (retransmitted meanwhile) until the answer', async () => {
    const asked: EgressRequest[] = [];
    const sb = await Sandbox.create({
      network: net({
        domains: ['ok.example'],
        dns: { servers: [world.inet.dns], hosts: { 'raw.example': rawAddress } },
        ask: async (req: EgressRequest) => {
          asked.push(req);
          await new Promise((res) => setTimeout(res, 1500)); // past a few retransmissions of the held segment
          return req.host === 'sub.ok.example' || req.host === 'raw.example' ? true : { allow: false as const, reason: 'not today' };
        },
      }),
    });
    try {
      const a = world.inet.a;
      // raw.example resolves through ask (DNS), then its Host is allowed on its own address.
      const dns = await sh(sb, 'getent hosts raw.example | cut -d" " -f1');
      expect(dns.stdout.trim()).toBe(rawAddress);
      const ok = await sh(sb, `${splitHost('raw.example', rawAddress)}`);
      expect(ok.stdout).toBe('read HTTP/1.1 204 No Content\n');
      expect((await sh(sb, 'getent hosts ok.example | cut -d" " -f1')).stdout.trim()).toBe(a);
      // The SNI names a name no rule decides: asked (no DNS for it), the segments held meanwhile.
      const sub = await sh(sb, `curl -sSk --max-time 20 --resolve sub.ok.example:443:${a} https://sub.ok.example/`);
      expect(sub.stdout).toBe(`tls hello from ${a}\n`);
      expect(asked).toContainEqual({ host: 'sub.ok.example', address: a, port: 443, protocol: 'tcp' });
      const no = await sh(sb, `curl -sS --max-time 20 -H 'Host: later.example' http://ok.example/; echo "exit $?"`);
      expect(no.stdout).toMatch(/exit (52|56)\n$/);
      expect(no.violations).toContainEqual(expect.objectContaining({ host: 'later.example', address: a, port: 80, reason: 'not today' }));
      // Refused by the lists: reset at once (python sees ConnectionResetError, not a timeout).
      const shared = await sh(sb, `curl -sS --max-time 20 --resolve shared.example:80:${a} http://shared.example/; echo "exit $?"`);
      expect(shared.stdout).toMatch(/exit (52|56)\n$/);
      expect(shared.violations).toContainEqual(expect.objectContaining({ host: 'shared.example', address: a, port: 80, protocol: 'tcp' }));
      expect(world.inet.seen.filter((l) => /later|shared/.test(l))).toEqual([]);
    } finally {
      await sb.destroy();
    }
  });

  it('two hutch processes at once each read their own queue', async () => {
    const sb = await Sandbox.create({ network: net({ domains: ['ok.example'] }) });
    const a = world.inet.a;
    const child = new CrashChild(JSON.stringify(net({ domains: ['ok.example'] })), { ...process.env }, undefined, CHILD, [
      JSON.stringify([{ cmd: `curl -sS --max-time 10 http://ok.example/; curl -sSk --max-time 10 --resolve shared.example:443:${a} https://shared.example/; echo "exit $?"` }]),
    ]);
    try {
      const mine = queueNumber();
      expect(mine).not.toBeNull();
      const [done] = await Promise.all([child.wait((e) => e.ev === 'mark', 60_000), sh(sb, `curl -sS --max-time 10 http://ok.example/`)]);
      expect(done).toBeTruthy();
      const out = child.events.find((e) => e.ev === 'exec') as unknown as { stdout: string };
      expect(out.stdout).toMatch(new RegExp(`^hello from ${a.replace(/\./g, '\\.')}\nexit (35|56)\n$`));
      expect(child.events).toContainEqual(expect.objectContaining({ ev: 'violation', v: expect.objectContaining({ host: 'shared.example', port: 443 }) }));
      // Two tables, one per process, each sending to its own queue.
      const theirs = (child.events.find((e) => e.ev === 'sandbox') as unknown as { queue: number }).queue;
      expect(theirs).not.toBe(mine);
      const t = tables();
      expect(t).toContain(`table ip hutchq${mine}`);
      expect(t).toContain(`table ip hutchq${theirs}`);
      // And this process's sandbox still checks names while the other runs.
      const r = await sh(sb, `curl -sSk --max-time 10 --resolve shared.example:443:${a} https://shared.example/; echo "exit $?"`);
      expect(r.stdout).toMatch(/exit (35|56)\n$/);
      expect(r.violations).toContainEqual(expect.objectContaining({ host: 'shared.example', port: 443 }));
    } finally {
      child.proc.stdin!.end();
      await child.exited;
      await sb.destroy();
    }
  });

  it('fail closed: with the queue gone, nothing goes on unchecked; a SIGKILLed owner leaves nothing after prune', async () => {
    // This process's queue closed under a live sandbox (what the kernel does when the process dies).
    const sb = await Sandbox.create({ network: net({ domains: ['raw.example'], dns: { servers: [world.inet.dns], hosts: { 'raw.example': rawAddress } } }) });
    try {
      expect((await sh(sb, 'getent hosts raw.example | cut -d" " -f1')).stdout.trim()).toBe(rawAddress);
      const q = queueNumber();
      abandonQueue();
      expect(tables()).not.toContain(`table ip hutchq${q}`);
      const n0 = rawSeen.length;
      const r = await sh(sb, `${splitHost('raw.example', rawAddress)}; curl -sS --max-time 10 http://raw.example/; echo "exit $?"`);
      expect(r.stdout).toMatch(/^ConnectionRefusedError\nexit 7\n$/); // the SYN is reset at once
      expect(rawSeen.length).toBe(n0);
    } finally {
      await sb.destroy();
    }
    const before = rawSeen.length;
    // Another process holds a connection whose head is incomplete (held in its queue), and is SIGKILLed.
    const netOpts = net({ domains: ['raw.example'], dns: { servers: [world.inet.dns], hosts: { 'raw.example': rawAddress } } });
    const child = new CrashChild(JSON.stringify(netOpts), { ...process.env }, undefined, CHILD, [
      JSON.stringify([
        {
          background: true,
          cmd: `python3 -c "
import socket, time
s = socket.create_connection(('raw.example', 80), timeout=10); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(b'GET / HTTP/1.1\\r\\nHo'); open('/tmp/sent', 'w').close()
for i in range(50): time.sleep(0.1); s.sendall(b'x')
"`,
        },
        { cmd: 'for i in $(seq 200); do [ -e /tmp/sent ] && break; sleep 0.05; done; ls /tmp/sent' },
      ]),
    ]);
    let slot = '';
    let theirs: string[] = [];
    try {
      const sbEv = (await child.wait((e) => e.ev === 'sandbox', 60_000)) as unknown as { address: string; queue: number };
      slot = sbEv.address.split('.').map((o, i) => (Number(o) & (i === 3 ? 0xfc : 0xff)).toString(16).padStart(2, '0')).join('');
      await child.wait((e) => e.ev === 'mark', 60_000);
      theirs = [`table ip hutchq${sbEv.queue}`];
      expect(tables()).toContain(theirs[0]);
      await new Promise((res) => setTimeout(res, 300)); // a few more held segments
    } finally {
      child.proc.kill('SIGKILL');
      await child.exited;
    }
    await new Promise((res) => setTimeout(res, 1500)); // its sandbox dies meanwhile (PDEATHSIG)
    expect(rawSeen.length).toBe(before); // not one byte of the held connection went through
    for (const t of theirs) expect(tables()).not.toContain(t); // the kernel deleted its table with its socket
    await pruneAll();
    expect(inetTable()).not.toContain(slot);
    expect(execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' })).not.toContain(`hx${slot}`);
  });

  it("the sandbox's packet marks never reach the host: cleared crossing the veth, and SO_MARK is refused inside", async () => {
    const sb = await Sandbox.create({ network: net({ domains: ['ok.example'] }) });
    try {
      const r = await sh(sb, `python3 -c "
import socket
s = socket.socket()
try: s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x48530003); print('set')
except OSError as e: print(type(e).__name__)"`);
      expect(r.stdout).toBe('PermissionError\n');
    } finally {
      await sb.destroy();
    }
    // Root in a namespace of its own marks every packet it sends; the host side sees mark 0.
    const ns = `hutch-mark-${process.pid}`;
    const link = `hm${process.pid % 100000}`;
    const table = `hutchmark${process.pid}`;
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      execFileSync('sh', ['-c', `ip link add ${link} type veth peer name eth0 netns ${ns} && ip addr add 10.216.255.1/30 dev ${link} && ip link set ${link} up &&
        ip -n ${ns} addr add 10.216.255.2/30 dev eth0 && ip -n ${ns} link set eth0 up &&
        ip netns exec ${ns} nft 'add table ip m; add chain ip m o { type filter hook output priority 0; }; add rule ip m o meta mark set 0x48530003; add rule ip m o meta mark 0x48530003 counter'`]);
      execFileSync('nft', [`add table ip ${table}; add chain ip ${table} p { type filter hook prerouting priority -400; }; add rule ip ${table} p iifname "${link}" meta mark 0x48530003 counter; add rule ip ${table} p iifname "${link}" meta mark 0 counter`]);
      execFileSync('ip', ['netns', 'exec', ns, 'python3', '-c', "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor i in range(3): s.sendto(b'x', ('10.216.255.1', 9)); time.sleep(0.1)"]);
      await new Promise((res) => setTimeout(res, 200));
      const inside = execFileSync('ip', ['netns', 'exec', ns, 'nft', 'list', 'chain', 'ip', 'm', 'o'], { encoding: 'utf8' });
      expect(inside).toMatch(/meta mark 0x48530003 counter packets [1-9]/); // marked when sent
      const host = execFileSync('nft', ['list', 'chain', 'ip', table, 'p'], { encoding: 'utf8' });
      expect(host).toMatch(/meta mark 0x48530003 counter packets 0 /);
      expect(host).toMatch(/meta mark 0x00000000 counter packets [1-9]/);
    } finally {
      execFileSync('sh', ['-c', `nft delete table ip ${table} 2>/dev/null; ip link del ${link} 2>/dev/null; ip netns del ${ns}`]);
    }
  });
});
