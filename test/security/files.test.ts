/**
 * writeFile/readFile run with the host's credentials on paths the sandbox controls. A symlink
 * planted inside (absolute, relative `..` chains, /proc magic links) must resolve inside the
 * sandbox's root: a canary file on the host is never read nor written, and a special file
 * planted inside never stalls or fools the host.
 */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HutchError, Sandbox } from '../../lib/index.js';
import { hostMode } from '../../lib/host/mode.js';

const CANARY_TEXT = 'host canary: must never change\n';

describe('writeFile/readFile stay inside the sandbox', () => {
  let sb: Sandbox;
  let dir: string;
  let canary: string;
  let mtime: number;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hutch-canary-'));
    canary = join(dir, 'canary.txt');
    writeFileSync(canary, CANARY_TEXT, { mode: 0o666 });
    mtime = statSync(canary).mtimeMs;
    sb = await Sandbox.create({ image: 'busybox' });
    // The same directory exists inside, so a write that follows a link to the host path has
    // somewhere to land: inside.
    await sb.exec(['mkdir', '-p', dir]);
  });
  afterAll(async () => {
    await sb?.destroy();
    // The canary is checked once more after the sandbox is gone.
    expect(readFileSync(canary, 'utf8')).toBe(CANARY_TEXT);
    rmSync(dir, { recursive: true, force: true });
  });

  const untouched = (): void => {
    expect(readFileSync(canary, 'utf8')).toBe(CANARY_TEXT);
    expect(statSync(canary).mtimeMs).toBe(mtime);
  };

  /** Plants `link -> target` inside, as the sandbox's own root would. */
  const plant = async (link: string, target: string): Promise<void> => {
    const r = await sb.exec(['sh', '-c', 'rm -rf "$1" && mkdir -p "$(dirname "$1")" && ln -s "$2" "$1"', 'sh', link, target], { encoding: 'utf8' });
    expect(r.exitCode, String(r.stderr)).toBe(0);
  };

  /** writeFile through the link: refused, or written inside. Never on the host. */
  const writeThrough = async (path: string): Promise<'refused' | 'inside'> => {
    try {
      await sb.writeFile(path, 'written from the host API\n');
    } catch (e) {
      expect(HutchError.is(e), String(e)).toBe(true);
      untouched();
      return 'refused';
    }
    untouched();
    return 'inside';
  };

  const readThrough = async (path: string): Promise<string | 'refused'> => {
    try {
      return (await sb.readFile(path)).toString('utf8');
    } catch (e) {
      expect(HutchError.is(e), String(e)).toBe(true);
      return 'refused';
    }
  };

  it('an absolute symlink to a host path resolves in the sandbox: written inside, host untouched', async () => {
    await plant('/tmp/abs', canary);
    expect(await readThrough('/tmp/abs')).toBe('refused'); // the path does not exist inside (yet)
    expect(await writeThrough('/tmp/abs')).toBe('inside');
    // It landed at the same path inside the sandbox's root.
    const r = await sb.exec(['cat', canary], { encoding: 'utf8' });
    expect(r.stdout).toBe('written from the host API\n');
    expect(await readThrough('/tmp/abs')).toBe('written from the host API\n');
  });

  it('a relative ../ chain longer than the path stops at the sandbox root', async () => {
    const up = '../'.repeat(40);
    await plant('/var/x/y/rel', `${up}${canary.slice(1)}`);
    expect(await writeThrough('/var/x/y/rel')).toBe('inside');
    await plant('/etc/evil-dir', `${up}${dir.slice(1)}`);
    expect(await writeThrough('/etc/evil-dir/canary.txt')).toBe('inside');
    // A ../ chain in the API's own path is normalised and stays inside too.
    expect(await writeThrough(`/tmp/${up}${canary.slice(1)}`)).toBe('inside');
  });

  it('a directory symlink to the host dir, and a chain of links, resolve inside', async () => {
    await plant('/tmp/d1', dir);
    await plant('/tmp/d2', '/tmp/d1');
    await plant('/tmp/d3', '../tmp/d2/');
    expect(await writeThrough('/tmp/d3/canary.txt')).toBe('inside');
  });

  it('/proc magic links (/proc/self/root, /proc/1/root, /proc/<host pid>/root, /proc/1/cwd, /proc/1/fd) are refused', async () => {
    const targets = [
      `/proc/self/root${canary}`,
      `/proc/1/root${canary}`,
      `/proc/1/cwd${canary}`,
      `/proc/${process.pid}/root${canary}`,
      `/proc/${sb.pid}/root${canary}`,
      `/proc/1/fd/4/upper/x`,
      `/proc/self/fd/0`,
    ];
    for (const t of targets) {
      await plant('/tmp/magic', t);
      const w = await writeThrough('/tmp/magic');
      expect(w, t).toBe('refused');
      // Named directly, without a planted link, too.
      expect(await writeThrough(t), t).toBe('refused');
      expect(await readThrough(t), t).toBe('refused');
    }
  });

  it("a link to /etc/shadow reads the sandbox's file (or nothing), never the host's", async () => {
    await plant('/etc/evil', '/etc/shadow');
    const got = await readThrough('/etc/evil');
    let host = '';
    try {
      host = readFileSync('/etc/shadow', 'utf8');
    } catch {}
    if (host) expect(got).not.toBe(host);
    if (got !== 'refused') expect(got).not.toMatch(/^root:[^:*!]{2,}/m);
  });

  it('procfs files are refused to the host API: /proc/1/environ, /proc/self/environ, /proc/sys', async () => {
    for (const p of ['/proc/1/environ', '/proc/self/environ', '/proc/1/status', '/proc/sys/kernel/hostname']) {
      expect(await readThrough(p), p).toBe('refused');
    }
    for (const p of ['/proc/sys/kernel/core_pattern', '/proc/sys/kernel/hostname', '/proc/1/oom_score_adj']) {
      expect(await writeThrough(p), p).toBe('refused');
    }
    await plant('/tmp/cp', '/proc/sys/kernel/core_pattern');
    expect(await writeThrough('/tmp/cp')).toBe('refused');
  });

  it('device nodes bound into /dev are refused (only regular files are opened)', async () => {
    for (const p of ['/dev/null', '/dev/zero', '/dev/tty']) {
      expect(await readThrough(p), p).toBe('refused');
    }
    await plant('/tmp/tty', '/dev/tty');
    expect(await writeThrough('/tmp/tty')).toBe('refused');
  });

  it('a FIFO planted inside is refused at once, without blocking the host process', async () => {
    // If the host's open(2) blocked on the FIFO, it would block Node's event loop until
    // something inside opens the other end, which a hostile sandbox never does. The helper
    // started here opens it after 2 s so that a failing run ends instead of hanging.
    await sb.exec(['sh', '-c', 'rm -f /tmp/fifo-r /tmp/fifo-w; mkfifo /tmp/fifo-r /tmp/fifo-w']);
    const unblockR = sb.spawn(['sh', '-c', 'sleep 2; exec 3>/tmp/fifo-r']);
    let t = Date.now();
    expect(await readThrough('/tmp/fifo-r')).toBe('refused');
    const readMs = Date.now() - t;
    const unblockW = sb.spawn(['sh', '-c', 'sleep 2; exec 3</tmp/fifo-w']);
    t = Date.now();
    expect(await writeThrough('/tmp/fifo-w')).toBe('refused');
    const writeMs = Date.now() - t;
    unblockR.kill('SIGKILL');
    unblockW.kill('SIGKILL');
    await Promise.all([unblockR.result, unblockW.result]);
    expect(readMs, 'readFile blocked on a FIFO').toBeLessThan(1000);
    expect(writeMs, 'writeFile blocked on a FIFO').toBeLessThan(1000);
  });

  it('a file created by writeFile belongs to the sandbox (its root), not to host root', async () => {
    await sb.writeFile('/tmp/owned', 'x');
    const r = await sb.exec(['stat', '-c', '%u:%g', '/tmp/owned'], { encoding: 'utf8' });
    expect(r.stdout).toBe('0:0\n');
    const host = statSync(`/proc/${sb.pid}/root/tmp/owned`);
    // As root of a pod's user namespace the sandboxes' ids are that namespace's, from 1 up
    // (its 0 is this process); elsewhere a range above the ordinary ids.
    const floor = hostMode() === 'userns-root' ? 1 : 65536;
    expect(host.uid).toBeGreaterThanOrEqual(floor);
    expect(host.gid).toBeGreaterThanOrEqual(floor);
  });
});
