/**
 * The code runner as a library: an HTTP service in the style of Piston or Judge0 on Node's
 * own `http`. `POST /run` takes `{ language, source, stdin?, limits? }` and answers
 * `{ stdout, stderr, exitCode, signal, reason, truncated, usage, limits }`; `GET /` serves a
 * small page to try it. server.ts is the command line around it.
 *
 * How a request runs:
 * - each language has a pool of ready sandboxes (`Sandbox.pool`) with the server's maximum
 *   limits; a request takes a fresh one, writes its source in, runs it once and destroys it;
 * - a request may ask for tighter limits than the server's (less memory, fewer pids, fewer
 *   cpus, a shorter timeout, a smaller output cap); larger values are clamped to the maxima.
 *   Timeout and output cap are per exec, so any pooled sandbox serves them; tighter memory,
 *   pids or cpus need a sandbox made with those limits (`Sandbox.create`, off the pool);
 * - at most `maxConcurrent` requests run at once and `maxQueue` wait; past that: 429;
 * - bad input is a 400 with a message; a `HutchError` `EINVAL` from hutch (a limit it
 *   refuses) is a 400 too, with hutch's message; any other `HutchError` is a 500 with its code.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { HutchError, Sandbox, type ExecResult, type Limits, type NetworkOptions, type SandboxOptions, type SandboxPool, type SandboxTemplate, type Violation } from '../../lib/index.js';
import { PAGE } from './page.js';
import { createTerminals, type TerminalOptions } from './terminal.js';

export type Language = 'python' | 'node' | 'sh';

/** How each language is run: the file its source goes to and the command that runs it. */
export const LANGUAGES: Record<Language, { file: string; command: string[] }> = {
  python: { file: '/tmp/main.py', command: ['python3', '-B', '/tmp/main.py'] },
  node: { file: '/tmp/main.js', command: ['node', '/tmp/main.js'] },
  sh: { file: '/tmp/main.sh', command: ['/bin/sh', '/tmp/main.sh'] },
};

/** The limits a request may set, as numbers (bytes, ms, counts). */
export interface RequestLimits {
  timeoutMs: number;
  memory: number;
  pids: number;
  cpus: number;
  output: number;
}

export interface CodeRunnerOptions {
  /** The terminal page (GET /terminal): image, limits, idle timeout, how many at once. */
  terminal?: TerminalOptions;
  /** Ready sandboxes kept per language (default 2). */
  poolSize?: number;
  /** Requests running at once (default 4). */
  maxConcurrent?: number;
  /** Requests waiting for a slot before the server answers 429 (default 16). */
  maxQueue?: number;
  /** The server's maxima, which are also the defaults of a request. */
  maxLimits?: Partial<RequestLimits>;
  /** Largest source and stdin accepted, in bytes (default 64 KiB each). */
  maxSourceBytes?: number;
  /** The uid programs run as inside their sandbox (default 65534, "nobody"). */
  user?: number;
  /**
   * Egress by name: programs may reach these names (and nothing else) through NAT, with no
   * proxy settings; every refusal comes back in the answer's `violations`. Without it, programs
   * have no network at all. `dns` names the upstream resolvers (default: the host's).
   */
  network?: { domains: string[]; dns?: NetworkOptions['dns'] };
  /**
   * Languages served from a template (a warm interpreter forked per request, `Sandbox.template`)
   * instead of a pool of fresh sandboxes: `python`, `node`. A request with tighter memory, pids or
   * cpus than the server's maxima still gets a sandbox of its own.
   */
  templates?: Language[];
}

export const DEFAULT_MAX_LIMITS: RequestLimits = {
  timeoutMs: 10_000,
  memory: 256 * 1024 * 1024,
  pids: 64,
  cpus: 1,
  output: 1024 * 1024,
};

/** What `POST /run` answers. */
export interface RunResponse {
  language: Language;
  stdout: string;
  stderr: string;
  exitCode: number | null;
  signal: string | null;
  reason: ExecResult['reason'];
  truncated: boolean;
  usage: ExecResult['usage'];
  /** The limits the program ran under, after clamping. */
  limits: RequestLimits;
  /** What it tried and was refused (names, connections, system calls), at most 100. */
  violations: Violation[];
  /** Refusals beyond those listed. */
  violationsDropped: number;
}

/** A request's problem, answered as `{ error: { code, message } }` with this status. */
class RequestError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

const LIMIT_KEYS = Object.keys(DEFAULT_MAX_LIMITS) as (keyof RequestLimits)[];

/** Checks a request body and clamps its limits to the server's maxima. */
export function parseRunRequest(
  body: unknown,
  max: RequestLimits,
  maxSourceBytes: number,
): { language: Language; source: string; stdin: string; limits: RequestLimits } {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new RequestError(400, 'EINVAL', 'the body must be a JSON object: { language, source, stdin?, limits? }');
  }
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b)) {
    if (!['language', 'source', 'stdin', 'limits'].includes(k)) throw new RequestError(400, 'EINVAL', `unknown field "${k}"; the fields are language, source, stdin, limits`);
  }
  if (typeof b.language !== 'string' || !(b.language in LANGUAGES)) {
    throw new RequestError(400, 'EINVAL', `language must be one of ${Object.keys(LANGUAGES).join(', ')}, got ${JSON.stringify(b.language)}`);
  }
  if (typeof b.source !== 'string') throw new RequestError(400, 'EINVAL', 'source must be a string');
  if (Buffer.byteLength(b.source) > maxSourceBytes) throw new RequestError(400, 'EINVAL', `source is larger than ${maxSourceBytes} bytes`);
  if (b.stdin !== undefined && typeof b.stdin !== 'string') throw new RequestError(400, 'EINVAL', 'stdin must be a string');
  const stdin = (b.stdin as string | undefined) ?? '';
  if (Buffer.byteLength(stdin) > maxSourceBytes) throw new RequestError(400, 'EINVAL', `stdin is larger than ${maxSourceBytes} bytes`);
  const limits = { ...max };
  if (b.limits !== undefined) {
    if (typeof b.limits !== 'object' || b.limits === null || Array.isArray(b.limits)) {
      throw new RequestError(400, 'EINVAL', `limits must be an object with any of ${LIMIT_KEYS.join(', ')}`);
    }
    for (const [k, v] of Object.entries(b.limits)) {
      if (!LIMIT_KEYS.includes(k as keyof RequestLimits)) {
        throw new RequestError(400, 'EINVAL', `unknown limit "${k}"; a request may set ${LIMIT_KEYS.join(', ')}`);
      }
      if (typeof v !== 'number') throw new RequestError(400, 'EINVAL', `limits.${k} must be a number (bytes, ms or a count)`);
      // Clamp only from above: a value hutch refuses (negative, fractional, zero) goes through
      // and comes back as its EINVAL, which names the limit and the accepted forms.
      limits[k as keyof RequestLimits] = Math.min(v, max[k as keyof RequestLimits]);
    }
  }
  return { language: b.language as Language, source: b.source, stdin, limits };
}

/** A counting semaphore with a bounded queue: `enter` resolves when a slot is free, or throws 429. */
class Gate {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(private readonly max: number, private readonly maxQueue: number) {}

  async enter(): Promise<void> {
    if (this.active < this.max) {
      this.active++;
      return;
    }
    if (this.waiting.length >= this.maxQueue) {
      throw new RequestError(429, 'EBUSY', `busy: ${this.active} running and ${this.waiting.length} waiting; retry later`);
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  leave(): void {
    const next = this.waiting.shift();
    if (next) next(); // the slot passes straight to the next waiter
    else this.active--;
  }

  get stats(): { active: number; queued: number } {
    return { active: this.active, queued: this.waiting.length };
  }
}

export interface CodeRunner {
  readonly server: Server;
  /** Starts listening; resolves with the URL (port 0 picks a free port). */
  listen(port: number, host?: string): Promise<string>;
  /** Stops accepting, waits up to `graceMs` (default 5000) for running requests then aborts them, destroys every pooled sandbox. */
  close(graceMs?: number): Promise<void>;
}

/** Reads a request body up to `limit` bytes. */
async function readBody(req: IncomingMessage, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new RequestError(413, 'EINVAL', `the body is larger than ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, {
    'content-type': typeof body === 'string' ? 'text/html; charset=utf-8' : 'application/json',
    'content-length': String(Buffer.byteLength(text)),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

export function createCodeRunner(options: CodeRunnerOptions = {}): CodeRunner {
  const max: RequestLimits = { ...DEFAULT_MAX_LIMITS, ...options.maxLimits };
  const maxSourceBytes = options.maxSourceBytes ?? 64 * 1024;
  const user = options.user ?? 65534;
  const gate = new Gate(options.maxConcurrent ?? 4, options.maxQueue ?? 16);
  const poolLimits: Limits = { memory: max.memory, pids: max.pids, cpus: max.cpus };
  const env = { HOME: '/tmp', LANG: 'C.UTF-8' };
  const network: SandboxOptions['network'] = options.network
    ? { mode: 'bridge', outbound: 'nat', domains: options.network.domains, ...(options.network.dns ? { dns: options.network.dns } : {}) }
    : 'none';
  const base: SandboxOptions = { image: 'host', env, network };
  // A template per language that asks for one; a pool for the rest. Here they share the host
  // image and the same limits, but each could have its own image (e.g. one built with
  // `ImageStore.build`) and its own limits.
  const templates = new Map<Language, Promise<SandboxTemplate>>();
  for (const lang of options.templates ?? []) {
    if (lang !== 'python' && lang !== 'node') throw new HutchError('EINVAL', `invalid option templates: ${JSON.stringify(lang)} has no template here; templates: ['python', 'node']`);
    const t = Sandbox.template({ ...base, zygote: lang, limits: poolLimits, user, size: options.poolSize ?? 2 });
    t.catch(() => undefined); // reported by the first request that needs it
    templates.set(lang, t);
  }
  const pools = new Map<Language, SandboxPool>();
  for (const lang of Object.keys(LANGUAGES) as Language[]) {
    if (!templates.has(lang)) pools.set(lang, Sandbox.pool({ ...base, size: options.poolSize ?? 2, limits: poolLimits }));
  }
  const running = new Set<Promise<unknown>>();
  const inflight = new Set<AbortController>();

  async function run(body: unknown, signal: AbortSignal): Promise<RunResponse> {
    const req = parseRunRequest(body, max, maxSourceBytes);
    const lang = LANGUAGES[req.language];
    const tighter = req.limits.memory < max.memory || req.limits.pids < max.pids || req.limits.cpus < max.cpus;
    await gate.enter();
    try {
      if (signal.aborted) throw new RequestError(499, 'ECANCELED', 'the client went away');
      const execOptions = {
        stdin: req.stdin,
        user,
        cwd: '/tmp',
        timeoutMs: req.limits.timeoutMs,
        output: req.limits.output,
        encoding: 'utf8' as const,
        signal,
      };
      const answer = (r: ExecResult): RunResponse => ({
        language: req.language,
        stdout: r.stdout as string,
        stderr: r.stderr as string,
        exitCode: r.exitCode,
        signal: r.signal,
        reason: r.reason,
        truncated: r.truncated,
        usage: r.usage,
        limits: req.limits,
        violations: r.violations,
        violationsDropped: r.violationsDropped,
      });
      const template = tighter ? undefined : templates.get(req.language);
      if (template) {
        // The template's forks run as its user; the source is written into the fork before it starts.
        const { user: _, ...forkOptions } = execOptions;
        return answer(await (await template).run(lang.command, { ...forkOptions, files: { [lang.file]: req.source } }));
      }
      // Tighter sandbox-wide limits need a sandbox made with them; the rest come from the pool.
      const sb = tighter
        ? await Sandbox.create({ ...base, limits: { memory: req.limits.memory, pids: req.limits.pids, cpus: req.limits.cpus }, signal })
        : await pools.get(req.language)!.acquire();
      try {
        await sb.writeFile(lang.file, req.source, { mode: 0o644 });
        return answer(await sb.exec(lang.command, execOptions));
      } finally {
        await sb.destroy();
      }
    } finally {
      gate.leave();
    }
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (req.method === 'GET' && (url.pathname === '/' || url.pathname === '/index.html')) return send(res, 200, PAGE);
    if (req.method === 'GET' && url.pathname === '/health') return send(res, 200, { ok: true, ...gate.stats });
    if (url.pathname !== '/run') return send(res, 404, { error: { code: 'ENOENT', message: `no route ${req.method} ${url.pathname}` } });
    if (req.method !== 'POST') return send(res, 405, { error: { code: 'EINVAL', message: 'use POST /run' } }, { allow: 'POST' });
    // Abort the run when the client goes away before the answer.
    const abort = new AbortController();
    inflight.add(abort);
    res.on('close', () => {
      inflight.delete(abort);
      if (!res.writableFinished) abort.abort();
    });
    try {
      const text = await readBody(req, maxSourceBytes * 2 + 4096);
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch (e) {
        throw new RequestError(400, 'EINVAL', `the body is not JSON: ${(e as Error).message}`);
      }
      send(res, 200, await run(body, abort.signal));
    } catch (e) {
      if (e instanceof RequestError) {
        send(res, e.status, { error: { code: e.code, message: e.message } }, e.status === 429 ? { 'retry-after': '1' } : {});
      } else if (HutchError.is(e)) {
        // EINVAL: hutch refused a value the request gave (a limit). Anything else is ours.
        const status = e.code === 'EINVAL' ? 400 : 500;
        if (status === 500) console.error(e);
        send(res, status, { error: { code: e.code, message: e.message, ...(e.step ? { step: e.step } : {}) } });
      } else {
        console.error(e);
        send(res, 500, { error: { code: 'EINTERNAL', message: 'internal error' } });
      }
    }
  }

  // GET /terminal: an interactive shell per tab (terminal.ts).
  const terminals = createTerminals(options.terminal);
  const server = createServer((req, res) => {
    if (terminals.handle(req, res)) return;
    const p = handle(req, res);
    running.add(p);
    void p.finally(() => running.delete(p));
  });

  server.on('upgrade', (req, socket, head) => {
    if (!terminals.upgrade(req, socket, head)) socket.destroy();
  });

  return {
    server,
    async listen(port, host = '127.0.0.1') {
      // A template that cannot be made (e.g. outside host root) fails here, not on a request.
      await Promise.all(templates.values());
      return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          const a = server.address() as AddressInfo;
          resolve(`http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`);
        });
      });
    },
    async close(graceMs = 5000) {
      // Stop accepting; give running requests `graceMs` to finish, then abort them (their
      // processes are killed and their sandboxes destroyed) and drop the connections.
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      await terminals.close();
      const all = Promise.allSettled([...running]);
      let timer: NodeJS.Timeout | undefined;
      const late = await Promise.race([all.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), graceMs)))]);
      clearTimeout(timer);
      if (late) {
        for (const a of inflight) a.abort();
        await all;
      }
      server.closeAllConnections();
      await closed;
      await Promise.all([...pools.values()].map((p) => p.close()));
      await Promise.all([...templates.values()].map(async (t) => (await t.catch(() => null))?.close()));
    },
  };
}
