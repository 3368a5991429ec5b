/**
 * Templates: each run is a fresh sandbox forked from the warm zygote, isolated from its
 * siblings and the template as two Sandbox.create sandboxes are. Every claim is checked by
 * doing the thing from inside a fork.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HutchError, Sandbox } from '../../lib/index.js';
import type { ZygoteTemplate } from '../../lib/template/index.js';
import { cgroupsUnder, fdCount, gone, privateCgroupParent, removeCgroupParent } from '../helpers/reliability.js';
import { isRoot, needs } from '../helpers/require.js';
import { installProbe, probe, probeBinary, PROBE } from '../security/probe.js';

const skip = needs(isRoot, 'root is needed');
const parent = privateCgroupParent('tpl');
const NS = ['pid', 'mnt', 'net', 'ipc', 'uts', 'cgroup'];
// Both forks stay alive a while: namespace inode numbers are reused once a namespace is gone.
const nsScript = `import os, time\nprint(os.getpid()); [print(n, os.readlink('/proc/self/ns/' + n)) for n in ${JSON.stringify(NS)}]\ntime.sleep(1)`;
/** Sandbox ids with a cgroup under this file's parent (one dir per hierarchy each). */
const cgroupIds = (): string[] => [...new Set(cgroupsUnder(parent).map((d) => d.slice(d.lastIndexOf('/') + 1)))];

function nsOf(out: string): Record<string, string> {
  const r: Record<string, string> = {};
  for (const l of out.trim().split('\n').slice(1)) {
    const [k, v] = l.split(' ');
    r[k!] = v!;
  }
  return r;
}

afterAll(() => removeCgroupParent(parent));

describe.skipIf(skip)('templates: isolation', () => {
  // The class, not the public interface: these tests look inside (templateSandbox, zygoteProcess).
  let t: ZygoteTemplate;
  beforeAll(async () => {
    // One fork kept ready: the runs below use prepared forks and forks made on demand alike.
    t = (await Sandbox.template({ zygote: 'python', preload: ['json'], limits: { memory: '96MiB', pids: 64 }, size: 1 })) as ZygoteTemplate;
  });
  afterAll(async () => {
    await t?.close();
  });

  it('gives every run its own pid, mount, net, ipc, uts and cgroup namespaces, PID 1 inside', async () => {
    const [a, b] = await Promise.all([
      t.run(['python3', '-c', nsScript], { encoding: 'utf8' }),
      t.run(['python3', '-c', nsScript], { encoding: 'utf8' }),
    ]);
    expect(a.stderr).toBe('');
    expect(a.exitCode).toBe(0);
    expect(b.exitCode).toBe(0);
    expect((a.stdout as string).split('\n')[0]).toBe('1');
    const na = nsOf(a.stdout as string);
    const nb = nsOf(b.stdout as string);
    const z = t.zygoteProcess!;
    // The zygote's namespaces, read from the host (its host pid: the template's child).
    const zhost = readFileSync(`/proc/${t.pid}/task/${t.pid}/children`, 'utf8').trim().split(' ').map(Number)
      .find((p) => readFileSync(`/proc/${p}/status`, 'utf8').match(/NSpid:.*\s(\d+)\n/)?.[1] === String(z.pid))!;
    expect(zhost).toBeGreaterThan(0);
    for (const n of NS) {
      const zn = readlinkSync(`/proc/${zhost}/ns/${n}`);
      expect(na[n], n).toMatch(/^\w+:\[\d+\]$/);
      expect(na[n], n).not.toBe(nb[n]);
      expect(na[n], n).not.toBe(zn);
      expect(nb[n], n).not.toBe(zn);
    }
  });

  it("makes a run's cgroup namespace in its own cgroup, after the host moved it there, and owned by its own user namespace as its net, ipc and uts ones are", async () => {
    // NS_GET_USERNS (_IO(0xb7, 0x1)): the user namespace that owns a namespace.
    const script = [
      'import ctypes, fcntl, os',
      'def owner(n):',
      '    fd = os.open("/proc/self/ns/" + n, os.O_RDONLY)',
      '    u = fcntl.ioctl(fd, 0xb701)',
      '    os.close(fd)',
      '    r = os.readlink("/proc/self/fd/%d" % u)',
      '    os.close(u)',
      '    return r',
      'me = os.readlink("/proc/self/ns/user")',
      'print(" ".join(n + ("=own" if owner(n) == me else "=other") for n in ["cgroup", "net", "ipc", "uts"]))',
      'print(open("/proc/self/cgroup").read().strip())',
    ].join('\n');
    for (let i = 0; i < 2; i++) {
      // A prepared fork, then one forked on demand.
      const r = await t.run(['python3', '-c', script], { encoding: 'utf8' });
      expect(r.stderr).toBe('');
      const [owners, ...cgroups] = (r.stdout as string).trim().split('\n');
      expect(owners).toBe('cgroup=own net=own ipc=own uts=own');
      // Its cgroup namespace's root is its own cgroup in every hierarchy: it was there when the namespace was made.
      expect(cgroups.length).toBeGreaterThan(0);
      for (const l of cgroups) expect(l.split(':')[2]).toBe('/');
    }
  });

  it("hands each run's mount namespace to the host only until its result is back: none is left open after", async () => {
    // The fork sends its mount namespace before its seccomp (its exit then does not wait for its mounts
    // to be taken apart); the host closes it after the result, before the fork's cgroup goes.
    const held = (): string[] => readdirSync('/proc/self/fd').flatMap((fd) => {
      try {
        const l = readlinkSync(`/proc/self/fd/${fd}`);
        return l.startsWith('mnt:[') ? [l] : [];
      } catch {
        return [];
      }
    });
    await Sandbox.settle();
    const before = held();
    const rs = await Promise.all([
      t.run(['python3', '-c', "import os; print(os.readlink('/proc/self/ns/mnt'))"], { encoding: 'utf8' }),
      t.run(['python3', '-c', "import os; print(os.readlink('/proc/self/ns/mnt'))"], { encoding: 'utf8' }),
      t.run(['python3', '-c', 'import time; time.sleep(30)'], { timeoutMs: 300 }),
    ]);
    expect(rs[0]!.stdout).toMatch(/^mnt:\[\d+\]\n$/);
    expect(rs[2]!.reason).toBe('timeout');
    await Sandbox.settle();
    const after = held();
    expect(after).toEqual(before);
    for (const r of rs.slice(0, 2)) expect(after).not.toContain((r.stdout as string).trim());
  });

  it('keeps files apart: a fork sees neither a sibling\'s writes nor leaves any in the template', async () => {
    const w = await t.run(['python3', '-c', "open('/tmp/secret','w').write('s'); open('/etc/planted','w').write('p'); print('ok')"], { encoding: 'utf8' });
    expect(w.stdout).toBe('ok\n');
    const r = await t.run(['python3', '-c', "import os; print(os.path.exists('/tmp/secret'), os.path.exists('/etc/planted'))"], { encoding: 'utf8' });
    expect(r.stdout).toBe('False False\n');
    await expect(t.templateSandbox.readFile('/etc/planted')).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(t.templateSandbox.readFile('/tmp/secret')).rejects.toMatchObject({ code: 'ENOENT' });
    // files: written before the task, in its own layer only
    const f = await t.run(['python3', 'main.py', 'x'], { files: { '/work/main.py': 'import sys; print(sys.argv[1], open("/work/data").read())', '/work/data': 'd' }, cwd: '/work', encoding: 'utf8' });
    expect(f.stdout).toBe('x d\n');
    await expect(t.templateSandbox.readFile('/work/main.py')).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it("gives a fork a writable layer overlay fully works on: an image directory removed and made again is empty, one renamed keeps its files", async () => {
    // On kernels before 6.6 the layer is a directory on the store's disk (tmpfs kept no user.*
    // xattrs, and overlay then failed these with EIO); a tmpfs of the fork's own after.
    const script = `set -e
set -- $(for d in /etc/*/; do [ -n "$(ls -A "$d")" ] && echo "\${d%/}"; done)
n=$(ls -A "$1" | wc -l); rm -rf "$1"; mkdir "$1"; echo "$n" "$(ls -A "$1" | wc -l)"
k=$(ls -A "$2" | wc -l); mv "$2" /etc/renamed; echo "$k" "$(ls -A /etc/renamed | wc -l)" "$(test -e "$2" && echo still || echo gone)"`;
    for (const r of await Promise.all([0, 1].map(() => t.run(['sh', '-c', script], { encoding: 'utf8' })))) {
      expect(r.stderr).toBe('');
      const [removed, renamed] = (r.stdout as string).trim().split('\n');
      const [n, after] = removed!.split(' ').map(Number);
      expect(n).toBeGreaterThan(0);
      expect(after).toBe(0);
      const [k, moved, old] = renamed!.split(' ');
      expect(Number(k)).toBeGreaterThan(0);
      expect(moved).toBe(k);
      expect(old).toBe('gone');
    }
  });

  it('OOM-kills a fork alone: a sibling running at the same time and the zygote live on', async () => {
    const sibling = t.run(['python3', '-c', 'import time; time.sleep(1.5); print("alive")'], { encoding: 'utf8' });
    const hog = await t.run(['python3', '-c', 'b = []\nwhile True: b.append(bytearray(8 << 20))'], { encoding: 'utf8' });
    expect(hog.reason).toBe('oom');
    expect(hog.usage.oomKills).toBeGreaterThan(0);
    const s = await sibling;
    expect(s.stdout).toBe('alive\n');
    expect(s.reason).toBe('exit');
    const after = await t.run(['python3', '-c', 'print(2)'], { encoding: 'utf8' });
    expect(after.stdout).toBe('2\n');
  });

  it('cannot signal or ptrace the zygote, the template\'s init or a sibling', async () => {
    const sibling = t.run(['python3', '-c', 'import time; time.sleep(3)'], { encoding: 'utf8' });
    await new Promise((r) => setTimeout(r, 300));
    const zpid = t.zygoteProcess!.pid;
    const script = [
      'import ctypes, os, signal',
      'libc = ctypes.CDLL(None, use_errno=True)',
      'seen = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())',
      'print("visible", seen)',
      'res = []',
      `for pid in sorted(set([${zpid}, 2, 3, 4, 5, 10, 100] + list(range(2, 300)))):`,
      '    try:',
      '        os.kill(pid, signal.SIGKILL); res.append(("killed", pid))',
      '    except ProcessLookupError: pass',
      '    except PermissionError: res.append(("eperm", pid))',
      `r = libc.ptrace(16, ${zpid}, 0, 0)`,
      'print("ptrace", r, os.strerror(ctypes.get_errno()))',
      'print("kills", res)',
    ].join('\n');
    const r = await t.run(['python3', '-c', script], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('visible [1]\n');
    expect(r.stdout).toContain('ptrace -1 No such process');
    expect(r.stdout).toContain('kills []');
    const s = await sibling;
    expect(s.reason).toBe('exit');
    expect(s.exitCode).toBe(0);
    expect(t.zygoteProcess).not.toBeNull();
  });

  it('answers the escape probes exactly as a fresh sandbox of the same options does', async () => {
    const cases = [
      ['mount'], ['fsopen'], ['umount', '/proc/kcore'], ['umount', '/proc/sys'], ['unshare', 'user'], ['unshare', 'mnt'],
      ['unshare', 'net'], ['keyctl'], ['add_key'], ['io_uring'], ['userfaultfd'], ['bpf'], ['perf_event_open'],
      ['kexec_load'], ['open_by_handle_at'], ['clone_newuser'], ['clone3', 'user'], ['mknod', 'char'], ['socket', 'packet'],
      ['socket', 'raw'], ['personality', '0x0400000'],
    ];
    const sb = await Sandbox.create({ limits: { memory: '96MiB', pids: 64 } });
    try {
      await installProbe(sb);
      const bin = probeBinary();
      for (const c of cases) {
        const want = await probe(sb, c);
        expect(want, c.join(' ')).toMatch(/^refused/);
        const r = await t.run([PROBE, ...c], { files: { [PROBE]: bin }, encoding: 'utf8' });
        const got = String(r.stdout).trim();
        expect(got, c.join(' ')).toBe(want);
      }
      // Capabilities, no_new_privs and the seccomp mode, as /proc/self/status shows them.
      const field = (s: string): string => s.split('\n').filter((l) => /^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):/.test(l)).join('\n');
      const fresh = await sb.exec(['cat', '/proc/self/status'], { encoding: 'utf8' });
      const forked = await t.run(['cat', '/proc/self/status'], { encoding: 'utf8' });
      expect(field(forked.stdout as string)).toBe(field(fresh.stdout as string));
      expect(field(forked.stdout as string)).toContain('NoNewPrivs:\t1');
    } finally {
      await sb.destroy();
    }
  });

  it('fork() gives a Sandbox like any other: its own namespaces, exec, files, stats, destroy; probes as a fresh one', async () => {
    const a = await t.fork();
    const b = await t.fork();
    try {
      const ns = async (sb: Sandbox): Promise<string> => String((await sb.exec(`for n in ${NS.join(' ')}; do readlink /proc/self/ns/$n; done`, { encoding: 'utf8' })).stdout);
      const [na, nb] = [await ns(a), await ns(b)];
      for (const [x, y] of na.trim().split('\n').map((l, i) => [l, nb.trim().split('\n')[i]])) expect(x).not.toBe(y);
      await a.writeFile('/tmp/only-a', 'a');
      await expect(b.readFile('/tmp/only-a')).rejects.toMatchObject({ code: 'ENOENT' });
      expect(String(await a.readFile('/tmp/only-a'))).toBe('a');
      expect((await a.exec('echo $$', { encoding: 'utf8' })).stdout).not.toBe('1\n');
      expect((await a.stats()).pids).toBeGreaterThan(0);
      await installProbe(a);
      expect(await probe(a, ['mount'])).toBe('refused EPERM');
      expect(await probe(a, ['unshare', 'user'])).toBe('refused EPERM');
      expect(await probe(a, ['ptrace', '1'])).toMatch(/^refused/);
    } finally {
      await a.destroy();
      await b.destroy();
    }
    expect(gone(a.pid)).toBe(true);
    await expect(a.exec('true')).rejects.toMatchObject({ code: 'EDESTROYED' });
  });

  it('recreates a zygote that was killed, and runs on', async () => {
    const z = t.zygoteProcess!;
    z.kill('SIGKILL');
    await z.result;
    const r = await t.run(['python3', '-c', 'print("again")'], { encoding: 'utf8' });
    expect(r.stdout).toBe('again\n');
    expect(t.zygoteProcess).not.toBe(z);
  });

  it('gives the task exactly its env (os.environ and what it execs: none of the zygote\'s own) and its stdin', async () => {
    const code = 'import os, subprocess, sys\nprint(os.environ["FOO"], "HUTCH_ZYGOTE_PRELOAD" in os.environ)\nsys.stdout.flush()\n'
      + 'subprocess.run(["sh", "-c", "echo \\"$FOO\\" ${HUTCH_ZYGOTE_PRELOAD:-unset} ${HUTCH_ZYGOTE_LIB:-unset}"])\nprint(sys.stdin.read())';
    for (let i = 0; i < 2; i++) {
      // The first may take the prepared fork, the second forks on demand.
      const r = await t.run(['python3', '-c', code], { env: { FOO: 'a b=c' }, stdin: `in-${i}`, encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(r.stdout).toBe(`a b=c False\na b=c unset unset\nin-${i}\n`);
    }
  });

  it('hands the task its stdin and files whole, small or large, given as bytes or as a stream, and EOF without stdin', async () => {
    // A page or less is written at once (lib/template/fork.ts feedStdin), more goes through a stream.
    const code = 'import sys, hashlib\nd = sys.stdin.buffer.read()\nf = open("/tmp/in.bin", "rb").read()\nprint(len(d), hashlib.sha256(d).hexdigest(), len(f), hashlib.sha256(f).hexdigest())';
    const sha = async (b: Buffer): Promise<string> => (await import('node:crypto')).createHash('sha256').update(b).digest('hex');
    for (const size of [0, 4096, 4097, 1 << 20]) {
      const body = Buffer.alloc(size, 'x');
      const file = Buffer.alloc(size, 'y');
      const r = await t.run(['python3', '-c', code], { stdin: size === 0 ? undefined : body, files: { '/tmp/in.bin': file }, encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(r.stdout).toBe(`${size} ${await sha(body)} ${size} ${await sha(file)}\n`);
    }
    const { Readable } = await import('node:stream');
    const streamed = await t.run(['python3', '-c', 'import sys; print(sys.stdin.read())'], { stdin: Readable.from(['a', 'b', 'c']), encoding: 'utf8' });
    expect(streamed.stdout).toBe('abc\n');
  });

  it("reseeds Python's random in every fork (the zygote forks with os.fork, whose at-fork hooks run); the hash seed is the template's", async () => {
    const outs = await Promise.all([0, 1, 2].map(() => t.run(['python3', '-c', 'import random; print(random.random(), hash("abc"))'], { encoding: 'utf8' })));
    const rows = outs.map((r) => (r.stdout as string).trim().split(' '));
    expect(new Set(rows.map((r) => r[0])).size).toBe(3);
    expect(new Set(rows.map((r) => r[1])).size).toBe(1); // shared, as docs/security.md says
  });

  it('reports a failed setup step as ESETUP, never a hang', async () => {
    await expect(t.run(['python3', '-c', 'pass'], { timeoutMs: 100_000, cwd: 'relative' })).rejects.toBeInstanceOf(HutchError);
  });

  it('rejects a missing or non-executable program and a missing cwd as Sandbox.exec does (ESETUP exec / cwd), never exit 1 with a traceback', async () => {
    await expect(t.run(['/no/such/program'])).rejects.toMatchObject({ code: 'ESETUP', step: 'exec', errno: 'ENOENT', path: '/no/such/program' });
    await expect(t.run(['no-such-command', 'arg'])).rejects.toMatchObject({ code: 'ESETUP', step: 'exec', errno: 'ENOENT' });
    // Not executable: a file without its x bits (written by hand, not through `files`, which makes #! files runnable).
    await expect(t.run(['/etc/passwd'])).rejects.toMatchObject({ code: 'ESETUP', step: 'exec', errno: 'EACCES' });
    await expect(t.run(['python3', '-c', 'print(1)'], { cwd: '/no/such/dir' })).rejects.toMatchObject({ code: 'ESETUP', step: 'cwd', errno: 'ENOENT' });
    // A python script that is not there is python's own answer, as a cold run gives it.
    const cold = await Sandbox.run({ command: ['python3', '/no/such.py'], encoding: 'utf8' });
    await Sandbox.settle(); // its teardown and the blank sandbox it keeps ready: gone before later checks
    const warm = await t.run(['python3', '/no/such.py'], { encoding: 'utf8' });
    expect(warm.exitCode).toBe(2);
    expect(warm.exitCode).toBe(cold.exitCode);
    expect(warm.stderr).toBe(cold.stderr);
    // And the template serves on.
    expect((await t.run(['python3', '-c', 'print(5)'], { encoding: 'utf8' })).stdout).toBe('5\n');
  });
});

describe.skipIf(skip)('templates: zygotes and lifetime', () => {
  it('rejects a zygote that does not speak the protocol within seconds', async () => {
    const t0 = Date.now();
    await expect(Sandbox.template({ zygote: ['sh', '-c', 'echo hello; sleep 100'] })).rejects.toMatchObject({ code: 'ESETUP', step: 'zygote', message: /does not speak the zygote protocol/ });
    await expect(Sandbox.template({ zygote: ['true'] })).rejects.toMatchObject({ code: 'ESETUP', message: /ended before it was ready/ });
    await expect(Sandbox.template({ zygote: ['sleep', '100'], zygoteTimeoutMs: 1500 })).rejects.toMatchObject({ code: 'ESETUP', message: /did not say it was ready within 1500 ms/ });
    await expect(Sandbox.template({ zygote: 'python', preload: ['no_such_module_x'] })).rejects.toMatchObject({ code: 'ESETUP', message: /no_such_module_x/ });
    expect(Date.now() - t0).toBeLessThan(30_000);
    expect(cgroupIds()).toEqual([]);
  });

  it('serves a zygote written to protocol 1 (fork, then hutch_zygote_enter): isolated runs, exit codes, fork()', async () => {
    const t = await Sandbox.template({ zygote: ['python3', '/.hutch-zygote/zygote.py'], env: { HUTCH_ZYGOTE_ENTER: '1' }, size: 1 });
    try {
      const [a, b] = await Promise.all([
        t.run(['python3', '-c', nsScript], { encoding: 'utf8' }),
        t.run(['python3', '-c', nsScript], { encoding: 'utf8' }),
      ]);
      expect(a.stderr).toBe('');
      expect((a.stdout as string).split('\n')[0]).toBe('1');
      for (const n of NS) expect(nsOf(a.stdout as string)[n], n).not.toBe(nsOf(b.stdout as string)[n]);
      expect((await t.run(['python3', '-c', 'import sys; sys.exit(3)'])).exitCode).toBe(3);
      const sb = await t.fork();
      try {
        expect((await sb.exec(['cat', '/proc/1/comm'], { encoding: 'utf8' })).stdout).toBe('hutch-init\n');
      } finally {
        await sb.destroy();
      }
    } finally {
      await t.close();
    }
    await Sandbox.settle();
    expect(cgroupIds()).toEqual([]);
  });

  it('a run in flight when its zygote dies rejects ESETUP (its reporter is gone) and its fork is killed, never a hang; the next run gets a new zygote', async () => {
    const t = (await Sandbox.template({ zygote: 'python', size: 1 })) as ZygoteTemplate;
    try {
      const running = t.run(['python3', '-c', 'import time; print("up", flush=True); time.sleep(60)']);
      await new Promise((r) => setTimeout(r, 1000));
      const z = t.zygoteProcess!;
      z.kill('SIGKILL');
      // As the rejection is delivered, the template already counts the zygote as gone: its
      // exit closes its fds in fd order, so its own socket can still be open at that moment,
      // and a run made right then must not take the fork it prepared (CI saw that run fail).
      const internals = t as unknown as { zygote: { dead: boolean } | null };
      let goneAtRejection: boolean | null = null;
      const err = await running.then(
        (r) => r,
        (e: unknown) => {
          goneAtRejection = internals.zygote === null || internals.zygote.dead;
          return e;
        },
      );
      expect(err, JSON.stringify(err instanceof Error ? { ...err, message: err.message } : err)).toMatchObject({ code: 'ESETUP', step: 'zygote' });
      expect(goneAtRejection).toBe(true);
      const r = await t.run(['python3', '-c', 'print("again")'], { encoding: 'utf8' });
      expect(r.stdout).toBe('again\n');
    } finally {
      await t.close();
    }
    await Sandbox.settle();
    expect(cgroupIds()).toEqual([]);
  });

  it("locks a fork's /proc masks: a task given SYS_ADMIN cannot unmount them, as in a created sandbox", async () => {
    const caps = ['SYS_ADMIN', 'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'SETUID', 'SETGID', 'KILL'] as const;
    // The attack: unmount each mask and the read-only /proc/sys, then write through it.
    const attack = [
      'import ctypes, os',
      'libc = ctypes.CDLL(None, use_errno=True)',
      'for p in [b"/proc/sys", b"/proc/timer_list", b"/proc/acpi", b"/proc/scsi"]:',
      '    if os.path.exists(p):',
      '        r = libc.umount2(p, 2)',
      '        print(p.decode(), "unmounted" if r == 0 else os.strerror(ctypes.get_errno()))',
      'try:',
      '    open("/proc/sys/kernel/hostname", "w").write("x")',
      '    print("wrote /proc/sys")',
      'except OSError as e:',
      '    print("write", os.strerror(e.errno))',
    ].join('\n');
    const t = await Sandbox.template({ zygote: 'python', capabilities: [...caps], seccomp: 'unconfined', size: 1 });
    const sb = await Sandbox.create({ capabilities: [...caps], seccomp: 'unconfined' });
    try {
      const fresh = await sb.exec(['python3', '-c', attack], { encoding: 'utf8' });
      for (let i = 0; i < 2; i++) {
        // A prepared fork, then one forked on demand.
        const r = await t.run(['python3', '-c', attack], { encoding: 'utf8' });
        expect(r.stderr).toBe('');
        expect(r.stdout).toContain('/proc/sys Invalid argument');
        expect(r.stdout).not.toContain('unmounted');
        expect(r.stdout).not.toContain('wrote /proc/sys');
        expect(r.stdout).toBe(fresh.stdout);
      }
      // And the task still has what SYS_ADMIN gives in its own namespaces (a mount of its own).
      const own = await t.run(['sh', '-c', 'mkdir -p /tmp/m && mount -t tmpfs t /tmp/m && echo mounted'], { encoding: 'utf8' });
      expect(own.stdout).toBe('mounted\n');
    } finally {
      await sb.destroy();
      await t.close();
    }
  });

  it('rejects bad options with EINVAL or EUNSUPPORTED', async () => {
    await expect(Sandbox.template({ zygote: 'ruby' as 'python' })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(Sandbox.template({ zygote: 'python', preload: [1 as unknown as string] })).rejects.toMatchObject({ code: 'EINVAL' });
    // A network: each fork's link is a veth the host makes (test/network/template.test.ts); not
    // pasta's, and no published port, which every fork would want.
    await expect(Sandbox.template({ zygote: 'python', network: { mode: 'bridge', ports: [{ host: 18081, sandbox: 80 }] } })).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/network\.ports/) });
    process.env.HUTCH_NETWORK_BACKEND = 'userspace';
    try {
      await expect(Sandbox.template({ zygote: 'python', network: { mode: 'bridge' } })).rejects.toMatchObject({ code: 'EUNSUPPORTED', message: expect.stringMatching(/kernel backend/) });
    } finally {
      delete process.env.HUTCH_NETWORK_BACKEND;
    }
  });

  it('a timeout that fires before the fork is in its cgroup still ends the task', async () => {
    const u = await Sandbox.template({ zygote: 'python' }); // size 0: every run forks on demand
    try {
      // 1 ms: the timer fires while the fork is being made, before the host has placed it.
      const rs = await Promise.all([1, 1, 2, 5].map((ms) => u.run(['python3', '-c', 'import time; time.sleep(600)'], { timeoutMs: ms })));
      for (const r of rs) expect(r.reason).toBe('timeout');
    } finally {
      await u.close();
    }
  });

  it("runs every fork as the template's user: a run asking for another is EINVAL, never run as someone else", async () => {
    const u = await Sandbox.template({ zygote: 'python', user: '1000:1000' });
    try {
      const r = await u.run(['python3', '-c', 'import os; print(os.getuid(), os.getgid())'], { encoding: 'utf8' });
      expect(r.stdout).toBe('1000 1000\n');
      expect((await u.run(['true'], { user: '1000:1000' })).exitCode).toBe(0);
      await expect(u.run(['true'], { user: 0 })).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/user/) });
    } finally {
      await u.close();
    }
  });

  it('with size, fork() makes the next forks exec init ahead and hands one over as it is; a run turns the queue back to task forks; close() leaves nothing', async () => {
    const t = (await Sandbox.template({ zygote: 'python', size: 1, limits: { pids: 64 } })) as ZygoteTemplate;
    const kids = (pid: number): number[] => {
      try {
        return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ').filter(Boolean).map(Number);
      } catch {
        return [];
      }
    };
    const comm = (pid: number): string => {
      try {
        return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
      } catch {
        return '';
      }
    };
    const zygoteHost = (): number => kids(t.pid).find((p) => comm(p) === 'python3')!;
    const cgroupOf = (pid: number): string => {
      try {
        return readFileSync(`/proc/${pid}/cgroup`, 'utf8');
      } catch {
        return '';
      }
    };
    // The zygote's forks other than `not` (placed: in a cgroup of their own, not the zygote's),
    // once `ok` holds for them (5 s at most).
    const waitKids = async (ok: (pids: number[]) => boolean, not: number[]): Promise<number[]> => {
      for (let i = 0; i < 100; i++) {
        const z = zygoteHost();
        const k = kids(z).filter((p) => !not.includes(p) && !gone(p) && cgroupOf(p) !== cgroupOf(z));
        if (ok(k)) return k;
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`the zygote's children never settled: ${kids(zygoteHost()).map((p) => `${p} ${comm(p)}`).join(', ')}`);
    };
    // What the template's queue holds (the host's view): a fork is in it only once the host
    // placed it, a moment after the kernel shows it in its cgroup. Each take waits for it.
    const queue = (t as unknown as { queue: { ready: unknown[]; sandboxes: unknown[] } }).queue;
    const queued = async (): Promise<void> => {
      // Up to 20 s: under an emulated kernel (.ci/run's v2vm) a prepared fork takes seconds.
      for (let i = 0; i < 400 && queue.ready.length + queue.sandboxes.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
      expect(queue.ready.length + queue.sandboxes.length).toBe(1);
    };
    const opened: Sandbox[] = [];
    try {
      // Made with the template: one fork waiting for a task (the interpreter, not init).
      await queued();
      const [task] = await waitKids((k) => k.length === 1, []);
      expect(comm(task!)).toBe('python3');
      const a = await t.fork();
      opened.push(a);
      expect(a.pid).toBe(task); // that fork became a's init
      // Its replacement goes on to exec init ahead, before any fork() asks for it.
      await queued();
      const [ahead] = await waitKids((k) => k.length === 1 && comm(k[0]!) === 'hutch-init', [a.pid]);
      const b = await t.fork();
      opened.push(b);
      expect(b.pid).toBe(ahead); // handed over as it was
      // A Sandbox like any other: its own namespaces and cgroup (the template's pids limit), exec.
      const ns = async (sb: Sandbox): Promise<string> => String((await sb.exec('readlink /proc/self/ns/net /proc/self/ns/pid', { encoding: 'utf8' })).stdout);
      const [na, nb] = [await ns(a), await ns(b)];
      expect(nb.split('\n')[0]).not.toBe(na.split('\n')[0]);
      expect(nb.split('\n')[1]).not.toBe(na.split('\n')[1]);
      // Its pids limit, read from the host where the kernel keeps it (v1 pids hierarchy or v2).
      const line = cgroupOf(b.pid).split('\n').find((l) => /^\d+:pids:/.test(l)) ?? cgroupOf(b.pid).split('\n').find((l) => l.startsWith('0::'))!;
      const dir = line.includes(':pids:') ? `/sys/fs/cgroup/pids${line.split(':')[2]}` : `/sys/fs/cgroup${line.slice(3)}`;
      expect(dir).toMatch(/\/hutch/);
      expect(readFileSync(`${dir}/pids.max`, 'utf8').trim()).toBe('64');
      // The next one is made ahead too; a run then discards it and the queue makes a task fork.
      await queued();
      const [next] = await waitKids((k) => k.length === 1 && comm(k[0]!) === 'hutch-init', [a.pid, b.pid]);
      const r = await t.run(['python3', '-c', 'print("ran")'], { encoding: 'utf8' });
      expect(r.stdout).toBe('ran\n');
      await queued();
      expect(queue.ready.length).toBe(1); // a task fork again
      const [again] = await waitKids((k) => k.length === 1 && comm(k[0]!) === 'python3', [a.pid, b.pid]);
      for (let i = 0; i < 100 && !gone(next!); i++) await new Promise((res) => setTimeout(res, 50));
      expect(gone(next!)).toBe(true);
      // Another fork() with only a task fork ready: that one becomes init, and init is made ahead again.
      const c = await t.fork();
      opened.push(c);
      expect(c.pid).toBe(again);
      expect((await c.exec('echo ok', { encoding: 'utf8' })).stdout).toBe('ok\n');
      await queued();
      expect(queue.sandboxes.length).toBe(1);
      await waitKids((k) => k.length === 1 && comm(k[0]!) === 'hutch-init', [a.pid, b.pid, c.pid]);
    } finally {
      for (const sb of opened) await sb.destroy();
      await t.close();
    }
    await Sandbox.settle();
    expect(cgroupIds()).toEqual([]);
  });

  it('close() leaves nothing: no process, cgroup or fd; later calls reject EDESTROYED', async () => {
    // A first template opens what hutch keeps for the process's life (cgroup driver, /dev/null).
    await (await Sandbox.template({ zygote: 'python' })).close();
    await Sandbox.settle();
    const fds = fdCount();
    const t = await Sandbox.template({ zygote: 'python', size: 2 });
    const init = t.pid;
    const running = t.run(['python3', '-c', 'import time; time.sleep(30)']);
    // Up to 20 s for the two prepared forks (seconds under an emulated kernel, .ci/run's v2vm).
    for (let i = 0; i < 400 && cgroupIds().length < 4; i++) await new Promise((r) => setTimeout(r, 50));
    expect(cgroupIds().length).toBe(4); // the template, the running fork, two prepared
    await t.close();
    const r = await running;
    expect(r.reason).toBe('killed');
    expect(gone(init)).toBe(true);
    await Sandbox.settle();
    expect(cgroupIds()).toEqual([]);
    expect(fdCount()).toBe(fds);
    await expect(t.run('true')).rejects.toMatchObject({ code: 'EDESTROYED' });
  });
});
