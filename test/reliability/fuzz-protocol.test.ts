// Fuzzing init's control protocol directly over its socket: malformed, truncated, oversized
// and mutated messages, with and without fds. init answers MSG_PROTOCOL_ERROR (or ignores,
// or runs a request that happens to be valid), never crashes, and the sandbox still execs.
// Message layouts: addon/init/protocol.h, lib/protocol.ts.
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageStore, Sandbox } from '../../lib/index.js';
import { isFailure, native } from '../../lib/native.js';
import { MSG, encodeExec, encodeKill, type InitMessage } from '../../lib/protocol.js';
import { isRoot, needs } from '../helpers/require.js';
import { gone, privateCgroupParent, removeCgroupParent, rmRoot, tempRoot } from '../helpers/reliability.js';

const skip = needs(isRoot && readFileSync('/proc/self/mountinfo', 'utf8').includes('cgroup'), 'root and cgroups are needed');
const RUNS = Number(process.env.HUTCH_FUZZ_PROTOCOL_RUNS ?? 300);
const parent = privateCgroupParent('proto');
const root = tempRoot('proto');
const store = new ImageStore({ root });
let sb: Sandbox;
/** Replies to the fuzzer's ids (and to id 0: errors about messages too short to carry one). */
const replies: InitMessage[] = [];
const FUZZ_ID = 0x7f000000;

interface Internals {
  spawned: { ctlFd: number; pid: number };
  procs: Map<number, { onMessage(m: InitMessage): void; onSandboxGone(): void }>;
}

/** Catches init's replies to ids the fuzzer uses, through the sandbox's own reader. */
function listen(ids: number[]): void {
  const procs = (sb as unknown as Internals).procs;
  for (const id of ids) procs.set(id, { onMessage: (m) => replies.push(m), onSandboxGone: () => undefined });
}

function unlisten(ids: number[]): void {
  const procs = (sb as unknown as Internals).procs;
  for (const id of ids) procs.delete(id);
}

function send(buf: Buffer, nfds: number): void {
  const n = native();
  const fds: number[] = [];
  const ours: number[] = [];
  for (let i = 0; i < nfds; i++) {
    const p = n.pipe();
    if (isFailure(p)) throw new Error(`pipe: ${p.errno}`);
    fds.push(i % 2 === 0 ? p[0] : p[1]);
    ours.push(i % 2 === 0 ? p[1] : p[0]);
  }
  const r = n.send((sb as unknown as Internals).spawned.ctlFd, buf, fds);
  for (const fd of [...fds, ...ours]) n.close(fd);
  if (isFailure(r) && r.errno !== 90 /* EMSGSIZE */) throw new Error(`send: errno ${r.errno}`);
}

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 5));

async function stillWorks(): Promise<void> {
  expect(gone(sb.pid), 'init died').toBe(false);
  expect(sb.state).toBe('running');
  const r = await sb.exec(['echo', 'ok'], { encoding: 'utf8', timeoutMs: 10_000 });
  expect(r.stdout).toBe('ok\n');
}

beforeAll(async () => {
  sb = await Sandbox.create({ image: 'busybox', store, limits: { pids: 64, memory: '64MiB' } });
});

afterAll(async () => {
  await sb?.destroy();
  rmRoot(root);
  removeCgroupParent(parent);
});

const header = (o: Partial<Record<'type' | 'id' | 'uid' | 'gid' | 'flags' | 'nrlimits' | 'seccompLen' | 'argc' | 'envc' | 'stringsLen', number>>, caps = 0n): Buffer => {
  const b = Buffer.alloc(48);
  b.writeUInt32LE(o.type ?? MSG.EXEC, 0);
  b.writeUInt32LE(o.id ?? FUZZ_ID, 4);
  b.writeUInt32LE(o.uid ?? 0, 8);
  b.writeUInt32LE(o.gid ?? 0, 12);
  b.writeBigUInt64LE(caps, 16);
  b.writeUInt32LE(o.flags ?? 0, 24);
  b.writeUInt32LE(o.nrlimits ?? 0, 28);
  b.writeUInt32LE(o.seccompLen ?? 0, 32);
  b.writeUInt32LE(o.argc ?? 1, 36);
  b.writeUInt32LE(o.envc ?? 0, 40);
  b.writeUInt32LE(o.stringsLen ?? 0, 44);
  return b;
};

const u32 = fc.oneof(fc.constantFrom(0, 1, 2, 3, 8, 24, 47, 48, 64, 65, 4096, 0xffff, 0x10000, 0x7fffffff, 0xffffffff), fc.nat());
const id = fc.integer({ min: FUZZ_ID, max: FUZZ_ID + 15 });

/** A valid exec request for a harmless command, then one field or byte changed. */
const mutatedExec = fc.record({
  field: fc.constantFrom('type', 'uid', 'gid', 'flags', 'nrlimits', 'seccompLen', 'argc', 'envc', 'stringsLen', 'byte', 'truncate', 'extend', 'none'),
  value: u32,
  at: fc.nat(),
  id,
  seccomp: fc.boolean(),
  rl: fc.array(fc.record({ resource: fc.integer({ min: 0, max: 20 }), soft: fc.nat(), hard: fc.nat() }), { maxLength: 3 }),
}).map((m) => {
  const prog = m.seccomp ? Buffer.from([0x06, 0, 0, 0, 0, 0, 0xff, 0x7f]) /* RET ALLOW */ : null;
  let b = encodeExec({ id: m.id, uid: 0, gid: 0, caps: 0n, noNewPrivs: true, rlimits: m.rl, seccomp: prog, cwd: '/', argv: ['true'], env: ['PATH=/bin'] });
  const offs: Record<string, number> = { type: 0, uid: 8, gid: 12, flags: 24, nrlimits: 28, seccompLen: 32, argc: 36, envc: 40, stringsLen: 44 };
  if (m.field in offs) b.writeUInt32LE(m.value >>> 0, offs[m.field]!);
  else if (m.field === 'byte') b[m.at % b.length] = m.value & 0xff;
  else if (m.field === 'truncate') b = b.subarray(0, m.at % b.length);
  else if (m.field === 'extend') b = Buffer.concat([b, Buffer.alloc((m.at % 64) + 1, m.value & 0xff)]);
  return b;
});

describe.skipIf(skip)("init's control protocol under malformed input", () => {
  it('random bytes, mutated exec requests, kills and fd counts: init answers or ignores, never dies', async () => {
    const ids = Array.from({ length: 16 }, (_, i) => FUZZ_ID + i).concat([0]);
    listen(ids);
    let sent = 0;
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(
            fc.uint8Array({ minLength: 1, maxLength: 96 }).map((a) => Buffer.from(a)),
            fc.tuple(fc.constantFrom(MSG.EXEC, MSG.KILL, MSG.STARTED, MSG.EXITED, 0, 0xffffffff), fc.uint8Array({ minLength: 0, maxLength: 80 })).map(([t, a]) => {
              const b = Buffer.alloc(4 + a.length);
              b.writeUInt32LE(t >>> 0, 0);
              Buffer.from(a).copy(b, 4);
              return b;
            }),
            fc.record({ type: fc.constant(MSG.EXEC), id, uid: u32, gid: u32, flags: u32, nrlimits: u32, seccompLen: u32, argc: u32, envc: u32, stringsLen: u32 }, { requiredKeys: [] }).chain((h) =>
              fc.uint8Array({ maxLength: 64 }).map((tail) => Buffer.concat([header(h), Buffer.from(tail)])),
            ),
            mutatedExec,
            fc.tuple(id, fc.integer({ min: -5, max: 70 }), fc.boolean()).map(([i, s, g]) => encodeKill(i, s, g)),
            fc.tuple(fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.integer({ min: -5, max: 70 })).map(([i, s]) => encodeKill(i, s, true)),
          ),
          fc.integer({ min: 0, max: 5 }),
          async (buf, nfds) => {
            send(buf, nfds);
            sent++;
            await settle();
          },
        ),
        { numRuns: RUNS },
      );
      await stillWorks();
      // Oversized: past init's 1 MiB buffer.
      send(Buffer.concat([header({}), Buffer.alloc((1 << 20) + 16, 1)]), 3);
      sent++;
      await settle();
      await stillWorks();
    } finally {
      await new Promise((r) => setTimeout(r, 100));
      unlisten(ids);
    }
    const byType: Record<string, number> = {};
    for (const m of replies) byType[m.type === 'protocol-error' ? `protocol-error:${m.code}` : m.type] = (byType[`${m.type === 'protocol-error' ? `protocol-error:${m.code}` : m.type}`] ?? 0) + 1;
    console.log(`fuzz (protocol): ${sent} messages sent; replies ${JSON.stringify(byType)}`);
    expect(replies.some((m) => m.type === 'protocol-error')).toBe(true);
  }, 90_000);

  it('a zero-length message is not mistaken for the end of the control socket', async () => {
    send(Buffer.alloc(0), 0);
    await new Promise((r) => setTimeout(r, 200));
    await stillWorks();
  });
});
