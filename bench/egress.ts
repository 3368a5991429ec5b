/**
 * `node dist/bench/egress.js [connections] [megabytes]`: what egress by name costs, against a
 * small internet made here (bench/inet.ts: a netns with a DNS and HTTP servers; no other
 * address is touched). Not asserted anywhere; printed as a table.
 *   - first connection to a name (a fresh name each time: DNS + connect + one HTTP request,
 *     curl's time_total inside the sandbox), p50/p90: with `domains` (hutch's resolver, the
 *     nft set, the Host check of port 80 through the netfilter queue) against plain outbound
 *     NAT with the same upstream resolver written into the sandbox's resolv.conf;
 *   - a download (default 100 MB) from an allowed name, port 80 and 443 (TLS, a self-signed
 *     certificate; curl -k) through the name check, and port 8080 (the nft set only), against
 *     plain NAT on the same ports, interleaved, EGRESS_ROUNDS (5) of each; with the hutch
 *     process's CPU time per download (the queue's first segments).
 * Needs root, curl. Range 10.218.0.0/24.
 */
import { loadavg } from 'node:os';
import { Sandbox } from '../lib/index.js';
import { settleNetwork } from '../lib/network/index.js';
import { makeInet } from './inet.js';

const N = Number(process.argv[2] ?? 50);
const MB = Number(process.argv[3] ?? 100);
const RANGE = '10.218.0.0/24';
/** Downloads per path, interleaved (the machine may be shared: medians of several). */
const ROUNDS = Number(process.env.EGRESS_ROUNDS ?? 5);

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

const inet = await makeInet(250);
try {
  const filtered = await Sandbox.create({ network: { mode: 'bridge', range: RANGE, outbound: 'nat', domains: ['*.bench.example', 'ok.example'], dns: { servers: [inet.dns] } } });
  const plain = await Sandbox.create({ network: { mode: 'bridge', range: RANGE, outbound: 'nat' } });
  await plain.writeFile('/etc/resolv.conf', `nameserver ${inet.dns}\n`);
  const first: Record<string, number[]> = { domains: [], plain: [] };
  // Interleaved in rounds of 5, so drift hits both alike.
  for (let r = 0; r < N; r += 5) {
    for (const [name, sb] of [['domains', filtered], ['plain', plain]] as const) {
      const cmd = Array.from({ length: 5 }, (_, i) => `curl -s -o /dev/null -w '%{time_total}\\n' http://${name}-${r + i}.bench.example/`).join('; ');
      const out = await sb.exec(['sh', '-c', cmd], { encoding: 'utf8' });
      for (const l of String(out.stdout).trim().split('\n')) first[name]!.push(Number(l) * 1000);
    }
  }
  // Also this process's CPU time per download (robust to the machine's other load, unlike the speeds).
  const cpu: Record<string, number[]> = {};
  const dl = async (label: string, sb: Sandbox, url: string) => {
    const c0 = process.cpuUsage();
    const out = await sb.exec(['sh', '-c', `curl -s -o /dev/null -w '%{speed_download}' ${url}`], { encoding: 'utf8' });
    const c = process.cpuUsage(c0);
    (cpu[label] ??= []).push((c.user + c.system) / 1000);
    speeds[label]!.push((Number(out.stdout) * 8) / 1e9); // Gbit/s
  };
  const speeds: Record<string, number[]> = { 'domains, port 80 (name check)': [], 'domains, port 8080 (set)': [], plain: [], 'domains, port 443 TLS (name check)': [], 'plain, port 443 TLS': [] };
  for (let i = 0; i < ROUNDS; i++) {
    await dl('domains, port 80 (name check)', filtered, `http://ok.example/mb/${MB}`);
    await dl('domains, port 8080 (set)', filtered, `http://ok.example:8080/mb/${MB}`);
    await dl('plain', plain, `http://${inet.a}:8080/mb/${MB}`);
    await dl('domains, port 443 TLS (name check)', filtered, `-k https://ok.example/mb/${MB}`);
    await dl('plain, port 443 TLS', plain, `-k https://${inet.a}/mb/${MB}`);
  }
  await filtered.destroy();
  await plain.destroy();
  console.log(`| first connection to a fresh name (ms) | p50 | p90 | n |\n|---|---|---|---|`);
  for (const [k, xs] of Object.entries(first)) console.log(`| ${k} | ${pct(xs, 50).toFixed(2)} | ${pct(xs, 90).toFixed(2)} | ${xs.length} |`);
  console.log(`\n| ${MB} MB download (median of ${ROUNDS}) | Gbit/s | vs plain | hutch process CPU (ms) |\n|---|---|---|---|`);
  // TLS against plain TLS (the same server and client cost), the rest against plain HTTP.
  for (const [k, xs] of Object.entries(speeds)) {
    const base = pct(speeds[k.includes('443') ? 'plain, port 443 TLS' : 'plain']!, 50);
    console.log(`| ${k} | ${pct(xs, 50).toFixed(2)} | ${(pct(xs, 50) / base).toFixed(2)}x | ${pct(cpu[k]!, 50).toFixed(0)} |`);
  }
  console.log(`\nload average at the end: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
} finally {
  inet.close();
  await settleNetwork().catch(() => undefined);
}
