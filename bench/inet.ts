/**
 * A small internet for the egress tests: a network namespace behind a veth made here, with a
 * few addresses of 198.19.0.0/16 (benchmarking range, never leaves this machine), a DNS
 * server written here (dgram) answering a fixed zone, a second "rogue" resolver, and HTTP
 * and HTTPS servers that record the Host and SNI they saw. Only addresses made here. Used by
 * test/network/egress.test.ts and bench/egress.ts (here, so the bench build has it).
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function sh(cmd: string): string {
  return execFileSync('sh', ['-c', cmd], { encoding: 'utf8' });
}

export interface Inet {
  ns: string;
  link: string;
  /** Host side of the link. */
  gateway: string;
  /** The zone's DNS server (the sandbox's upstream). */
  dns: string;
  /** Another resolver, answering every name: what a sandbox must not reach. */
  rogue: string;
  /** Addresses of the zone: ok.example, sub.ok.example, shared.example -> a; other.example -> b. */
  a: string;
  b: string;
  /** What the servers saw: 'dns <name> <type>', 'rogue <name>', 'http <address> <host>', 'tls <address> <sni> <host>'. */
  seen: string[];
  close(): void;
}

const SERVER = (zone: Record<string, string>, dns: string, rogue: string, webs: string[]) => `
const dgram = require('dgram'), http = require('http'), https = require('https'), fs = require('fs');
const cred = { key: fs.readFileSync(process.env.INET_KEY), cert: fs.readFileSync(process.env.INET_CERT) };
const zone = ${JSON.stringify(zone)};
function name(m) { let o = 12, l = []; while (m[o]) { l.push(m.toString('latin1', o + 1, o + 1 + m[o])); o += 1 + m[o]; } return [l.join('.').toLowerCase(), o + 1]; }
function lookup(n) { return zone[n] || (n.endsWith('.bench.example') ? '${webs[0]}' : undefined); }
function answer(m, addr) {
  const [n, end] = name(m); const type = m.readUInt16BE(end);
  const h = Buffer.from(m.subarray(0, end + 4)); h.writeUInt16BE(0x8180 | (addr ? 0 : 3), 2);
  const a = addr && type === 1 ? addr : null; h.writeUInt16BE(a ? 1 : 0, 6); h.writeUInt16BE(0, 8); h.writeUInt16BE(0, 10);
  if (!a) return [n, type, h];
  const rr = Buffer.alloc(16); rr.writeUInt16BE(0xc00c, 0); rr.writeUInt16BE(1, 2); rr.writeUInt16BE(1, 4); rr.writeUInt32BE(30, 6); rr.writeUInt16BE(4, 10);
  a.split('.').forEach((x, i) => (rr[12 + i] = +x)); return [n, type, Buffer.concat([h, rr])];
}
const d = dgram.createSocket('udp4');
d.on('message', (m, r) => { const [n, t, out] = answer(m, lookup(name(m)[0])); console.log('dns ' + n + ' ' + t); d.send(out, r.port, r.address); });
d.bind(53, '${dns}');
const rg = dgram.createSocket('udp4');
rg.on('message', (m, r) => { const [n, t, out] = answer(m, '${webs[0]}'); console.log('rogue ' + n); rg.send(out, r.port, r.address); });
rg.bind(53, '${rogue}');
let up = 0;
for (const w of ${JSON.stringify(webs)}) {
  const big = Buffer.alloc(1 << 20, 120);
  const send = (q, s) => { const mb = +(q.url.slice(4)) || 1; s.writeHead(200, { 'content-length': mb * big.length }); let i = 0; const go = () => { while (i < mb) { i++; if (!s.write(big)) return s.once('drain', go); } s.end(); }; go(); };
  http.createServer((q, s) => { if (q.url.startsWith('/mb/')) return send(q, s); if (!q.headers.host.endsWith('.bench.example')) console.log('http ' + w + ' ' + q.headers.host); s.end('hello from ' + w + '\\n'); })
    .listen(80, w, () => { if (++up === ${webs.length * 2}) console.log('ready'); });
  https.createServer(cred, (q, s) => { if (q.url.startsWith('/mb/')) return send(q, s); console.log('tls ' + w + ' ' + q.socket.servername + ' ' + q.headers.host); s.end('tls hello from ' + w + '\\n'); })
    .listen(443, w, () => { if (++up === ${webs.length * 2}) console.log('ready'); });
  http.createServer(send).listen(8080, w);
}
`;

/**
 * Makes the namespace, its link and its servers; `n` picks the /24 (198.19.n.0/24). Files that
 * may run at once must not share a /24 (two host links on one subnet): test/network/egress.test.ts
 * takes 100-199, egress-ask.test.ts 200-239, test/cli/examples.test.ts 240-249, bench/egress.ts 250,
 * test/network/egress-queue.test.ts 251-254.
 */
export async function makeInet(n: number): Promise<Inet> {
  const ns = `hutch-egress-${process.pid}`;
  const link = `egr${process.pid % 100000}`; // never hx*: the table treats those as sandbox links
  const p = `198.19.${n}`;
  const inet = { ns, link, gateway: `${p}.1`, dns: `${p}.2`, rogue: `${p}.3`, a: `${p}.11`, b: `${p}.12`, seen: [] as string[] };
  sh(`ip netns add ${ns}`);
  let child: ChildProcess | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'hutch-inet-'));
  const close = () => {
    child?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    try {
      sh(`ip netns del ${ns} 2>/dev/null`);
    } catch {}
    try {
      sh(`ip link del ${link} 2>/dev/null`);
    } catch {}
  };
  try {
    sh(`ip link add ${link} type veth peer name eth0 netns ${ns}`);
    sh(`ip addr add ${inet.gateway}/24 dev ${link} && ip link set ${link} up`);
    sh(`ip -n ${ns} link set lo up && ip -n ${ns} link set eth0 up`);
    for (const a of [inet.dns, inet.rogue, inet.a, inet.b]) sh(`ip -n ${ns} addr add ${a}/24 dev eth0`);
    sh(`ip -n ${ns} route add default via ${inet.gateway}`);
    const zone = { 'ok.example': inet.a, 'sub.ok.example': inet.a, 'shared.example': inet.a, 'other.example': inet.b, 'bad.example': inet.b, 'x.bad.example': inet.b, 'asked.example': inet.b, 'later.example': inet.b };
    // A self-signed certificate for every name of the zone (clients here use -k / no verify).
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=ok.example', '-days', '1', '-keyout', join(dir, 'k'), '-out', join(dir, 'c')], { stdio: 'ignore' });
    child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', SERVER(zone, inet.dns, inet.rogue, [inet.a, inet.b])], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, INET_KEY: join(dir, 'k'), INET_CERT: join(dir, 'c') },
    });
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      child!.stdout!.on('data', (d) => {
        buf += d;
        const lines = buf.split('\n');
        buf = lines.pop()!;
        for (const l of lines) {
          if (l === 'ready') resolve();
          else inet.seen.push(l);
        }
      });
      child!.on('close', (code) => reject(new Error(`inet servers ended (${code}): ${err}`)));
    });
  } catch (e) {
    close();
    throw e;
  }
  return { ...inet, seen: inet.seen, close };
}
