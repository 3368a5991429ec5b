// `hutch run -it` and `-i`, on a real terminal: test/helpers/pty-drive.py runs hutch on a pty
// from Python's pty module and types into it; cgroupfs says whether the sandbox is gone.
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { has } from '../helpers/tools.js';

const root = join(import.meta.dirname, '..', '..');
const hutch = ['node', join(root, 'dist/bin/hutch.js')];
const drive = join(import.meta.dirname, '..', 'helpers', 'pty-drive.py');

function driven(scenario: string, args: string[], env: Record<string, string> = {}): Record<string, unknown> {
  const out = execFileSync('python3', [drive, scenario, '--', ...hutch, ...args], { encoding: 'utf8', timeout: 90_000, env: { ...process.env, ...env } });
  const r = JSON.parse(out.trim().split('\n').pop()!) as Record<string, unknown>;
  if (r.error) throw new Error(`${r.error}: ${JSON.stringify(r.out)}`);
  return r;
}

describe.skipIf(!has('python3'))('hutch run -it / -i', () => {
  it('-it: raw mode, the size and its changes, Ctrl-C to the command, exit status, the terminal restored', () => {
    const r = driven('session', ['run', '-it', '--image', 'busybox', '--', 'sh']);
    expect(r.rawDuring).toBe(true);
    expect(r.size).toMatch(/^30 100\r+\n\/dev\/pts\/0\r+\nT=xterm-256color$/);
    expect(r.resized).toBe('40 120');
    expect(r.ctrlc).toBe('status 130'); // sleep ended by SIGINT, the shell lives on
    expect(r.ctrlcSeconds as number).toBeLessThan(60);
    expect(r.exit).toBe(7);
    expect(r.rawAfter).toBe(false);
  });

  it('-it: the terminal closing (SIGHUP) destroys the sandbox: its cgroups are gone', () => {
    const r = driven('hangup', ['run', '-it', '--image', 'busybox', '--', 'sh']);
    expect((r.cgroupsBefore as string[]).length).toBeGreaterThan(0);
    expect(r.cgroupsAfter).toEqual([]);
    expect(r.exit).toBe(128 + 1); // sh ended by the SIGHUP hutch forwarded
  });

  for (const sig of ['SIGHUP', 'SIGTERM', 'SIGINT']) {
    it(`${sig} to a hutch run destroys the sandbox: its cgroups are gone`, () => {
      const r = driven('signal', ['run', '--image', 'busybox', '--', 'sleep', '100'], { PTY_DRIVE_SIGNAL: sig });
      expect((r.cgroupsBefore as string[]).length).toBeGreaterThan(0);
      expect(r.cgroupsAfter).toEqual([]);
      expect(r.exit).toBe(128 + ({ SIGHUP: 1, SIGINT: 2, SIGTERM: 15 } as Record<string, number>)[sig]!);
    });
  }

  it('-i keeps stdin open without a pty; without -i the command reads no input (as docker run)', () => {
    const run = (args: string[]) => spawnSync(hutch[0]!, [...hutch.slice(1), ...args], { input: 'one\ntwo\n', encoding: 'utf8', timeout: 60_000 });
    const i = run(['run', '-i', '--image', 'busybox', '--', 'sh', '-c', 'test -t 0 || echo notatty; cat']);
    expect(i.stdout).toBe('notatty\none\ntwo\n');
    expect(i.status).toBe(0);
    expect(run(['run', '--image', 'busybox', '--', 'cat']).stdout).toBe('');
    const it = run(['run', '-it', '--image', 'busybox', '--', 'cat']);
    expect(it.status).toBe(125);
    expect(it.stderr).toMatch(/EINVAL.*not a TTY/);
    const t = run(['run', '-t', '--image', 'busybox', '--', 'sh', '-c', 'test -t 1 && stty size']);
    expect(t.stdout).toBe('24 80\r\n');
  });

  it('exit status as docker run: 127 for a command not found, 126 for one that cannot run', () => {
    const run = (args: string[]) => spawnSync(hutch[0]!, [...hutch.slice(1), ...args], { encoding: 'utf8', timeout: 60_000 });
    expect(run(['run', '--image', 'busybox', '--', '/no/such']).status).toBe(127);
    expect(run(['run', '--image', 'busybox', '--', '/etc']).status).toBe(126);
  });
});
