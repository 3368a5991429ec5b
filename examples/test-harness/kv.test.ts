/**
 * An example spec using the fixture: every test gets its own sandbox and its own service,
 * started before the test and destroyed after it.
 *
 *   npx vitest run --root examples/test-harness
 */
import { describe, expect, test } from './fixture.js';

describe('the kv service, one fresh sandbox per test', () => {
  test('stores and returns a value', async ({ kv }) => {
    const put = await fetch(`${kv.url}/kv/greeting`, { method: 'PUT', body: 'hello' });
    expect(put.status).toBe(201);
    const got = await fetch(`${kv.url}/kv/greeting`);
    expect(got.status).toBe(200);
    expect(await got.text()).toBe('hello');
    expect(kv.logs()).toContain('PUT greeting 5 bytes');
  });

  test('starts empty: nothing of the previous test is left', async ({ kv }) => {
    const got = await fetch(`${kv.url}/kv/greeting`);
    expect(got.status).toBe(404);
  });

  test('is a separate machine: its own processes, its own files', async ({ kv }) => {
    // Look inside the service's sandbox with exec.
    const ps = await kv.sandbox.exec('cat /proc/[0-9]*/comm', { encoding: 'utf8' });
    const names = (ps.stdout as string).trim().split('\n');
    expect(names).toContain('node');
    expect(names.length).toBeLessThan(6); // init, the service, this shell and cat: no host process
    expect((await kv.sandbox.readFile('/srv/kv.js')).toString()).toContain('createServer');
    // The service runs as uid 65534 inside; the sandbox's root is not the host's root either.
    const id = await kv.sandbox.exec(['cat', '/proc/self/uid_map'], { encoding: 'utf8' });
    expect(id.stdout).not.toMatch(/^\s*0\s+0\s/);
  });

  test('a crash of the service is seen, and stays in its sandbox', async ({ kv }) => {
    kv.process.kill('SIGKILL');
    const r = await kv.process.result;
    expect(r.reason).toBe('killed');
    await expect(fetch(`${kv.url}/health`, { signal: AbortSignal.timeout(2000) })).rejects.toThrow();
  });
});

describe('busybox httpd with no network, reached through exec', () => {
  test('serves its page on the sandbox loopback', async ({ httpd }) => {
    expect(await httpd.get('/index.html')).toContain('hello from busybox httpd');
    await expect(httpd.get('/missing')).rejects.toThrow(/404|failed/);
  });

  test('has no way out: no interface but lo', async ({ httpd }) => {
    const r = await httpd.sandbox.exec("sed -n '3,$p' /proc/net/dev | cut -d: -f1", { encoding: 'utf8' });
    expect((r.stdout as string).trim().split(/\s+/)).toEqual(['lo']);
  });
});
