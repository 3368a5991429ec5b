/**
 * A vitest fixture that gives each test a fresh sandbox with a service running inside and
 * throws it all away after the test, pass or fail:
 *
 * - `kv`: a small HTTP key-value service (node, from the host image) in a sandbox with its
 *   own network link (`network: { mode: 'bridge' }`), reached from the test at
 *   `http://<sb.network.address>:8080`. Nothing else can reach it and it can reach nothing,
 *   the host included (no `hostPorts`).
 * - `httpd`: busybox `httpd` in a sandbox with no network at all (the default: only a
 *   private loopback), reached from inside with `sb.exec(['wget', ...])`.
 *
 * ```ts
 * import { expect } from 'vitest';
 * import { test } from './fixture.js';
 *
 * test('stores a value', async ({ kv }) => {
 *   await fetch(`${kv.url}/kv/a`, { method: 'PUT', body: '1' });
 *   expect(await (await fetch(`${kv.url}/kv/a`)).text()).toBe('1');
 * });
 * ```
 *
 * When a test fails, the service's own output is printed with the failure.
 */
import { test as base } from 'vitest';
import { Sandbox, type SandboxProcess } from '../../lib/index.js';

/** The service under test, in its sandbox. */
export interface Service {
  /** Base URL of the service, as seen from the test. */
  url: string;
  /** The sandbox it runs in: exec into it, read its files, look at its usage. */
  sandbox: Sandbox;
  /** The service's process inside the sandbox. */
  process: SandboxProcess;
  /** What the service printed so far (stdout and stderr, interleaved). */
  logs(): string;
}

/** busybox httpd serving /www inside a sandbox with no network. */
export interface OfflineHttpd {
  sandbox: Sandbox;
  /** GET `path` from inside the sandbox (busybox wget); resolves with the body, or rejects with wget's error. */
  get(path: string): Promise<string>;
}

/** The service: an in-memory key-value store on node's http. GET/PUT/DELETE /kv/:key, GET /health. */
const KV_SERVER = `
const http = require('http');
const store = new Map();
http.createServer((req, res) => {
  const m = /^\\/kv\\/([\\w.-]+)$/.exec(req.url);
  if (req.url === '/health') return res.end('ok');
  if (!m) { res.statusCode = 404; return res.end('no route'); }
  const key = m[1];
  if (req.method === 'GET') {
    if (!store.has(key)) { res.statusCode = 404; return res.end(); }
    return res.end(store.get(key));
  }
  if (req.method === 'DELETE') { store.delete(key); res.statusCode = 204; return res.end(); }
  if (req.method === 'PUT') {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => { store.set(key, body); console.log('PUT', key, body.length, 'bytes'); res.statusCode = 201; res.end(); });
    return;
  }
  res.statusCode = 405; res.end();
}).listen(8080, '0.0.0.0', () => console.log('listening on 8080'));
`;

const PORT = 8080;

/** Waits until `url` answers, or throws after `timeoutMs` with what the service printed. */
async function waitForHttp(url: string, timeoutMs: number, logs: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(1000) });
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`the service did not answer ${url} within ${timeoutMs} ms; it printed:\n${logs()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const test = base.extend<{ kv: Service; httpd: OfflineHttpd }>({
  kv: async ({ onTestFailed }, use) => {
    const sandbox = await Sandbox.create({
      image: 'host',
      network: { mode: 'bridge' },
      limits: { memory: '256MiB', pids: 64 },
      env: { HOME: '/tmp' },
    });
    try {
      // writeFile does not make directories: mkdir inside first.
      await sandbox.exec(['mkdir', '-p', '/srv']);
      await sandbox.writeFile('/srv/kv.js', KV_SERVER);
      const proc = sandbox.spawn(['node', '/srv/kv.js'], { user: 65534 });
      let out = '';
      proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
      proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const url = `http://${sandbox.network!.address}:${PORT}`;
      await waitForHttp(`${url}/health`, 10_000, () => out);
      onTestFailed(() => console.error(`--- kv service output (sandbox ${sandbox.id}) ---\n${out}`));
      await use({ url, sandbox, process: proc, logs: () => out });
    } finally {
      // Destroying the sandbox kills the service and frees its link, cgroup and root.
      await sandbox.destroy();
    }
  },

  httpd: async ({}, use) => {
    const sandbox = await Sandbox.create({ image: 'busybox', limits: { memory: '64MiB', pids: 32 } });
    try {
      await sandbox.exec(['mkdir', '-p', '/www']);
      await sandbox.writeFile('/www/index.html', '<h1>hello from busybox httpd</h1>\n');
      // -f: stay in the foreground, so the process is ours and ends with the sandbox.
      sandbox.spawn(['httpd', '-f', '-p', `127.0.0.1:${PORT}`, '-h', '/www']);
      const ready = await sandbox.exec(`for i in $(seq 100); do wget -q -O /dev/null http://127.0.0.1:${PORT}/ && exit 0; sleep 0.05; done; exit 1`, { timeoutMs: 10_000 });
      if (ready.exitCode !== 0) throw new Error('busybox httpd did not answer inside its sandbox');
      await use({
        sandbox,
        async get(path) {
          const r = await sandbox.exec(['wget', '-q', '-O', '-', `http://127.0.0.1:${PORT}${path}`], { encoding: 'utf8', timeoutMs: 5000 });
          if (r.exitCode !== 0) throw new Error(`GET ${path} failed inside the sandbox: ${(r.stderr as string).trim() || r.reason}`);
          return r.stdout as string;
        },
      });
    } finally {
      await sandbox.destroy();
    }
  },
});

export { expect, describe } from 'vitest';
