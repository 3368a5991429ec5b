/**
 * Policy knobs, seen from inside with the kernel's own view: a custom seccomp profile filters
 * exactly what it names; the default profile lets a Debian userland and node run; 'unconfined'
 * only when asked for by name; `capabilities` and `user` give exactly the privileges asked for;
 * bad names and malformed profiles are EINVAL naming the culprit before anything starts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HutchError, Sandbox, type SandboxOptions, type SeccompProfile } from '../../lib/index.js';
import { installProbe, probe } from './probe.js';
import { outerSeccomp } from '../helpers/require.js';

const ZERO = '0'.repeat(16);
const DEFAULT_CAPS = '00000000800405fb';

async function einval(options: SandboxOptions, ...fragments: string[]): Promise<void> {
  const err = await Sandbox.create(options).then(
    async (sb) => {
      await sb.destroy();
      return new Error(`created a sandbox with ${JSON.stringify(options)}`);
    },
    (e: unknown) => e,
  );
  expect(HutchError.is(err), String(err)).toBe(true);
  expect((err as HutchError).code).toBe('EINVAL');
  for (const f of fragments) expect((err as HutchError).message).toContain(f);
}

describe('a custom profile: default allow, mkdir/mkdirat -> EPERM', () => {
  const profile: SeccompProfile = {
    defaultAction: 'SCMP_ACT_ALLOW',
    syscalls: [{ names: ['mkdir', 'mkdirat'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 }],
  };
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await Sandbox.create({ image: 'busybox', seccomp: profile });
    await installProbe(sb);
  });
  afterAll(async () => {
    await sb?.destroy();
  });

  it('makes mkdir fail with EPERM', async () => {
    const r = await sb.exec(['mkdir', '/tmp/d'], { encoding: 'utf8' });
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/Operation not permitted/);
    const p = await sb.exec(['mkdir', '-p', '/var/a/b'], { encoding: 'utf8' });
    expect(p.stderr).toMatch(/Operation not permitted/);
  });

  it('and nothing else: files, links, pipes, processes work; calls the default profile refuses pass', async () => {
    const r = await sb.exec('touch /tmp/f && echo hi > /tmp/f && ln -s /tmp/f /tmp/l && mv /tmp/l /tmp/m && cat /tmp/m && rm /tmp/f /tmp/m && seq 3 | sort -r | tr "\\n" " "', { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('hi\n3 2 1 ');
    expect(r.exitCode).toBe(0);
    // A pod's own filter (deploy/seccomp/hutch.json, as Docker's default) allows personality
    // only for the usual personas: ADDR_NO_RANDOMIZE is refused there (ENOSYS), not by hutch.
    expect(await probe(sb, ['personality', '0x0040000'])).toBe(outerSeccomp ? 'refused ENOSYS' : 'ok');
    expect(await probe(sb, ['clone3'])).toBe('ok');
    expect(await probe(sb, ['socket', 'vsock'])).toMatch(/^(ok|refused EAFNOSUPPORT)$/);
    expect(await probe(sb, ['status'])).toMatch(/NoNewPrivs=1 Seccomp=2$/);
  });
});

describe('capabilities and user', () => {
  let sb: Sandbox;
  let chown: Sandbox;
  beforeAll(async () => {
    [sb, chown] = await Promise.all([
      Sandbox.create({ image: 'busybox', user: '1000:1000' }),
      Sandbox.create({ image: 'busybox', capabilities: ['CHOWN'] }),
    ]);
    await Promise.all([installProbe(sb), installProbe(chown)]);
  });
  afterAll(async () => {
    await Promise.all([sb?.destroy(), chown?.destroy()]);
  });

  it("user '1000:1000' runs with no capabilities at all (the bounding set still the default)", async () => {
    expect(await probe(sb, ['status'])).toBe(
      `Uid=1000,1000,1000,1000 Gid=1000,1000,1000,1000 Groups= CapInh=${ZERO} CapPrm=${ZERO} CapEff=${ZERO} CapBnd=${DEFAULT_CAPS} CapAmb=${ZERO} NoNewPrivs=1 Seccomp=2`,
    );
    // and cannot become root again
    const r = await sb.exec(['su', '-c', 'id -u'], { encoding: 'utf8' });
    expect(r.stdout).not.toBe('0\n');
    expect(await probe(sb, ['chroot', '/'])).toBe('refused EPERM');
  });

  it("an exec's own user overrides the sandbox's, with the same rules", async () => {
    expect(await probe(sb, ['status'], { user: '0:0' })).toContain(`CapEff=${DEFAULT_CAPS}`);
    expect(await probe(sb, ['status'], { user: '65534' })).toMatch(new RegExp(`^Uid=65534,65534,65534,65534 .*CapPrm=${ZERO} CapEff=${ZERO} `));
  });

  it("capabilities: ['CHOWN'] gives exactly that set", async () => {
    expect(await probe(chown, ['status'])).toBe(
      `Uid=0,0,0,0 Gid=0,0,0,0 Groups= CapInh=${ZERO} CapPrm=0000000000000001 CapEff=0000000000000001 CapBnd=0000000000000001 CapAmb=${ZERO} NoNewPrivs=1 Seccomp=2`,
    );
    // CHROOT is gone from the set, so is chroot(2) (the kernel and the filter agree).
    expect(await probe(chown, ['chroot', '/'])).toBe('refused EPERM');
    const r = await chown.exec('touch /tmp/o && chown 1234:1234 /tmp/o && stat -c %u:%g /tmp/o', { encoding: 'utf8' });
    expect(r.stdout).toBe('1234:1234\n');
  });

  it('an unknown capability name is EINVAL naming it', async () => {
    await einval({ image: 'busybox', capabilities: ['CHOWN', 'SYS_ADMINN'] }, 'capabilities[1]', 'SYS_ADMIN');
    await einval({ image: 'busybox', capabilities: ['CAP_WIZARD'] }, 'capabilities[0]');
    await einval({ image: 'busybox', capabilities: 'CHOWN' as unknown as string[] }, 'capabilities');
  });
});

describe("seccomp: 'unconfined' only by name; malformed profiles are EINVAL naming the rule", () => {
  it('refuses every near-miss instead of running unfiltered', async () => {
    for (const seccomp of [null, '', 'none', 'Unconfined', 'disabled', false, 0, {}, []]) {
      await einval({ image: 'busybox', seccomp: seccomp as unknown as SeccompProfile }, 'seccomp');
    }
  });

  it("'unconfined' by name runs with no filter at all", async () => {
    const r = await Sandbox.run({ image: 'busybox', seccomp: 'unconfined', command: ['grep', 'Seccomp:', '/proc/self/status'], encoding: 'utf8' });
    // Under a container's own filter, that one stays (no process can shed a filter).
    expect(r.stdout).toBe(`Seccomp:\t${outerSeccomp ? 2 : 0}\n`);
    const d = await Sandbox.run({ image: 'busybox', command: ['grep', 'Seccomp:', '/proc/self/status'], encoding: 'utf8' });
    expect(d.stdout).toBe('Seccomp:\t2\n');
  });

  it('names the rule of a malformed profile', async () => {
    const rule = (r: object): SeccompProfile =>
      ({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW' }, r] }) as SeccompProfile;
    await einval({ image: 'busybox', seccomp: rule({ names: ['mkdirr'], action: 'SCMP_ACT_ERRNO' }) }, 'seccomp.syscalls[1].names[0]', 'mkdirr');
    await einval({ image: 'busybox', seccomp: rule({ names: ['read'], action: 'SCMP_ACT_MAYBE' }) }, 'seccomp.syscalls[1].action');
    await einval(
      { image: 'busybox', seccomp: rule({ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 1, op: 'SCMP_CMP_SAME' }] }) },
      'seccomp.syscalls[1].args[0].op',
    );
    await einval({ image: 'busybox', seccomp: { syscalls: [] } as unknown as SeccompProfile }, 'seccomp.defaultAction');
    const huge = Array.from({ length: 1000 }, (_, i) => ({ names: ['ioctl'], action: 'SCMP_ACT_ALLOW' as const, args: [{ index: 1, op: 'SCMP_CMP_EQ' as const, value: i }] }));
    await einval({ image: 'busybox', seccomp: { defaultAction: 'SCMP_ACT_ERRNO', syscalls: huge } }, 'seccomp');
  });
});

describe('the default profile runs a Debian userland and node (host image)', () => {
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await Sandbox.create({ image: 'host' });
  });
  afterAll(async () => {
    await sb?.destroy();
  });

  it('node -e: fs, crypto, child_process, worker_threads, timers, a loopback server', async () => {
    const js = `
      const fs = require('fs'), cp = require('child_process'), { Worker } = require('worker_threads'), net = require('net');
      fs.writeFileSync('/tmp/n.txt', 'x'.repeat(1e5));
      const h = require('crypto').createHash('sha256').update(fs.readFileSync('/tmp/n.txt')).digest('hex').slice(0, 8);
      const echo = cp.execFileSync('/bin/sh', ['-c', 'echo child']).toString().trim();
      const w = new Worker('require("worker_threads").parentPort.postMessage(6 * 7)', { eval: true });
      w.on('message', (v) => {
        const srv = net.createServer((c) => c.end('pong')).listen(0, '127.0.0.1', () => {
          net.connect(srv.address().port, '127.0.0.1').on('data', (d) => {
            console.log(h, echo, v, String(d));
            srv.close();
          });
        });
      });`;
    const r = await sb.exec(['node', '-e', js], { encoding: 'utf8', timeoutMs: 30_000 });
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^[0-9a-f]{8} child 42 pong\n$/);
    expect(r.exitCode).toBe(0);
  });

  it('python3 -c: threads, subprocess, sockets, os.urandom, tempfile, sqlite3', async () => {
    const py = [
      'import os, socket, subprocess, sys, tempfile, threading, json, hashlib',
      'out = []',
      't = threading.Thread(target=lambda: out.append(len(os.urandom(16)))); t.start(); t.join()',
      'out.append(subprocess.run(["echo", "sub"], capture_output=True, text=True).stdout.strip())',
      's = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)',
      'c = socket.create_connection(s.getsockname()); a, _ = s.accept(); c.sendall(b"ping"); out.append(a.recv(4).decode())',
      'f = tempfile.NamedTemporaryFile(delete=False); f.write(b"x"); f.close(); out.append(os.path.getsize(f.name))',
      'try:\n import sqlite3; db = sqlite3.connect(":memory:"); out.append(db.execute("select 6*7").fetchone()[0])\nexcept ImportError:\n out.append(42)',
      'print(json.dumps(out))',
    ].join('\n');
    const r = await sb.exec(['python3', '-c', py], { encoding: 'utf8', timeoutMs: 30_000 });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('[16, "sub", "ping", 1, 42]\n');
  });

  it('sh pipelines, coreutils, find, sort, awk', async () => {
    const r = await sb.exec('ls /usr/bin | sort | head -50 | wc -l; find /etc -maxdepth 1 -name "*.conf" 2>/dev/null | head -1 | wc -l; seq 1 100 | awk "{s+=\\$1} END {print s}"; echo a:b | cut -d: -f2 | tr a-z A-Z', { encoding: 'utf8' });
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toBe('50\n1\n5050\nB\n');
  });

  it('busybox sh pipelines in the busybox image', async () => {
    const bb = await Sandbox.create({ image: 'busybox' });
    try {
      const r = await bb.exec('seq 1 1000 | grep 7 | sort -rn | head -3 | tr "\\n" " "; echo; (sleep 0.01 & wait); echo $((6*7)) | xargs -n1 echo', { encoding: 'utf8' });
      expect(r.stdout).toBe('997 987 979 \n42\n');
      expect(r.exitCode).toBe(0);
    } finally {
      await bb.destroy();
    }
  });
});
