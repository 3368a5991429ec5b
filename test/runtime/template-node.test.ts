/**
 * The built-in node zygote (docs/templates.md, "The Node zygote"): each run is a fresh sandbox
 * forked from a warm `node`, isolated as a python template's forks are, and node works in it as
 * in a cold `node`: the threadpool (fs, crypto, zlib), timers, child processes and signals, V8's
 * platform worker threads (full garbage collections, async WebAssembly compiles, Workers that
 * end after them, fetch), every way a program ends.
 * Each claim is checked by doing the thing inside a fork. HUTCH_NODE_STRESS sets how many times
 * each workload runs (default 8; the stability figures in docs/templates.md ran 300).
 */
import { chmodSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';
import type { ZygoteTemplate } from '../../lib/template/index.js';
import { cgroupsUnder, privateCgroupParent, removeCgroupParent } from '../helpers/reliability.js';
import { isRoot, needs } from '../helpers/require.js';
import { installProbe, probe, probeBinary, PROBE } from '../security/probe.js';

const skip = needs(isRoot, 'root is needed');
const parent = privateCgroupParent('tplnode');
const STRESS = Number(process.env.HUTCH_NODE_STRESS ?? 8);
const NS = ['pid', 'mnt', 'net', 'ipc', 'uts', 'cgroup'];
const cgroupIds = (): string[] => [...new Set(cgroupsUnder(parent).map((d) => d.slice(d.lastIndexOf('/') + 1)))];
const app = mkdtempSync(join(tmpdir(), 'hutch-tplnode-'));
chmodSync(app, 0o755);
// A preload: what it did at import stays done in every fork (its module is cached).
writeFileSync(join(app, 'pre.js'), 'exports.loadedAt = process.hrtime.bigint().toString();\nglobalThis.preloaded = 42;\n');

afterAll(() => {
  removeCgroupParent(parent);
  rmSync(app, { recursive: true, force: true });
});

/** The stability workloads: a script, and what its run must give. */
const WORKLOADS: Record<string, { code: string; check: (r: { stdout: string; stderr: string; exitCode: number | null }) => void }> = {
  hello: { code: 'console.log("hi")', check: (r) => expect(r.stdout).toBe('hi\n') },
  fs: {
    code: `const fs = require('fs'), fsp = require('fs/promises');
(async () => {
  await fsp.writeFile('/tmp/a', 'x'.repeat(100000));
  const a = await fsp.readFile('/tmp/a', 'utf8');
  fs.readFile('/tmp/a', (e, b) => {
    if (e) throw e;
    fs.stat('/tmp/a', (e2, st) => { if (e2) throw e2; console.log(a.length, b.length, st.size, (fs.readdirSync('/tmp')).includes('a')); });
  });
})();`,
    check: (r) => expect(r.stdout).toBe('100000 100000 100000 true\n'),
  },
  crypto: {
    code: `const c = require('crypto');
c.randomBytes(32, (e, b) => { if (e) throw e;
  c.pbkdf2('pw', b, 1000, 32, 'sha256', (e2, k) => { if (e2) throw e2;
    c.scrypt('pw', 'salt', 16, (e3, s) => { if (e3) throw e3; console.log(b.length, k.length, s.toString('hex')); }); }); });`,
    check: (r) => expect(r.stdout).toBe('32 32 c0b515908e61334cae6d6003c00be60e\n'),
  },
  zlib: {
    code: `const z = require('zlib'); const d = Buffer.alloc(1 << 20, 'abc');
z.gzip(d, (e, g) => { if (e) throw e; z.gunzip(g, (e2, u) => { if (e2) throw e2;
  z.brotliCompress(d, (e3, b) => { if (e3) throw e3; console.log(u.equals(d), g.length < d.length, b.length > 0); }); }); });`,
    check: (r) => expect(r.stdout).toBe('true true true\n'),
  },
  timers: {
    code: `const out = []; setTimeout(() => out.push('t'), 20); setImmediate(() => out.push('i')); process.nextTick(() => out.push('n'));
Promise.resolve().then(() => out.push('p')); let k = 0; const iv = setInterval(() => { if (++k === 3) { clearInterval(iv); setTimeout(() => console.log(out.slice(0, 2).join(''), [...out.slice(2)].sort().join(''), k), 30); } }, 5);`,
    // nextTick, then the promise; the immediate and the 20 ms timer in either order (node runs
    // the timer first when its first loop turn starts 20 ms late).
    check: (r) => expect(r.stdout).toBe('np it 3\n'),
  },
  spawn: {
    code: `const cp = require('child_process');
process.on('SIGUSR2', () => {
  const c = cp.spawn('sh', ['-c', 'echo from-child; exit 4']); let o = '';
  c.stdout.on('data', (d) => (o += d));
  c.on('close', (code) => { const s = cp.execFileSync('sh', ['-c', 'echo sync']).toString(); console.log(o.trim(), code, s.trim()); process.exit(0); });
});
const keep = setTimeout(() => {}, 10000);
process.on('exit', () => clearTimeout(keep));
process.kill(process.pid, 'SIGUSR2');`,
    check: (r) => expect(r.stdout).toBe('from-child 4 sync\n'),
  },
  gc: {
    // 500 MB in small objects, most of it garbage: many scavenges and some full collections.
    code: `let keep = []; let n = 0; for (let i = 0; i < 5e6; i++) { const o = { i, s: 'x' + (i % 1000), a: [i, i] }; n++; if (i % 1000 === 0) keep.push(o); if (keep.length > 2000) keep = []; }
console.log(n, keep.length > 0);`,
    check: (r) => expect(r.stdout).toBe('5000000 true\n'),
  },
  worker: {
    code: `const { Worker } = require('worker_threads');
const w = new Worker('const { parentPort } = require("worker_threads"); parentPort.on("message", (m) => parentPort.postMessage(m * 2));', { eval: true });
w.on('message', (m) => { console.log('worker', m); w.terminate().then((c) => console.log('terminated', c)); });
w.postMessage(21);`,
    check: (r) => expect(r.stdout).toBe('worker 42\nterminated 1\n'),
  },
  // V8's platform worker threads, which a fork gets of its own (docs/templates.md, "The Node
  // zygote"): each of these hung in a fork before it had them.
  gcmany: {
    code: `require('v8').setFlagsFromString('--expose-gc'); const gc = require('vm').runInNewContext('gc');
for (let i = 0; i < 10; i++) gc(); console.log('done');`,
    check: (r) => expect(r.stdout).toBe('done\n'),
  },
  heap: {
    // A few hundred MB that live long enough to be promoted, then die: full (mark-compact)
    // collections without gc(), counted by V8's own GC profiler (synchronous).
    code: `const { GCProfiler } = require('v8'); const p = new GCProfiler(); p.start();
let total = 0; for (let r = 0; r < 8; r++) { let keep = []; for (let i = 0; i < 3e5; i++) keep.push({ i, s: 'x' + i, a: [i] }); total += keep.length; keep = null; }
const major = p.stop().statistics.filter((s) => s.gcType === 'MarkSweepCompact').length;
console.log(total, major >= 1 ? 'major' : 'no major: ' + major);`,
    check: (r) => expect(r.stdout).toBe('2400000 major\n'),
  },
  workergc: {
    code: `require('v8').setFlagsFromString('--expose-gc'); const gc = require('vm').runInNewContext('gc'); gc(); gc();
const { Worker } = require('worker_threads');
const w = new Worker('require("v8").setFlagsFromString("--expose-gc"); const g = require("vm").runInNewContext("gc"); const a = []; for (let i = 0; i < 1e5; i++) a.push({ i }); g(); g(); require("worker_threads").parentPort.postMessage(a.length);', { eval: true });
w.on('message', (m) => console.log('worker', m)); w.on('exit', (c) => { gc(); console.log('exit', c); });`,
    check: (r) => expect(r.stdout).toBe('worker 100000\nexit 0\n'),
  },
  wasm: {
    // (module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))
    code: `const bytes = Buffer.from('0061736d0100000001070160027f7f017f030201000707010361646400000a09010700200020016a0b', 'hex');
WebAssembly.compile(bytes).then((m) => WebAssembly.instantiate(m)).then((i) => console.log('wasm', i.exports.add(40, 2)));`,
    check: (r) => expect(r.stdout).toBe('wasm 42\n'),
  },
  fetch: {
    // A server of the task's own on its loopback (a fork has its own network namespace).
    code: `const http = require('http');
const srv = http.createServer((req, res) => res.end('hello ' + req.url)).listen(0, '127.0.0.1', async () => {
  const r = await fetch('http://127.0.0.1:' + srv.address().port + '/x'); console.log(r.status, await r.text()); srv.close();
});`,
    check: (r) => expect(r.stdout).toBe('200 hello /x\n'),
  },
  exit3: { code: 'setTimeout(() => process.exit(3), 5); process.on("exit", (c) => console.log("exit event", c));', check: (r) => { expect(r.exitCode).toBe(3); expect(r.stdout).toBe('exit event 3\n'); } },
  throw: {
    code: 'function boom() { throw new Error("boom here"); }\nsetTimeout(boom, 1);',
    check: (r) => {
      expect(r.exitCode).toBe(1);
      expect(r.stderr).toContain('Error: boom here\n    at Timeout.boom [as _onTimeout] (/w/main.js:1:25)');
      expect(r.stderr).toContain(`Node.js ${process.version}`);
    },
  },
  bigout: {
    code: 'const b = Buffer.alloc(10 << 20, 0x61); b[b.length - 1] = 0x0a; process.stdout.write(b);',
    check: (r) => {
      expect(r.stdout.length).toBe(10 << 20);
      expect(r.stdout.endsWith('a\n')).toBe(true);
    },
  },
};

describe.skipIf(skip)('node templates', () => {
  // The class, not the public interface: these tests look inside (templateSandbox, zygoteProcess).
  let t: ZygoteTemplate;
  beforeAll(async () => {
    // One fork kept ready: runs use prepared forks and forks made on demand alike.
    t = (await Sandbox.template({
      zygote: 'node', preload: ['/app/pre.js'], limits: { memory: '256MiB', pids: 64 }, size: 1,
      mounts: [{ source: app, target: '/app', readonly: true }],
    })) as ZygoteTemplate;
  });
  afterAll(async () => {
    await t?.close();
  });

  it('runs node scripts, -e, -p and stdin in the warm interpreter, with argv, cwd, env and files as a cold node', async () => {
    const s = await t.run(['node', 'main.js', 'a', 'b c'], {
      files: { '/w/main.js': 'console.log(JSON.stringify(process.argv.slice(1)), process.cwd(), process.env.FOO, require("./lib").v, require.main === module, __filename)', '/w/lib.js': 'exports.v = 7' },
      cwd: '/w', env: { FOO: 'bar' }, encoding: 'utf8',
    });
    expect(s.stderr).toBe('');
    expect(s.stdout).toBe('["/w/main.js","a","b c"] /w bar 7 true /w/main.js\n');
    expect((await t.run(['node', '-p', '6 * 7'], { encoding: 'utf8' })).stdout).toBe('42\n');
    expect((await t.run(['node', '-e', 'console.log(process.argv.length, typeof require, __filename)', 'x'], { encoding: 'utf8' })).stdout).toBe('2 function [eval]\n');
    expect((await t.run(['node', '-'], { stdin: 'console.log("from stdin")', encoding: 'utf8' })).stdout).toBe('from stdin\n');
    expect((await t.run(['node', '-e', 'process.stdin.pipe(process.stdout)'], { stdin: 'echo me', encoding: 'utf8' })).stdout).toBe('echo me');
    // An ES module script, as node runs one.
    const m = await t.run(['node', '/w/m.mjs'], { files: { '/w/m.mjs': 'import { basename } from "node:path"; console.log(basename(import.meta.url), await Promise.resolve(5))' }, encoding: 'utf8' });
    expect(m.stderr).toBe('');
    expect(m.stdout).toBe('m.mjs 5\n');
    // The preload is imported once, in the zygote: every fork has it, as it was.
    const p = await Promise.all([0, 1].map(() => t.run(['node', '-e', 'console.log(globalThis.preloaded, require("/app/pre.js").loadedAt)'], { encoding: 'utf8' })));
    expect(p[0]!.stdout).toMatch(/^42 \d+\n$/);
    expect(p[1]!.stdout).toBe(p[0]!.stdout);
    // Exactly the task's env; the zygote's own is gone, also from what it execs.
    // (LD_PRELOAD: the zygote's own, for addon/zygote/mmap_hint.c.)
    const e = await t.run(['node', '-e', 'console.log(Object.keys(process.env).filter(k => k.startsWith("HUTCH") || k === "LD_PRELOAD").length, process.env.FOO, require("child_process").execSync("echo $FOO ${HUTCH_ZYGOTE_LIB:-unset} ${LD_PRELOAD:-unset}").toString().trim(), process.execArgv.length)'], { env: { FOO: 'x y' }, encoding: 'utf8' });
    expect(e.stdout).toBe('0 x y x y unset unset 0\n');
  });

  it('gives every run its own pid, mount, net, ipc, uts and cgroup namespaces, PID 1 inside', async () => {
    const code = `console.log(process.pid, process.ppid); for (const n of ${JSON.stringify(NS)}) console.log(n, require('fs').readlinkSync('/proc/self/ns/' + n)); setTimeout(() => {}, 1000);`;
    const [a, b] = await Promise.all([t.run(['node', '-e', code], { encoding: 'utf8' }), t.run(['node', '-e', code], { encoding: 'utf8' })]);
    expect(a.stderr).toBe('');
    expect((a.stdout as string).split('\n')[0]).toBe('1 0');
    const ns = (out: string): Record<string, string> => Object.fromEntries(out.trim().split('\n').slice(1).map((l) => l.split(' ')));
    const zhost = readFileSync(`/proc/${t.pid}/task/${t.pid}/children`, 'utf8').trim().split(' ').map(Number)
      .find((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('zygote.cjs'))!;
    for (const n of NS) {
      const zn = readlinkSync(`/proc/${zhost}/ns/${n}`);
      expect(ns(a.stdout as string)[n], n).toMatch(/^\w+:\[\d+\]$/);
      expect(ns(a.stdout as string)[n], n).not.toBe(ns(b.stdout as string)[n]);
      expect(ns(a.stdout as string)[n], n).not.toBe(zn);
    }
  });

  it('reseeds randomness in every fork: crypto.randomBytes, randomUUID and Math.random differ between forks', async () => {
    const code = 'console.log(require("crypto").randomBytes(16).toString("hex"), require("crypto").randomUUID(), Math.random(), Math.random())';
    const outs = await Promise.all([0, 1, 2, 3].map(() => t.run(['node', '-e', code], { encoding: 'utf8' })));
    const rows = outs.map((r) => (r.stdout as string).trim().split(' '));
    for (let col = 0; col < 4; col++) expect(new Set(rows.map((r) => r[col])).size, `column ${col}`).toBe(4);
    for (const r of rows) expect(Number(r[2])).toBeGreaterThanOrEqual(0), expect(Number(r[2])).toBeLessThan(1);
  });

  it('keeps files apart: a fork sees neither a sibling\'s writes nor leaves any in the template', async () => {
    const w = await t.run(['node', '-e', 'require("fs").writeFileSync("/tmp/secret", "s"); require("fs").writeFileSync("/etc/planted", "p"); console.log("ok")'], { encoding: 'utf8' });
    expect(w.stdout).toBe('ok\n');
    const r = await t.run(['node', '-e', 'const fs = require("fs"); console.log(fs.existsSync("/tmp/secret"), fs.existsSync("/etc/planted"))'], { encoding: 'utf8' });
    expect(r.stdout).toBe('false false\n');
    await expect(t.templateSandbox.readFile('/etc/planted')).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('cannot signal or ptrace the zygote, the template\'s init or a sibling', async () => {
    const sibling = t.run(['node', '-e', 'setTimeout(() => console.log("alive"), 2500)'], { encoding: 'utf8' });
    await new Promise((r) => setTimeout(r, 300));
    const zpid = t.zygoteProcess!.pid;
    const kill = `const seen = require('fs').readdirSync('/proc').filter((p) => /^\\d+$/.test(p)); const res = [];
for (const pid of new Set([${zpid}, 2, 3, 4, 5, 10, 100, ...Array.from({ length: 298 }, (_, i) => i + 2)])) {
  try { process.kill(pid, 'SIGKILL'); res.push('killed ' + pid); } catch (e) { if (e.code !== 'ESRCH') res.push(e.code + ' ' + pid); }
}
console.log('visible', seen.join(','), 'kills', res.length);`;
    const r = await t.run(['node', '-e', kill], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('visible 1 kills 0\n');
    const pt = await t.run([PROBE, 'ptrace', String(zpid)], { files: { [PROBE]: probeBinary() }, encoding: 'utf8' });
    expect(String(pt.stdout)).toMatch(/^refused/);
    const s = await sibling;
    expect(s.stdout).toBe('alive\n');
    expect(t.zygoteProcess?.pid).toBe(zpid);
  });

  it('confines the warm task as a fresh sandbox: capabilities, no_new_privs, seccomp; probes answer as in a created sandbox', async () => {
    const sb = await Sandbox.create({ limits: { memory: '256MiB', pids: 64 } });
    try {
      const field = (s: string): string => s.split('\n').filter((l) => /^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):/.test(l)).join('\n');
      const fresh = await sb.exec(['cat', '/proc/self/status'], { encoding: 'utf8' });
      const warm = await t.run(['node', '-e', 'process.stdout.write(require("fs").readFileSync("/proc/self/status"))'], { encoding: 'utf8' });
      expect(field(warm.stdout as string)).toBe(field(fresh.stdout as string));
      expect(field(warm.stdout as string)).toContain('NoNewPrivs:\t1');
      await installProbe(sb);
      for (const c of [['mount'], ['unshare', 'user'], ['keyctl'], ['io_uring'], ['bpf']]) {
        const r = await t.run([PROBE, ...c], { files: { [PROBE]: probeBinary() }, encoding: 'utf8' });
        expect(String(r.stdout).trim(), c.join(' ')).toBe(await probe(sb, c));
      }
    } finally {
      await sb.destroy();
    }
  });

  it('ends as node ends: exit codes, exitCode, uncaught errors and rejections (status 1, stack on stderr), signals', async () => {
    const run = (code: string) => t.run(['node', '/w/main.js'], { files: { '/w/main.js': code }, encoding: 'utf8' });
    expect((await run('process.exitCode = 5')).exitCode).toBe(5);
    expect((await run('process.exit()')).exitCode).toBe(0);
    const rej = await run('Promise.reject(new Error("nope"))');
    expect(rej.exitCode).toBe(1);
    expect(rej.stderr).toContain('Error: nope');
    const handled = await run('process.on("uncaughtException", (e) => console.log("caught", e.message)); setTimeout(() => { throw new Error("x"); }, 1); setTimeout(() => console.log("after"), 20);');
    expect(handled.stdout).toBe('caught x\nafter\n');
    expect(handled.exitCode).toBe(0);
    // A handler of the task's own (libuv's signal pipe, made the fork's own).
    const sig = await run('process.on("SIGTERM", () => process.exit(7)); process.kill(process.pid, "SIGTERM"); setTimeout(() => {}, 5000);');
    expect(sig.exitCode).toBe(7);
    const missing = await t.run(['node', '/w/none.js'], { encoding: 'utf8' });
    expect(missing.exitCode).toBe(1);
    expect(missing.stderr).toContain("Cannot find module '/w/none.js'");
  });

  it('rejects a missing program and a missing cwd as Sandbox.exec does; execs other commands and node with options of its own', async () => {
    await expect(t.run(['/no/such/program'])).rejects.toMatchObject({ code: 'ESETUP', step: 'exec', errno: 'ENOENT' });
    await expect(t.run(['node', '-e', '0'], { cwd: '/no/such/dir' })).rejects.toMatchObject({ code: 'ESETUP', step: 'cwd', errno: 'ENOENT' });
    expect((await t.run(['sh', '-c', 'echo $$'], { encoding: 'utf8' })).stdout).toBe('1\n');
    // node with options of its own: a cold node (exec'd), which has them.
    const o = await t.run(['node', '--max-old-space-size=64', '-e', 'console.log(process.execArgv[0], process.pid)'], { encoding: 'utf8' });
    expect(o.stdout).toBe('--max-old-space-size=64 1\n');
  });

  it('OOM-kills a fork alone: a sibling and the zygote live on', async () => {
    const sibling = t.run(['node', '-e', 'setTimeout(() => console.log("alive"), 1500)'], { encoding: 'utf8' });
    const hog = await t.run(['node', '-e', 'const b = []; for (;;) b.push(Buffer.alloc(8 << 20, 1));'], { encoding: 'utf8' });
    expect(hog.reason).toBe('oom');
    expect((await sibling).stdout).toBe('alive\n');
    expect((await t.run(['node', '-p', '2'], { encoding: 'utf8' })).stdout).toBe('2\n');
  });

  it(`stays correct run after run: ${Object.keys(WORKLOADS).join(', ')} (${STRESS} times each, 2 at a time)`, async () => {
    const only = process.env.HUTCH_NODE_WORKLOADS?.split(',');
    const jobs = Object.entries(WORKLOADS).filter(([name]) => !only || only.includes(name)).flatMap(([name, w]) => Array.from({ length: STRESS }, (_, i) => ({ name, w, i })));
    let next = 0;
    const failures: string[] = [];
    const worker = async (): Promise<void> => {
      while (next < jobs.length) {
        const { name, w, i } = jobs[next++]!;
        const r = await t.run(['node', '/w/main.js'], { files: { '/w/main.js': w.code }, encoding: 'utf8', timeoutMs: 20_000 });
        try {
          if (name !== 'exit3' && name !== 'throw') {
            expect(r.stderr, name).toBe('');
            expect(r.exitCode, name).toBe(0);
          }
          w.check({ stdout: r.stdout as string, stderr: r.stderr as string, exitCode: r.exitCode });
        } catch (e) {
          failures.push(`${name} #${i}: ${r.reason} ${r.exitCode} ${r.signal} ${(e as Error).message.slice(0, 300)}`);
        }
      }
    };
    await Promise.all([worker(), worker()]);
    expect(failures).toEqual([]);
  }, 3_600_000);

  it("ends as node ends after V8 used its worker threads: 'beforeExit', then 'exit', after full collections", async () => {
    const gc = 'require("v8").setFlagsFromString("--expose-gc"); const gc = require("vm").runInNewContext("gc");';
    // node's own end of the loop (DrainTasks: the fork's pool, then the foreground tasks).
    const one = await t.run(['node', '-e', `${gc} for (let i = 0; i < 8; i++) gc(); let n = 0; process.on("beforeExit", () => { console.log("beforeExit", n); if (n++ < 2) setTimeout(() => gc(), 5); }); process.on("exit", (c) => console.log("exit", c)); setTimeout(() => console.log("after"), 10);`], { encoding: 'utf8', timeoutMs: 20_000 });
    expect(one).toMatchObject({ stdout: 'after\nbeforeExit 0\nbeforeExit 1\nbeforeExit 2\nexit 0\n', stderr: '', reason: 'exit', exitCode: 0 });
  });

  it("starts the fork's worker threads only when V8 posts work: none for a hello world, at most node's pool for a collection-heavy task", async () => {
    const count = 'process.on("exit", () => console.log(require("fs").readdirSync("/proc/self/task").length));';
    const hello = await t.run(['node', '-e', `${count} console.log("hi")`], { encoding: 'utf8' });
    expect(hello.stdout).toBe('hi\n1\n');
    // Concurrent marking and sweeping post to the pool, which grows up to the platform's
    // NumberOfWorkerThreads (node 20: its 4 workers and its delayed-task scheduler's thread).
    const heavy = await t.run(['node', '-e', `${count} let a = []; for (let i = 0; i < 3e6; i++) { a.push({ i }); if (a.length > 1e6) a = []; }`], { encoding: 'utf8', timeoutMs: 20_000 });
    const n = Number(heavy.stdout);
    expect(n).toBeGreaterThan(1);
    expect(n).toBeLessThanOrEqual(1 + 5);
  });

  it("packs V8's heap pages together (addon/zygote/mmap_hint.c): a fork's heap spans few 1 GiB regions, its page tables stay small", async () => {
    // 40 MiB of live objects: about 160 heap pages of 256 KiB, which V8 asks for at random
    // addresses (each then needs page tables of its own at every level).
    const code = `const keep = []; for (let i = 0; i < 6e5; i++) keep.push({ i, s: 'x' + i });
const fs = require('fs');
const regions = new Set(fs.readFileSync('/proc/self/maps', 'utf8').trim().split('\\n').filter((l) => / rw-p 00000000 00:00 0 *$/.test(l)).map((l) => BigInt('0x' + l.split('-')[0]) >> 30n));
console.log(keep.length, regions.size, /VmPTE:\\s+(\\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]);`;
    const r = await t.run(['node', '-e', code], { encoding: 'utf8', timeoutMs: 20_000 });
    expect(r.stderr).toBe('');
    const [n, regions, pteKiB] = (r.stdout as string).trim().split(' ').map(Number);
    expect(n).toBe(6e5);
    expect(regions).toBeLessThan(16);
    expect(pteKiB).toBeLessThan(1024);
  });

  it('fork() gives a Sandbox whose init is hutch-init', async () => {
    const sb = await t.fork();
    try {
      expect((await sb.exec(['cat', '/proc/1/comm'], { encoding: 'utf8' })).stdout).toBe('hutch-init\n');
    } finally {
      await sb.destroy();
    }
  });

  it('recreates a zygote that was killed, and runs on', async () => {
    const z = t.zygoteProcess!;
    z.kill('SIGKILL');
    await z.result;
    expect((await t.run(['node', '-p', '"again"'], { encoding: 'utf8' })).stdout).toBe('again\n');
    expect(t.zygoteProcess).not.toBe(z);
  });
});

describe.skipIf(skip)('node templates: lifetime', () => {
  it('rejects a preload that fails, within seconds, and close() leaves no cgroup', async () => {
    await expect(Sandbox.template({ zygote: 'node', preload: ['no-such-module-x'] })).rejects.toMatchObject({ code: 'ESETUP', step: 'zygote', message: /no-such-module-x/ });
    const t = await Sandbox.template({ zygote: 'node', size: 2 });
    const running = t.run(['node', '-e', 'setTimeout(() => {}, 30000)']);
    await new Promise((r) => setTimeout(r, 500));
    await t.close();
    expect((await running).reason).toBe('killed');
    await Sandbox.settle();
    expect(cgroupIds()).toEqual([]);
  });
});
