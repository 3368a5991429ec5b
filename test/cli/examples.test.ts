/**
 * The three examples, run for real as a user would: the code runner as a server (HTTP, then
 * its page in headless chromium), the test harness through its own vitest command, the job
 * runner on the sample scripts. Every process started here is ended here, by its pid.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium, runInPage, TerminalTab } from '../../examples/code-runner/browser.js';
import { needs, needsRootWith } from '../helpers/require.js';
import { makeInet, type Inet } from '../../bench/inet.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const DIST = join(ROOT, 'dist', 'examples');
const SERVER = join(DIST, 'code-runner', 'server.js');
const JOB = join(DIST, 'job-runner', 'run.js');
const SAMPLES = join(ROOT, 'examples', 'job-runner', 'samples');

/** The environment for a child: ours without vitest's own markers (the nested vitest must not see them). */
function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('VITEST') && k !== 'TEST' && k !== 'NODE_ENV' && k !== 'FORCE_COLOR') env[k] = v;
  env.NO_COLOR = '1';
  return env;
}

function newest(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) t = Math.max(t, newest(p));
    else if (e.name.endsWith('.ts')) t = Math.max(t, statSync(p).mtimeMs);
  }
  return t;
}

/** `npm test` compiles first; run alone, this compiles when dist/ is older than the sources. */
function ensureBuilt(): void {
  const outs = [SERVER, JOB, join(DIST, 'code-runner', 'service.js'), join(ROOT, 'dist', 'lib', 'index.js')];
  const oldest = Math.min(...outs.map((p) => (existsSync(p) ? statSync(p).mtimeMs : 0)));
  if (oldest >= Math.max(newest(join(ROOT, 'lib')), newest(join(ROOT, 'examples')))) return;
  // tsc emits even with type errors elsewhere in the tree; what matters is that the files exist.
  spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.json')], { cwd: ROOT, stdio: 'ignore', timeout: 180_000 });
  for (const p of outs) if (!existsSync(p)) throw new Error(`${p} is missing after tsc`);
}

/** Starts a long-running example and waits for a line matching `ready`. */
async function start(args: string[], ready: RegExp, timeoutMs = 30_000): Promise<{ child: ChildProcess; match: RegExpMatchArray; output: () => string }> {
  const child = spawn(process.execPath, args, { cwd: ROOT, env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const match = await new Promise<RegExpMatchArray>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${ready} within ${timeoutMs} ms:\n${out}`)), timeoutMs);
    const check = (): void => {
      const m = ready.exec(out);
      if (m) {
        clearTimeout(t);
        resolve(m);
      }
    };
    child.stdout!.on('data', check);
    child.once('exit', (code, sig) => {
      clearTimeout(t);
      reject(new Error(`exited (${code ?? sig}) before it was ready:\n${out}`));
    });
  });
  return { child, match, output: () => out };
}

/** Ends a child we started: SIGTERM, then SIGKILL after `graceMs`. Resolves with its exit code. */
async function stop(child: ChildProcess, graceMs = 10_000): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
  const code = await exited;
  clearTimeout(t);
  return code;
}

/** Runs a command to its end with a time limit. */
function run(args: string[], options: { input?: string; timeoutMs?: number } = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: ROOT, env: childEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const t = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.once('error', reject);
    child.once('close', (status) => {
      clearTimeout(t);
      resolve({ status, stdout, stderr });
    });
    child.stdin.end(options.input ?? '');
  });
}

beforeAll(() => ensureBuilt(), 200_000);

/** The cgroup directories (cgroupfs) of each sandbox a process runs: its children's (the inits'). */
function sandboxCgroups(pid: number): Map<number, string[]> {
  const out = new Map<number, string[]>();
  const kids: number[] = [];
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      kids.push(...readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
    } catch {}
  }
  const unified = existsSync('/sys/fs/cgroup/unified') ? '/sys/fs/cgroup/unified' : '/sys/fs/cgroup';
  for (const k of kids) {
    let text = '';
    try {
      text = readFileSync(`/proc/${k}/cgroup`, 'utf8');
    } catch {
      continue;
    }
    const dirs: string[] = [];
    for (const line of text.trim().split('\n')) {
      const [, ctl, path] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
      if (path === undefined || !path.includes('hutch')) continue;
      const ctls = ctl === '' ? [''] : ctl!.split(',').filter((c) => !c.startsWith('name='));
      for (const c of ctls) dirs.push(c === '' ? unified + path : `/sys/fs/cgroup/${ctl}${path}`);
    }
    const live = [...new Set(dirs)].filter((d) => existsSync(d));
    if (live.length) out.set(k, live);
  }
  return out;
}

describe('code runner', () => {
  let server: Awaited<ReturnType<typeof start>>;
  let url: string;

  beforeAll(async () => {
    server = await start([SERVER, '--port', '0', '--pool-size', '1', '--max-concurrent', '2', '--max-queue', '1', '--max-timeout', '5000', '--terminal-idle', '8000'], /listening on (http:\/\/\S+)/);
    url = server.match[1]!;
  }, 60_000);

  afterAll(async () => {
    if (server) expect(await stop(server.child)).toBe(0); // SIGTERM: it closes its pools and exits 0
  }, 30_000);

  async function post(body: unknown): Promise<{ status: number; headers: Headers; json: Record<string, any> }> {
    const r = await fetch(`${url}/run`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
    return { status: r.status, headers: r.headers, json: (await r.json()) as Record<string, any> };
  }

  it('runs python, node and sh with stdin, and answers with output, status and usage', async () => {
    const py = await post({ language: 'python', source: 'import sys\nprint("py", sys.stdin.read().upper())', stdin: 'abc' });
    expect(py.status).toBe(200);
    expect(py.json).toMatchObject({ stdout: 'py ABC\n', stderr: '', exitCode: 0, signal: null, reason: 'exit', truncated: false });
    expect(py.json.usage.wallMs).toBeGreaterThan(0);
    expect(py.json.usage.memoryPeakBytes).toBeGreaterThan(0);
    const js = await post({ language: 'node', source: 'console.log("uid", process.getuid()); console.error("to stderr"); process.exit(3)' });
    expect(js.json).toMatchObject({ stdout: 'uid 65534\n', stderr: 'to stderr\n', exitCode: 3, reason: 'exit' });
    const sh = await post({ language: 'sh', source: 'read x; echo "sh $x"; cat /etc/shadow', stdin: 'in\n' });
    expect(sh.json.stdout).toBe('sh in\n');
    expect(sh.json.exitCode).not.toBe(0);
  });

  it('clamps limits to the server maxima and enforces them', async () => {
    const clamped = await post({ language: 'python', source: 'print(1)', limits: { timeoutMs: 99_999_999 } });
    expect(clamped.json.limits.timeoutMs).toBe(5000);
    const short = await post({ language: 'python', source: 'while True: pass', limits: { timeoutMs: 300 } });
    expect(short.json).toMatchObject({ reason: 'timeout', exitCode: null, signal: 'SIGKILL' });
    const big = await post({ language: 'sh', source: 'true', limits: { memory: 1e15, pids: 1e6 } });
    expect(big.json.limits).toMatchObject({ memory: 256 * 1024 * 1024, pids: 64 });
    const oom = await post({ language: 'python', source: 'x = bytearray(200 * 1024 * 1024)\nprint("no")', limits: { memory: 32 * 1024 * 1024 } });
    expect(oom.json).toMatchObject({ reason: 'oom', stdout: '' });
    expect(oom.json.usage.oomKills).toBeGreaterThanOrEqual(1);
    const loud = await post({ language: 'python', source: 'print("x" * 100000)', limits: { output: 1000 } });
    expect(loud.json).toMatchObject({ reason: 'output-limit', truncated: true });
    expect(loud.json.stdout.length).toBe(1000);
  }, 40_000);

  it('answers 400 for bad input, with hutch\'s own EINVAL message for a limit it refuses', async () => {
    expect((await post('{not json')).status).toBe(400);
    const lang = await post({ language: 'ruby', source: 'puts 1' });
    expect(lang.status).toBe(400);
    expect(lang.json.error.message).toMatch(/python, node, sh/);
    const unknown = await post({ language: 'sh', source: 'true', limits: { memroy: 1 } });
    expect(unknown.status).toBe(400);
    expect(unknown.json.error.message).toMatch(/memroy/);
    const negative = await post({ language: 'sh', source: 'true', limits: { memory: -1 } });
    expect(negative.status).toBe(400);
    expect(negative.json.error).toMatchObject({ code: 'EINVAL' });
    expect(negative.json.error.message).toMatch(/limits\.memory/);
    expect((await fetch(`${url}/nowhere`)).status).toBe(404);
  });

  it('runs at most --max-concurrent at once, queues --max-queue, and answers 429 past that', async () => {
    const slow = { language: 'sh', source: 'sleep 2; echo done' };
    const all = await Promise.all([post(slow), post(slow), post(slow), post(slow), post(slow)]);
    const statuses = all.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 200).length).toBe(3); // 2 running + 1 queued
    expect(statuses.filter((s) => s === 429).length).toBe(2);
    const busy = all.find((r) => r.status === 429)!;
    expect(busy.headers.get('retry-after')).toBe('1');
    for (const r of all.filter((x) => x.status === 200)) expect(r.json.stdout).toBe('done\n');
  }, 30_000);

  it('serves a page that runs a program typed into it, in headless chromium', async (ctx) => {
    const chromium = process.env.CHROMIUM ?? 'chromium';
    const found = chromium.includes('/') ? existsSync(chromium) : (process.env.PATH ?? '').split(delimiter).some((d) => existsSync(join(d, chromium)));
    const skip = needs(found, 'chromium is not installed (apt-get install chromium)');
    if (skip) return ctx.skip(skip);
    const page = await fetch(`${url}/`);
    expect(page.headers.get('content-type')).toMatch(/text\/html/);
    const browser = await launchChromium(chromium);
    try {
      const panes = await runInPage(browser, `${url}/`, {
        language: 'python',
        source: 'import sys\nname = sys.stdin.read().strip()\nprint(f"hello, {name}: {6 * 7}")\n',
        stdin: 'chromium',
      });
      expect(panes).toMatchObject({ stdout: 'hello, chromium: 42\n', stderr: '', status: 'exit 0' });
      expect(panes.usage).toMatch(/peak memory [\d.]+ MiB/);
    } finally {
      await browser.close();
    }
  }, 90_000);
});

// Traffic only to the namespace and addresses makeInet makes (198.19.x.0/24) and to the
// resolver hutch makes on each sandbox's link.
describe('code runner with a domain list, and python and node from templates', () => {
  const skip = needsRootWith('the code runner with --domain', ['ip', 'openssl']);
  let inet: Inet | undefined;
  let named: Awaited<ReturnType<typeof start>> | undefined;
  let warm: Awaited<ReturnType<typeof start>> | undefined;

  beforeAll(async () => {
    if (skip) return;
    inet = await makeInet(240 + (process.pid % 10)); // 240-249: the /24s of this file (bench/inet.ts)
    // python from a template here: each fork gets its own link and name check (docs/templates.md, "Network").
    named = await start([SERVER, '--port', '0', '--pool-size', '1', '--domain', 'ok.example', '--dns-server', inet.dns, '--template', 'python'], /listening on (http:\/\/\S+)/);
    warm = await start([SERVER, '--port', '0', '--pool-size', '1', '--template', 'python', '--template', 'node'], /listening on (http:\/\/\S+)/);
  }, 90_000);

  afterAll(async () => {
    for (const s of [named, warm]) if (s) expect(await stop(s.child)).toBe(0);
    inet?.close();
  }, 30_000);

  async function post(server: typeof named, body: unknown): Promise<Record<string, any>> {
    const r = await fetch(`${server!.match[1]}/run`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const json = (await r.json()) as Record<string, any>;
    expect(r.status, JSON.stringify(json)).toBe(200);
    return json;
  }

  it('reaches the names it was given and nothing else, and answers with what was refused', async (ctx) => {
    if (skip) return ctx.skip(skip);
    const source = [
      'import urllib.request, socket',
      'print(urllib.request.urlopen("http://ok.example/", timeout=5).read().decode().strip())',
      'for name in ("other.example", "ok.example.evil.example"):',
      '    try: socket.getaddrinfo(name, 80); print("resolved", name)',
      '    except socket.gaierror: print("refused", name)',
      `s = socket.socket(); s.settimeout(5)`,
      `try: s.connect(("${inet!.b}", 80)); print("connected")`,
      'except OSError as e: print("refused", e.errno)',
    ].join('\n');
    const r = await post(named, { language: 'python', source });
    expect(r.stderr).toBe('');
    // A refused connection fails at once: a reset (ECONNREFUSED) or unreachable (EHOSTUNREACH).
    expect(r.stdout).toMatch(new RegExp(`^hello from ${inet!.a.replace(/\./g, '\\.')}\nrefused other\.example\nrefused ok\.example\.evil\.example\nrefused (111|113)\n$`));
    const hosts = r.violations.map((v: Record<string, unknown>) => `${v.kind} ${v.protocol} ${v.host ?? v.address}`);
    expect(hosts).toEqual(expect.arrayContaining(['network dns other.example', 'network dns ok.example.evil.example', `network tcp ${inet!.b}`]));
    expect(r.violationsDropped).toBe(0);
    // Only the allowed name was asked upstream.
    expect(inet!.seen.filter((l) => l.startsWith('dns ')).every((l) => l.startsWith('dns ok.example '))).toBe(true);
  }, 60_000);

  // Per language: a write, stdin and the pid (1: a template's fork is PID 1 of its own pid
  // namespace; a pooled sandbox's program is not), the write not seen by the next run, an
  // endless loop.
  const WARM = {
    python: ['import os, sys\nopen("/tmp/mark", "w").write("x")\nprint(os.getuid(), sys.stdin.read(), os.getpid())', 'import os\nprint(os.path.exists("/tmp/mark"))', 'False\n', 'while True: pass'],
    node: ['require("fs").writeFileSync("/tmp/mark", "x"); let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(process.getuid(), s, process.pid));', 'console.log(require("fs").existsSync("/tmp/mark"))', 'false\n', 'for (;;);'],
  };
  for (const [language, [write, check, fresh, loop]] of Object.entries(WARM)) it(`serves ${language} from a warm template: same answers, a fresh sandbox each time`, async (ctx) => {
    if (skip) return ctx.skip(skip);
    const a = await post(warm, { language, source: write, stdin: 'hi' });
    expect(a).toMatchObject({ stdout: '65534 hi 1\n', stderr: '', exitCode: 0, reason: 'exit', violations: [] });
    expect((await post(warm, { language, source: check })).stdout).toBe(fresh);
    expect(await post(warm, { language, source: loop, limits: { timeoutMs: 300 } })).toMatchObject({ reason: 'timeout', signal: 'SIGKILL' });
    // sh still comes from a pool.
    expect((await post(warm, { language: 'sh', source: 'echo $((1 + 1))' })).stdout).toBe('2\n');
  }, 60_000);

  it("node's template fork has V8's worker threads: repeated full collections and an async WebAssembly compile end", async (ctx) => {
    if (skip) return ctx.skip(skip);
    const gc = await post(warm, { language: 'node', source: 'require("v8").setFlagsFromString("--expose-gc"); const gc = require("vm").runInNewContext("gc"); for (let i = 0; i < 8; i++) gc(); WebAssembly.compile(Buffer.from("0061736d01000000", "hex")).then(() => console.log("ok"));' });
    expect(gc).toMatchObject({ stdout: 'ok\n', stderr: '', exitCode: 0 });
  }, 60_000);
});

describe('code runner terminal', () => {
  let server: Awaited<ReturnType<typeof start>>;
  let url: string;

  beforeAll(async () => {
    server = await start([SERVER, '--port', '0', '--pool-size', '0', '--terminal-idle', '8000'], /listening on (http:\/\/\S+)/);
    url = server.match[1]!;
  }, 60_000);

  afterAll(async () => {
    if (server) expect(await stop(server.child)).toBe(0);
  }, 30_000);

  it('gives each tab a shell on a pty in its own sandbox: typing, output, resize, and the sandbox gone with the tab', async (ctx) => {
    const chromium = process.env.CHROMIUM ?? 'chromium';
    const found = chromium.includes('/') ? existsSync(chromium) : (process.env.PATH ?? '').split(delimiter).some((d) => existsSync(join(d, chromium)));
    const skip = needs(found, 'chromium is not installed (apt-get install chromium)');
    if (skip) return ctx.skip(skip);
    const js = await fetch(`${url}/xterm/xterm.js`);
    expect(js.status).toBe(200);
    expect(js.headers.get('content-type')).toMatch(/javascript/);
    const before = sandboxCgroups(server.child.pid!);
    const browser = await launchChromium(chromium);
    try {
      const tab = await TerminalTab.open(browser, `${url}/terminal`);
      // Its own sandbox: one more init under the server, with its cgroups.
      const mine = await tab.waitFor(async () => [...sandboxCgroups(server.child.pid!)].filter(([k]) => !before.has(k)), (v) => v.length === 1);
      const dirs = mine[0]![1];
      expect(dirs.length).toBeGreaterThan(0);
      // Type at the prompt, as a person does: busybox's line editor flushes input typed before it.
      const prompt = () => tab.waitFor(() => tab.screen(), (s) => /\/ # ?$/.test(s));
      await prompt();
      await tab.type('echo "sum=$((6*7))"; tty\r');
      const screen = await tab.waitFor(() => tab.screen(), (s) => /^sum=42\n\/dev\/pts\/0$/m.test(s));
      expect(screen).toMatch(/echo "sum=\$\(\(6\*7\)\)"; tty/); // the echo of what was typed
      await prompt();
      await tab.type('clear; stty size\r');
      const first = (await tab.waitFor(() => tab.screen(), (s) => /^\d+ \d+$/m.test(s))).match(/^(\d+) (\d+)$/m)!;
      const [rows0, cols0] = [Number(first[1]), Number(first[2])];
      expect(rows0).toBeGreaterThan(5);
      await tab.setViewport(500, 300); // smaller than the 1000x1000 window
      await prompt();
      await tab.type('clear; stty size\r');
      const second = (await tab.waitFor(() => tab.screen(), (s) => /^\d+ \d+$/m.test(s) && s.match(/^(\d+) (\d+)$/m)![0] !== first[0])).match(/^(\d+) (\d+)$/m)!;
      expect(Number(second[1])).toBeLessThan(rows0);
      expect(Number(second[2])).toBeLessThan(cols0);
      // Ctrl-C reaches the shell's foreground job.
      await prompt();
      await tab.type('sleep 100\r');
      await new Promise((r) => setTimeout(r, 300));
      await tab.type('\x03');
      await prompt();
      await tab.type('echo "rc=$?"\r');
      await tab.waitFor(() => tab.screen(), (s) => /^rc=130$/m.test(s));
      await tab.close();
      await tab.waitFor(async () => dirs.filter((d) => existsSync(d)), (left) => left.length === 0);
      // Idle: a tab that types nothing is closed after --terminal-idle, its sandbox with it.
      const idleBefore = sandboxCgroups(server.child.pid!);
      const idle = await TerminalTab.open(browser, `${url}/terminal`);
      const idleDirs = (await idle.waitFor(async () => [...sandboxCgroups(server.child.pid!)].filter(([k]) => !idleBefore.has(k)), (v) => v.length === 1))[0]![1];
      expect(await idle.waitFor(() => idle.status(), (s) => s !== 'connected', 30_000)).toBe('closed: idle timeout');
      await idle.waitFor(async () => idleDirs.filter((d) => existsSync(d)), (left) => left.length === 0);
      await idle.close();
    } finally {
      await browser.close();
    }
  }, 120_000);
});

describe('test harness', () => {
  it('passes its own suite with its one command', async () => {
    const r = await run([join(ROOT, 'node_modules', 'vitest', 'vitest.mjs'), 'run', '--root', 'examples/test-harness'], { timeoutMs: 120_000 });
    // eslint-disable-next-line no-control-regex
    const out = (r.stdout + r.stderr).replace(/\x1b\[[0-9;]*m/g, '');
    expect(out, out).toMatch(/Tests\s+\S*6 passed/);
    expect(r.status, out).toBe(0);
  }, 130_000);
});

describe('job runner', () => {
  const report = (stderr: string, row: string): string => new RegExp(`^${row}\\s+(.*)$`, 'm').exec(stderr)?.[1]?.trim() ?? '';

  it('runs a script and prints the usage report', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hutch-example-job-'));
    try {
      const r = await run([JOB, '--json', join(dir, 'r.json'), join(SAMPLES, 'primes.py'), '10000']);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toBe('1229 primes below 10000\n');
      expect(r.stderr).toMatch(/^== job report: primes\.py \(python\)$/m);
      expect(report(r.stderr, 'reason')).toBe('exit');
      expect(report(r.stderr, 'exit')).toBe('code 0');
      for (const row of ['wall', 'cpu', 'peak memory', 'pids', 'oom kills', 'output', 'network']) expect(report(r.stderr, row)).not.toBe('');
      const json = JSON.parse(readFileSync(join(dir, 'r.json'), 'utf8'));
      expect(json).toMatchObject({ language: 'python', reason: 'exit', exitCode: 0, oomKills: 0, network: 'none', budget: { timeMs: 10_000, memory: '256MiB' } });
      expect(json.memoryPeakBytes).toBeGreaterThan(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('stops a job at its memory and time budgets', async () => {
    const hog = await run([JOB, '--memory', '64MiB', join(SAMPLES, 'hog.py')]);
    expect(hog.status).toBe(137);
    expect(report(hog.stderr, 'reason')).toBe('oom');
    expect(report(hog.stderr, 'oom kills')).toBe('1');
    expect(hog.stdout).toMatch(/holding 16 MiB/);
    expect(hog.stdout).not.toMatch(/never stopped/);
    const spin = await run([JOB, '--time', '800ms', join(SAMPLES, 'spin.js')]);
    expect(spin.status).toBe(124);
    expect(report(spin.stderr, 'reason')).toBe('timeout');
  });

  it('takes a script on stdin and gives it the network it was budgeted', async () => {
    const none = await run([JOB, '--lang', 'sh', '-'], { input: readFileSync(join(SAMPLES, 'netinfo.sh'), 'utf8') });
    expect(none.status, none.stderr).toBe(0);
    expect(none.stdout).toMatch(/interfaces:\n {2}lo\ndefault route: $/m);
    const bridge = await run([JOB, '--network', 'bridge', '--bandwidth', '1mbit', join(SAMPLES, 'netinfo.sh')]);
    expect(bridge.status, bridge.stderr).toBe(0);
    expect(bridge.stdout).toMatch(/^ {2}eth0$/m);
    expect(report(bridge.stderr, 'network')).toMatch(/^bridge at 1mbit/);
    const bad = await run([JOB, '--memory', 'lots', join(SAMPLES, 'primes.py')]);
    expect(bad.status).toBe(125);
    expect(bad.stderr).toMatch(/EINVAL: invalid option limits\.memory/);
  });
});
