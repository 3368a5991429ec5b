import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { Sandbox } from '../../lib/index.js';
import type { EgressRequest } from '../../lib/network/policy.js';
import { needsRootWith } from '../helpers/require.js';
import { shIn, slotOf, useInet } from '../helpers/egress.js';

// `ask` about bare addresses, and the refusals past the log's rate limit. Traffic only to the
// namespace this file makes (198.19.x.0/24, bench/inet.ts) and to what hutch makes on the link.
const skip = needsRootWith('egress ask tests', ['ip', 'nft', 'curl', 'python3']);
const RANGE = '10.219.0.0/24';


describe.skipIf(skip !== undefined)('egress: ask about bare addresses', () => {
  const world = useInet(() => 200 + (process.pid % 40), RANGE);
  const net = world.net;
  const sh = (sb: Sandbox, cmd: string) => shIn(sb, cmd, 30_000);
  // connect, send a request, read: what the sandbox's program sees.
  const probe = (address: string, port: number) => `python3 -c "
import socket
s = socket.socket(); s.settimeout(20)
try:
    s.connect(('${address}', ${port})); s.sendall(b'GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n'); d = s.recv(100)
    print('read', d.split(b'\\r\\n')[0].decode() if d else 'eof')
except OSError as e: print(type(e).__name__)
"`;

  // n connects to address:80, each expected to be refused at once; prints how many were.
  const connectFlood = (address: string, n: number) => `python3 -c "
import socket
n = 0
for i in range(${n}):
    s = socket.socket()
    try: s.connect(('${address}', 80))
    except ConnectionRefusedError: n += 1
    s.close()
print(n)"`;

  // Two connections to address:80 from the same source port, 50 ms apart: what each met.
  const samePortTwice = (address: string, port: number) => `python3 -c "
import socket, time
for i in range(2):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.settimeout(20); s.bind(('0.0.0.0', ${port}))
    try:
        s.connect(('${address}', 80))
        try: print('read', s.recv(100) or 'eof')
        except OSError as e: print('connected', type(e).__name__)
    except OSError as e: print(type(e).__name__)
    s.close(); time.sleep(0.05)
"`;

  it('the connection waits for the answer; only true allows, once per address; a refusal, throw or silence resets it with a violation', async () => {
    const asked: EgressRequest[] = [];
    let release: () => void = () => undefined;
    const gate = new Promise<void>((res) => (release = res));
    const sb = await Sandbox.create({
      network: net({
        domains: ['ok.example'],
        deny: [`${world.inet.dns}/32`],
        ask: async (req: EgressRequest) => {
          asked.push(req);
          if (req.address === world.inet.b) return gate.then(() => true); // answered when the test says
          await new Promise((res) => setTimeout(res, 300));
          if (req.address === world.inet.a) throw new Error('no idea');
          if (req.port === 81) return new Promise<boolean>(() => undefined); // never answers
          return { allow: false as const, reason: 'not on the list' };
        },
      }),
    });
    try {
      // Allowed: the first connection waits for the answer and then works (no failure first).
      const pending = sh(sb, `curl -sS --max-time 20 http://${world.inet.b}/`);
      for (let i = 0; i < 200 && asked.length === 0; i++) await new Promise((res) => setTimeout(res, 50));
      expect(asked).toEqual([{ host: null, address: world.inet.b, port: 80, protocol: 'tcp' }]);
      // Asked and not answered yet: the request has not left, and curl still waits.
      await new Promise((res) => setTimeout(res, 300));
      expect(world.inet.seen.some((l) => l.startsWith(`http ${world.inet.b}`))).toBe(false);
      release();
      const first = await pending;
      expect(first.stderr).toBe('');
      expect(first.stdout).toBe(`hello from ${world.inet.b}\n`);
      expect(world.inet.seen).toContain(`http ${world.inet.b} ${world.inet.b}`);
      // Asked once: later connections (another port too) go straight, through the asked set.
      const again = await sh(sb, `curl -sS --max-time 20 http://${world.inet.b}/; curl -sS --max-time 20 http://${world.inet.b}:8080/mb/1 | wc -c`);
      expect(again.stdout).toBe(`hello from ${world.inet.b}\n1048576\n`);
      expect(asked).toHaveLength(1);
      expect(execFileSync('nft', ['list', 'set', 'inet', 'hutch', `askok_${slotOf(sb)}`], { encoding: 'utf8' })).toContain(world.inet.b);

      // Refused with a reason: the program's connection is reset, never left hanging.
      const refused = await sh(sb, probe(world.inet.rogue, 80));
      expect(refused.stdout).toMatch(/^(ConnectionResetError|read eof)\n$/);
      expect(refused.violations).toContainEqual(expect.objectContaining({ kind: 'network', host: null, address: world.inet.rogue, port: 80, protocol: 'tcp', reason: 'not on the list' }));
      // Once per address while the answer stands: from then on the kernel refuses it at once
      // (any port), with the answer's reason, without asking; a flood of them is counted to the last.
      const twice = await sh(sb, `${probe(world.inet.rogue, 80)}; ${probe(world.inet.rogue, 22)}`);
      expect(twice.stdout).toBe('ConnectionRefusedError\nConnectionRefusedError\n');
      expect(twice.violations).toContainEqual(expect.objectContaining({ address: world.inet.rogue, port: 80, reason: 'not on the list' }));
      expect(twice.violations).toContainEqual(expect.objectContaining({ address: world.inet.rogue, port: 22, reason: 'not on the list' }));
      const n = 2000;
      const flood = await sh(sb, connectFlood(world.inet.rogue, n));
      expect(flood.stdout).toBe(`${n}\n`);
      expect(flood.violations.length + flood.violationsDropped).toBe(n);
      expect(flood.violations.every((v) => v.address === world.inet.rogue && v.reason === 'not on the list')).toBe(true);
      expect(asked.filter((r) => r.address === world.inet.rogue)).toHaveLength(1);

      // A throw: refused. (world.inet.a is ok.example's address, not admitted until that name is resolved.)
      const threw = await sh(sb, probe(world.inet.a, 8080));
      expect(threw.stdout).toMatch(/^(ConnectionResetError|read eof)\n$/);
      expect(threw.violations).toContainEqual(expect.objectContaining({ address: world.inet.a, port: 8080, reason: 'ask threw: no idea' }));
      expect(world.inet.seen.some((l) => l.startsWith(`http ${world.inet.a}`))).toBe(false);
    } finally {
      await sb.destroy();
    }
  });

  it('no answer within 5 s refuses; deny CIDRs, resolvers and the host are never asked', async () => {
    const asked: EgressRequest[] = [];
    const sb = await Sandbox.create({
      network: net({
        domains: ['ok.example'],
        deny: [`${world.inet.a}/32`],
        ask: (req: EgressRequest) => {
          asked.push(req);
          return new Promise<boolean>(() => undefined);
        },
      }),
    });
    try {
      const silent = await sh(sb, probe(world.inet.b, 8080));
      expect(silent.stdout).toMatch(/^(ConnectionResetError|read eof)\n$/);
      expect(silent.violations).toContainEqual(expect.objectContaining({ address: world.inet.b, port: 8080, reason: 'ask: no answer within 5 s' }));
      // Refused at once by the forward and input chains, as without ask: never asked.
      const direct = await sh(sb, `${probe(world.inet.a, 8080)}; ${probe(world.inet.rogue, 53)}; ${probe(world.inet.gateway, 8080)}`);
      expect(direct.stdout).toBe('ConnectionRefusedError\nConnectionRefusedError\nConnectionRefusedError\n');
      expect(direct.violations).toContainEqual(expect.objectContaining({ address: world.inet.a, port: 8080, reason: 'denied' }));
      expect(direct.violations).toContainEqual(expect.objectContaining({ address: world.inet.rogue, port: 53, reason: 'other resolver' }));
      expect(asked.map((r) => r.address)).toEqual([world.inet.b]);
    } finally {
      await sb.destroy();
    }
  });

  it('a refused address stays refused by the kernel for a new connection from the asked one\'s source port (its conntrack entry is gone)', async () => {
    const sb = await Sandbox.create({ network: net({ domains: ['ok.example'], ask: () => ({ allow: false as const, reason: 'no' }) }) });
    try {
      // The first is asked and reset by the listener; the second, same 5-tuple 50 ms later, must
      // meet the kernel's refusal, not reopen the first one's closed entry (and its redirect).
      const r = await sh(sb, samePortTwice(world.inet.rogue, 40123));
      const [first, second] = r.stdout.trim().split('\n');
      // The first is reset by the listener: during connect (when the reset beats the connect's
      // own check) or at the first read.
      expect(first).toMatch(/^(ConnectionResetError|connected ConnectionResetError|read eof)$/);
      expect(second).toBe('ConnectionRefusedError');
      expect(r.violations.filter((v) => v.address === world.inet.rogue)).toHaveLength(2);
    } finally {
      await sb.destroy();
    }
  });

  it('without ask, a bare address is refused at once; a connect flood past the log limit is counted, every one', async () => {
    const sb = await Sandbox.create({ network: net({ domains: ['ok.example'] }) });
    try {
      const n = 4000;
      const r = await sh(sb, connectFlood(world.inet.b, n));
      expect(r.stdout).toBe(`${n}\n`); // each refused at once
      expect(r.violations.length).toBeLessThanOrEqual(100);
      // Every refused SYN is either reported or counted: none is lost past nftables' log limit.
      expect(r.violations.length + r.violationsDropped).toBe(n);
      const quiet = await sh(sb, 'true');
      expect(quiet.violationsDropped).toBe(0);
    } finally {
      await sb.destroy();
    }
  });
});
