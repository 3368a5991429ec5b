// Pseudo-terminals: spawn(cmd, { tty }) on the sandbox's own devpts, tried as a user would, on
// the real kernel: isatty, window size and SIGWINCH, Ctrl-C/Ctrl-Z/Ctrl-\ through the line
// discipline, EOF, exit status, backpressure, the output cap, and TIOCSTI refused inside.
import { execFileSync } from 'node:child_process';
import { fstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HutchError, Sandbox, type SandboxProcess } from '../../lib/index.js';

/** Collects a tty process's output; `until(re)` resolves once it matches. */
function reader(p: SandboxProcess): { text: () => string; until: (re: RegExp, ms?: number) => Promise<string> } {
  let out = '';
  const waiters: { re: RegExp; res: (s: string) => void }[] = [];
  p.stdout.on('data', (b: Buffer) => {
    out += b.toString();
    for (const w of waiters.splice(0)) {
      if (w.re.test(out)) w.res(out);
      else waiters.push(w);
    }
  });
  return {
    text: () => out,
    until: (re, ms = 10_000) =>
      new Promise((res, rej) => {
        if (re.test(out)) return res(out);
        const t = setTimeout(() => rej(new Error(`no ${re} in ${JSON.stringify(out)}`)), ms);
        waiters.push({ re, res: (s) => (clearTimeout(t), res(s)) });
      }),
  };
}

/** A static program that tries TIOCSTI and TIOCLINUX on its terminal and prints the errno of each. */
function tiocstiProgram(): Buffer {
  const dir = mkdtempSync(join(tmpdir(), 'hutch-tiocsti-'));
  try {
    writeFileSync(
      join(dir, 'p.c'),
      `#include <errno.h>
#include <stdio.h>
#include <sys/ioctl.h>
int main(void) {
  char c = 'X';
  int a = ioctl(0, TIOCSTI, &c) < 0 ? errno : 0;
  char sub = 0; /* TIOCL_... subcode 0 */
  int b = ioctl(0, TIOCLINUX, &sub) < 0 ? errno : 0;
  printf("TIOCSTI=%d TIOCLINUX=%d\\n", a, b);
  return 0;
}
`,
    );
    execFileSync('gcc', ['-static', '-O1', '-o', join(dir, 'p'), join(dir, 'p.c')]);
    return readFileSync(join(dir, 'p'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('tty', () => {
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await Sandbox.create({ image: 'busybox' });
  });
  afterAll(() => sb.destroy());

  it('gives the process a terminal of the sandbox: isatty, its own /dev/pts, 80x24, TERM', async () => {
    const p = sb.spawn(['sh', '-c', 'test -t 0 && test -t 1 && tty; stty size; echo "TERM=$TERM"; ls /dev/pts'], { tty: true });
    const r = reader(p);
    let stderr = '';
    p.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const res = await p.result;
    expect(res).toMatchObject({ exitCode: 0, reason: 'exit' });
    expect(r.text()).toMatch(/^\/dev\/pts\/0\r\n24 80\r\nTERM=xterm-256color\r\n0\s+ptmx\r\n$/);
    expect(stderr).toBe('');
  });

  it('its master is of the sandbox devpts, not the host', async () => {
    const p = sb.spawn(['sleep', '100'], { tty: true });
    p.stdout.resume();
    await new Promise<void>((res) => {
      const t = setInterval(() => {
        if ((p as unknown as { ptyFd: number }).ptyFd >= 0) clearInterval(t), res();
      }, 5);
    });
    const fd = (p as unknown as { ptyFd: number }).ptyFd;
    expect(fstatSync(fd).isCharacterDevice()).toBe(true);
    expect(fstatSync(fd).dev).not.toBe(statSync('/dev/pts/ptmx').dev);
    p.kill('SIGKILL');
    expect((await p.result).reason).toBe('killed');
  });

  it('takes a size and an env TERM', async () => {
    const p = sb.spawn(['sh', '-c', 'stty size; echo "TERM=$TERM"'], { tty: { columns: 132, rows: 43 }, env: { TERM: 'vt100' } });
    const r = reader(p);
    await p.result;
    expect(r.text()).toBe('43 132\r\nTERM=vt100\r\n');
  });

  it('resize() changes the size and the process gets SIGWINCH', async () => {
    const p = sb.spawn(['sh', '-c', 'trap "echo WINCH; stty size" WINCH; echo ready; while :; do sleep 0.05; done'], { tty: true });
    const r = reader(p);
    await r.until(/ready/);
    p.resize(100, 30);
    await r.until(/WINCH\r\n30 100\r\n/);
    p.kill('SIGKILL');
    expect((await p.result).reason).toBe('killed');
  });

  it('refuses resize() without a tty and bad sizes, with EINVAL', async () => {
    const p = sb.spawn(['true']);
    p.stdout.resume();
    p.stderr.resume();
    expect(() => p.resize(80, 24)).toThrow(HutchError);
    await p.result;
    const t = sb.spawn(['true'], { tty: true });
    t.stdout.resume();
    for (const [c, r] of [[0, 24], [80, 0], [70000, 24], [1.5, 24]] as const) expect(() => t.resize(c, r)).toThrow(/EINVAL|integer from 1 to 65535/);
    await t.result;
    for (const tty of [{ columns: 0 }, { rows: 'x' }, { cols: 80 }, 'yes', 1]) {
      expect(() => sb.spawn(['true'], { tty: tty as never })).toThrow(HutchError);
    }
  });

  it('Ctrl-C, Ctrl-\\ and Ctrl-Z reach the foreground process group through the line discipline', async () => {
    const c = sb.spawn(['sleep', '100'], { tty: true });
    c.stdout.resume();
    await new Promise((res) => setTimeout(res, 100));
    c.stdin.write('\x03');
    expect(await c.result).toMatchObject({ exitCode: null, signal: 'SIGINT', reason: 'signal' });

    const q = sb.spawn(['sleep', '100'], { tty: true });
    q.stdout.resume();
    await new Promise((res) => setTimeout(res, 100));
    q.stdin.write('\x1c');
    expect(await q.result).toMatchObject({ signal: 'SIGQUIT', reason: 'signal' });

    // Ctrl-Z stops a job of a job-control shell (the kernel discards SIGTSTP to an orphaned
    // process group, as the session leader's own is: init is outside the session).
    const z = sb.spawn(['sh', '-i'], { tty: true });
    const r = reader(z);
    await r.until(/\/ # /); // busybox ash's prompt (then it asks for the cursor position)
    z.stdin.write('sleep 100\n');
    await new Promise((res) => setTimeout(res, 200));
    z.stdin.write('\x1a');
    await r.until(/\^Z\[1\]\+\s+Stopped\s+sleep 100/);
    z.stdin.write('kill -9 %1\n');
    for (let i = 0; i < 50 && !/Killed\s+sleep 100/.test(r.text()); i++) {
      z.stdin.write('jobs\n');
      await new Promise((res) => setTimeout(res, 100));
    }
    z.stdin.write('exit\n');
    expect(await z.result).toMatchObject({ exitCode: 0, reason: 'exit' });
  });

  it('ending stdin is EOF (Ctrl-D); the exit status is the process\'s', async () => {
    const p = sb.spawn(['sh', '-c', 'cat; echo "cat ended"; exit 3'], { tty: true });
    const r = reader(p);
    p.stdin.write('hello\n');
    await r.until(/hello\r\nhello\r\n/); // the echo, then cat's copy
    p.stdin.end();
    const res = await p.result;
    expect(res).toMatchObject({ exitCode: 3, reason: 'exit' });
    expect(r.text()).toMatch(/cat ended\r\n$/);
  });

  it('holds output back while stdout is not read (backpressure) and delivers it all', async () => {
    // No newlines: the line discipline passes long runs at once (tens of MB/s here).
    const p = sb.spawn(['sh', '-c', 'head -c 20000000 /dev/zero | tr "\\0" x; echo; echo END'], { tty: true });
    let ended = false;
    void p.result.then(() => (ended = true));
    p.stdout.pause();
    await new Promise((res) => setTimeout(res, 1000));
    // Without backpressure the 20 MB would all be buffered in Node by now and the writer done.
    expect(p.stdout.readableLength).toBeLessThan(4 << 20);
    expect(ended).toBe(false);
    let n = 0;
    let tail = '';
    p.stdout.on('data', (b: Buffer) => {
      n += b.length;
      tail = (tail + b.toString()).slice(-20);
    });
    p.stdout.resume();
    const res = await p.result;
    expect(res.reason).toBe('exit');
    expect(tail).toMatch(/END\r\n$/);
    expect(n).toBe(20_000_000 + 7); // \r\nEND\r\n
  });

  it('stops at the output cap with reason output-limit', async () => {
    const p = sb.spawn(['yes'], { tty: true, output: '64k' });
    let n = 0;
    p.stdout.on('data', (b: Buffer) => (n += b.length));
    const res = await p.result;
    expect(res).toMatchObject({ reason: 'output-limit', truncated: true });
    expect(n).toBe(64 * 1024);
  });

  it('timeoutMs ends it as timeout', async () => {
    const p = sb.spawn(['sleep', '100'], { tty: true, timeoutMs: 200 });
    p.stdout.resume();
    expect(await p.result).toMatchObject({ reason: 'timeout', signal: 'SIGKILL' });
  });

  it('a command that does not exist rejects with ESETUP and leaves no fd', async () => {
    const fds = () => readdirSync('/proc/self/fd').length;
    const before = fds();
    for (let i = 0; i < 10; i++) {
      const p = sb.spawn(['/no/such'], { tty: true });
      await expect(p.result).rejects.toMatchObject({ code: 'ESETUP', step: 'exec', errno: 'ENOENT' });
    }
    expect(fds()).toBe(before);
  });

  it('refuses TIOCSTI and TIOCLINUX inside with EPERM (the default seccomp profile), which the kernel would allow', async () => {
    const prog = tiocstiProgram();
    await sb.writeFile('/tmp/tiocsti', prog, { mode: 0o755 });
    const p = sb.spawn(['/tmp/tiocsti'], { tty: true });
    const r = reader(p);
    await p.result;
    expect(r.text()).toBe('TIOCSTI=1 TIOCLINUX=1\r\n'); // EPERM
    // The attack itself works without the filter (this host allows TIOCSTI on one's own
    // terminal): the refusal is the profile's.
    const open = await Sandbox.create({ image: 'busybox', seccomp: 'unconfined' });
    try {
      await open.writeFile('/tmp/tiocsti', prog, { mode: 0o755 });
      const q = open.spawn(['/tmp/tiocsti'], { tty: true });
      const rq = reader(q);
      await q.result;
      const legacy = readFileSync('/proc/sys/dev/tty/legacy_tiocsti', 'utf8').trim();
      expect(rq.text()).toMatch(legacy === '1' ? /TIOCSTI=0 / : /TIOCSTI=(1|5) /);
    } finally {
      await open.destroy();
    }
  });
});
