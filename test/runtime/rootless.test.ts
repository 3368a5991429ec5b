/**
 * hutch outside host root (API.md "Where hutch runs", docs/rootless.md), driven from this root
 * suite: an ordinary user made for the test (scripts/rootless-user.sh: subordinate ranges and a
 * delegated cgroup, as a distribution and systemd would give), a user without subordinate ids,
 * and root of a user namespace that is not the host's (as in a pod with hostUsers: false).
 * Each case runs a small Node program as that user and checks what the kernel says: maps,
 * the host ids of the sandbox's processes, the cgroup files of its cgroup, its rlimits.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needs } from '../helpers/require.js';

const CHECKOUT = process.cwd();
const SCRIPT = join(CHECKOUT, 'scripts/rootless-user.sh');
/** The built library as the test users import it: the checkout, or a readable copy of it (beforeAll). */
let ROOT = CHECKOUT;
const USER = 'hutchrl';
const SINGLE = 'hutchrl1';
/** The host ids of the pod-like user namespace (root's range while the test runs). */
const POD_BASE = 400_000_000;
const skip = needs(process.geteuid?.() === 0 && spawnSync('sh', ['-c', 'command -v newuidmap && command -v unshare && command -v useradd']).status === 0, 'root, uidmap (newuidmap) and util-linux');

let dir = '';
const made: string[] = [];

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function uidOf(user: string): number {
  return Number(sh('id', ['-u', user]).trim());
}

/** The first subordinate uid of a user. */
function subStart(user: string): number {
  const line = readFileSync('/etc/subuid', 'utf8').split('\n').find((l) => l.startsWith(`${user}:`));
  return Number(line!.split(':')[1]);
}

/** Runs `body` (an async function body with `hutch` = the library) as `user`; returns its JSON result. */
function runAs(user: string, body: string, opts: { cgroup?: boolean; env?: Record<string, string>; wrap?: string[] } = {}): Record<string, any> {
  const file = join(dir, `probe-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(file, `import * as hutch from ${JSON.stringify(join(ROOT, 'dist/lib/index.js'))};\nconst out = await (async () => {\n${body}\n})().catch((e) => ({ error: { code: e.code, message: e.message, path: e.path } }));\nawait hutch.Sandbox.settle?.();\nprocess.stdout.write('\\n' + JSON.stringify(out) + '\\n');\n`);
  chmodSync(file, 0o644);
  const env = { HUTCH_BACKGROUND_PRUNE: '0', ...opts.env };
  const envArgs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  const argv = opts.wrap
    ? [...opts.wrap, 'env', ...envArgs, process.execPath, file]
    : ['sh', SCRIPT, 'run', user, ...(opts.cgroup === false ? ['--no-cgroup'] : []), '--', 'env', ...envArgs, process.execPath, file];
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', cwd: '/tmp', timeout: 120_000 });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(last);
  } catch {
    throw new Error(`probe as ${user} failed (status ${r.status}):\n${r.stdout}\n${r.stderr}`);
  }
}

describe.skipIf(skip !== undefined)('rootless: an ordinary user with subordinate ids and a delegated cgroup', () => {
  let store = '';
  beforeAll(() => {
    dir = mkdtempSync('/tmp/hutch-rootless-');
    chmodSync(dir, 0o1777); // each user makes its own store in it
    for (const u of [USER, SINGLE]) {
      if (spawnSync('id', [u]).status !== 0) made.push(u);
    }
    sh('sh', [SCRIPT, 'setup', USER]);
    if (made.includes(SINGLE)) sh('useradd', ['--create-home', '--shell', '/bin/sh', SINGLE]);
    // No subordinate ids for the second user (Debian's useradd may have added some).
    for (const f of ['/etc/subuid', '/etc/subgid']) sh('sed', ['-i', `/^${SINGLE}:/d`, f]);
    store = join(dir, 'store');
    // The users must read the built library; a checkout in a directory closed to others (under
    // /root, say) is copied for them (dist, build, node_modules, package.json, binding.gyp: how lib finds its root).
    if (spawnSync('runuser', ['-u', USER, '--', 'test', '-r', join(CHECKOUT, 'dist/lib/index.js')]).status !== 0) {
      ROOT = join(dir, 'src');
      sh('mkdir', ['-p', ROOT]);
      sh('cp', ['-a', join(CHECKOUT, 'dist'), join(CHECKOUT, 'build'), join(CHECKOUT, 'node_modules'), join(CHECKOUT, 'package.json'), join(CHECKOUT, 'binding.gyp'), ROOT]);
    }
    // unshare --map-users maps through newuidmap, which wants root's own subordinate range.
    for (const f of ['/etc/subuid', '/etc/subgid']) writeFileSync(f, `root:${POD_BASE}:65537\n`, { flag: 'a' });
  });

  afterAll(() => {
    sh('sh', [SCRIPT, 'teardown', USER]);
    for (const u of made) {
      spawnSync('pkill', ['-9', '-u', u]);
      spawnSync('userdel', ['-r', u], { stdio: 'ignore' });
      for (const f of ['/etc/subuid', '/etc/subgid']) sh('sed', ['-i', `/^${u}:/d`, f]);
    }
    for (const f of ['/etc/subuid', '/etc/subgid']) sh('sed', ['-i', `/^root:${POD_BASE}:65537$/d`, f]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('runs a sandbox whose root is a subordinate id, never the caller, with image owners intact', () => {
    const r = runAs(USER, `
      const { Sandbox } = hutch;
      const s = await Sandbox.create({ image: 'busybox' });
      try {
        const x = await s.exec(['sh', '-c', 'id -u; cat /proc/self/uid_map; stat -c %u:%g /bin/busybox; touch /etc/made && stat -c %u /etc/made']);
        const host = (await import('node:fs')).readFileSync('/proc/' + s.pid + '/status', 'utf8').match(/^Uid:\\s+(\\d+)/m)[1];
        const report = await Sandbox.checkHost();
        const template = await Sandbox.template({ zygote: 'python' }).then(async (t) => { await t.close(); return null; }, (e) => ({ code: e.code, message: e.message }));
        return { mode: report.mode, out: x.stdout.toString(), code: x.exitCode, hostUid: Number(host), templates: report.checks.find((c) => c.name === 'templates'), template };
      } finally { await s.destroy(); }
    `, { env: { HUTCH_ROOT: store } });
    expect(r.error).toBeUndefined();
    expect(r.mode).toBe('user');
    // Templates need host root: checkHost says so, and Sandbox.template refuses with the reason.
    expect(r.templates).toMatchObject({ ok: false, fix: expect.stringMatching(/host root/) });
    expect(r.template).toMatchObject({ code: 'EUNSUPPORTED', message: expect.stringMatching(/user mode.*Sandbox\.create/) });
    const [uid, map, owner, made] = r.out.trim().split('\n');
    expect(uid).toBe('0');
    // Inside: sandbox 0.. -> holder ids 1.. (holder 0 is the caller, never mapped into a sandbox).
    expect(map!.trim().split(/\s+/)).toEqual(['0', '1', '65536']);
    expect(owner).toBe('0:0');
    expect(made).toBe('0');
    // Outside: the sandbox's init runs as the user's first subordinate id, not as the user.
    expect(r.hostUid).toBe(subStart(USER));
    expect(r.hostUid).not.toBe(uidOf(USER));
    // The store's layers belong to the subordinate range too (image root = first subordinate id).
    const layers = sh('find', [join(store, 'layers'), '-mindepth', '2', '-maxdepth', '2', '-name', 'bin']).trim().split('\n')[0]!;
    expect(statSync(layers).uid).toBe(subStart(USER));
  });

  it('reports a refused syscall as an ordinary user: a seccomp listener needs no privilege beyond no_new_privs', () => {
    const r = runAs(USER, `
      const x = await hutch.Sandbox.run({ image: 'busybox', command: ['sh', '-c', 'unshare -U true; echo rc=$?'], encoding: 'utf8' });
      return { out: x.stdout, violations: x.violations.map((v) => v.syscall) };
    `, { env: { HUTCH_ROOT: store } });
    expect(r.error).toBeUndefined();
    expect(r.out.trim()).toBe('rc=1');
    expect(r.violations).toEqual(['unshare']);
  });

  it('keeps an image file owned by uid 1000 as 1000 inside', () => {
    const tar = join(dir, 'owned.tar');
    const src = mkdtempSync(join(dir, 'src-'));
    writeFileSync(join(src, 'file'), 'x\n');
    sh('tar', ['--owner=1000', '--group=1000', '-C', src, '-cf', tar, 'file']);
    chmodSync(tar, 0o644);
    const r = runAs(USER, `
      const { ImageStore } = hutch;
      const img = await ImageStore.default().import(${JSON.stringify(tar)}, { tag: 'owned:1' });
      return { id: img.id };
    `, { env: { HUTCH_ROOT: store } });
    expect(r.error).toBeUndefined();
    // The layer file is owned by holder id 1 + 1000 = the user's subordinate start + 1000.
    const file = sh('find', [join(store, 'layers'), '-mindepth', '2', '-maxdepth', '2', '-name', 'file']).trim().split('\n')[0]!;
    expect(statSync(file).uid).toBe(subStart(USER) + 1000);
    expect(statSync(file).gid).toBeGreaterThan(0);
  });

  it('enforces cgroup limits in the delegated cgroup (the kernel\'s own files say so)', () => {
    const r = runAs(USER, `
      const { Sandbox } = hutch;
      const fs = await import('node:fs');
      const s = await Sandbox.create({ image: 'busybox', limits: { memory: '48m', pids: 77 } });
      try {
        const cg = fs.readFileSync('/proc/' + s.pid + '/cgroup', 'utf8');
        const v1 = cg.match(/:memory:(.*)$/m);
        if (v1) {
          const mem = v1[1];
          const pids = cg.match(/:pids:(.*)$/m)[1];
          return {
            mem,
            limit: fs.readFileSync('/sys/fs/cgroup/memory' + mem + '/memory.limit_in_bytes', 'utf8').trim(),
            max: fs.readFileSync('/sys/fs/cgroup/pids' + pids + '/pids.max', 'utf8').trim(),
          };
        }
        const mem = cg.match(/^0::(.*)$/m)[1];
        return {
          mem,
          limit: fs.readFileSync('/sys/fs/cgroup' + mem + '/memory.max', 'utf8').trim(),
          max: fs.readFileSync('/sys/fs/cgroup' + mem + '/pids.max', 'utf8').trim(),
        };
      } finally { await s.destroy(); }
    `, { env: { HUTCH_ROOT: store } });
    expect(r.error).toBeUndefined();
    // v1: the delegated cgroup's hutch/ subtree; pure v2: its empty sibling of the user's leaf.
    expect(r.mem).toMatch(new RegExp(`/hutch-delegate-${USER}/(hutch|sandboxes)/[0-9a-f]+$`));
    expect(r.limit).toBe(String(48 * 1024 * 1024));
    expect(r.max).toBe('77');
  });

  it("a sandbox without a memory limit is charged to hutch's shared memory cgroup in the delegated cgroup", () => {
    const r = runAs(USER, `
      const { Sandbox } = hutch;
      const fs = await import('node:fs');
      const s = await Sandbox.create({ image: 'busybox' });
      try {
        const cg = fs.readFileSync('/proc/' + s.pid + '/cgroup', 'utf8');
        const v1 = cg.match(/:memory:(.*)$/m);
        const mem = v1 ? v1[1] : cg.match(/^0::(.*)$/m)[1];
        const peak = (await s.exec(['sh', '-c', 'head -c 33554432 /dev/zero | tail >/dev/null'])).usage.memoryPeakBytes;
        return { mem, v1: !!v1, own: fs.existsSync((v1 ? '/sys/fs/cgroup/memory' : '/sys/fs/cgroup') + mem + (v1 ? '/memory.usage_in_bytes' : '/memory.current')), peak };
      } finally { await s.destroy(); }
    `, { env: { HUTCH_ROOT: store } });
    expect(r.error).toBeUndefined();
    // v1: the task is in the shared memory cgroup itself; v2: its leaf, without a memory controller, is below it.
    expect(r.mem).toMatch(new RegExp(`/hutch-delegate-${USER}/(hutch|sandboxes)/\\.shared${r.v1 ? '' : '/[0-9a-f]+'}$`));
    expect(r.own).toBe(r.v1);
    expect(r.peak).toBeGreaterThanOrEqual(32 * 1024 * 1024);
  });

  it('without a delegated cgroup: cgroup limits are EUNSUPPORTED with the fix; the default pids becomes nproc 1024', () => {
    const r = runAs(USER, `
      const { Sandbox } = hutch;
      const limits = await Sandbox.run({ image: 'busybox', command: ['sh', '-c', 'grep "Max processes" /proc/self/limits'] });
      const refused = await Sandbox.run({ image: 'busybox', command: ['true'], limits: { memory: '64m' } }).then(() => null, (e) => ({ code: e.code, message: e.message }));
      const host = await Sandbox.checkHost();
      return { limits: limits.stdout.toString(), refused, cg: host.checks.find((c) => c.name === 'cgroup for sandboxes') };
    `, { cgroup: false, env: { HUTCH_ROOT: store } });
    expect(r.error).toBeUndefined();
    expect(r.limits).toMatch(/Max processes\s+1024\s+1024/);
    expect(r.refused.code).toBe('EUNSUPPORTED');
    expect(r.refused.message).toMatch(/limits\.memory/);
    expect(r.refused.message).toMatch(/Delegate=yes|HUTCH_CGROUP_PARENT/);
    expect(r.cg.ok).toBe(false);
  });

  it('a user without subordinate ids gets a one-id map: root inside is the caller, owners squashed', () => {
    const r = runAs(SINGLE, `
      const { Sandbox } = hutch;
      const x = await Sandbox.run({ image: 'busybox', command: ['sh', '-c', 'id -u; cat /proc/self/uid_map; stat -c %u /bin/busybox'] });
      const host = await Sandbox.checkHost();
      return { out: x.stdout.toString(), err: x.stderr.toString(), ids: host.checks.find((c) => c.name === 'sandbox ids') };
    `, { cgroup: false, wrap: ['runuser', '-u', SINGLE, '--'], env: { HUTCH_ROOT: join(dir, 'single-store') } });
    expect(r.error).toBeUndefined();
    const [uid, map, owner] = r.out.trim().split('\n');
    expect(uid).toBe('0');
    expect(map!.trim().split(/\s+/)).toEqual(['0', String(uidOf(SINGLE)), '1']);
    expect(owner).toBe('0');
    expect(r.ids.ok).toBe(false);
    expect(r.ids.detail).toMatch(/^single/);
    expect(r.ids.fix).toMatch(/subuid/);
  });

  it('an unusable store is ESTORE naming the path and the fix, not a bare EACCES', () => {
    const r = runAs(SINGLE, `
      const { Sandbox } = hutch;
      await Sandbox.run({ image: 'busybox', command: ['true'] });
      return {};
    `, { cgroup: false, wrap: ['runuser', '-u', SINGLE, '--'], env: { HOME: '/nonexistent', XDG_DATA_HOME: '', HUTCH_ROOT: '' } });
    expect(r.error.code).toBe('ESTORE');
    expect(r.error.path).toBe('/nonexistent/.local/share/hutch');
    expect(r.error.message).toMatch(/HUTCH_ROOT/);
  });

  it('as root of a user namespace that is not the host\'s (a pod with hostUsers: false): sandbox root is its id 1', () => {
    const base = POD_BASE;
    const r = runAs('root', `
      const { Sandbox } = hutch;
      const fs = await import('node:fs');
      const s = await Sandbox.create({ image: 'busybox' });
      try {
        const x = await s.exec(['sh', '-c', 'id -u; cat /proc/self/uid_map; stat -c %u /bin/busybox']);
        return { mode: (await Sandbox.checkHost()).mode, out: x.stdout.toString(), own: fs.readFileSync('/proc/self/uid_map', 'utf8') };
      } finally { await s.destroy(); }
    `, {
      wrap: ['unshare', '--user', '--mount', '--map-users', `${base},0,65537`, '--map-groups', `${base},0,65537`, '--setuid', '0', '--setgid', '0', '--'],
      env: { HUTCH_ROOT: join(dir, 'pod-store') },
    });
    expect(r.error).toBeUndefined();
    expect(r.mode).toBe('userns-root');
    const [uid, map, owner] = r.out.trim().split('\n');
    expect(uid).toBe('0');
    expect(map!.trim().split(/\s+/)).toEqual(['0', '1', '65536']);
    expect(owner).toBe('0');
  });
});
