// Per-sandbox id ranges (6.8+): lease files in HUTCH_IDS_DIR hand out slots; a slot this
// process released stays leased to it while idle (reused without file I/O) and its lease goes
// when the process exits.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { afterAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';
import { pruneIds } from '../../lib/idrange.js';
import { selfOwner } from '../../lib/host/liveness.js';
import { ROOT } from '../helpers/reliability.js';
import { needs } from '../helpers/require.js';

const perSandbox = Number(/^(\d+)\.(\d+)/.exec(readFileSync('/proc/sys/kernel/osrelease', 'utf8'))!.slice(1, 3).reduce((a, b) => a * 1000 + Number(b), 0)) >= 6008;
const skip = needs(perSandbox, 'per-sandbox id ranges need Linux 6.8+ (lowerdir+ and idmapped layers)');
const dir = mkdtempSync(join(tmpdir(), 'hutch-ids-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function uidBase(pid: number): number {
  return Number(readFileSync(`/proc/${pid}/uid_map`, 'utf8').trim().split(/\s+/)[1]);
}

describe.skipIf(skip)('id range leases', () => {
  it('two live sandboxes get different ranges; a released slot is reused, and leases go at exit', () => {
    const script = `
      import { Sandbox } from ${JSON.stringify(join(ROOT, 'dist', 'lib', 'index.js'))};
      import { readdirSync, readFileSync } from 'node:fs';
      const base = (pid) => Number(readFileSync('/proc/' + pid + '/uid_map', 'utf8').trim().split(/\\s+/)[1]);
      const a = await Sandbox.create({ image: 'busybox' });
      const b = await Sandbox.create({ image: 'busybox' });
      const leasesLive = readdirSync(process.env.HUTCH_IDS_DIR).length;
      const ra = base(a.pid), rb = base(b.pid);
      await a.destroy();
      const leasesIdle = readdirSync(process.env.HUTCH_IDS_DIR).length;
      const c = await Sandbox.create({ image: 'busybox' });
      const rc = base(c.pid);
      await b.destroy();
      await c.destroy();
      console.log(JSON.stringify({ ra, rb, rc, leasesLive, leasesIdle }));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, HUTCH_IDS_DIR: dir }, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    const o = JSON.parse(r.stdout) as Record<string, number>;
    expect(o.ra).not.toBe(o.rb);
    expect(o.leasesLive).toBe(2);
    // a's slot went idle but stays leased to the process: nobody else may take it meanwhile.
    expect(o.leasesIdle).toBe(2);
    expect(o.rc).toBe(o.ra);
    // The process exited normally: no lease of it is left.
    expect(readdirSync(dir)).toEqual([]);
  });

  it('prune removes the leases of dead processes and keeps live ones', () => {
    writeFileSync(join(dir, '7'), JSON.stringify({ pid: 2 ** 22 + 1, start: '1' })); // no such pid
    writeFileSync(join(dir, '8'), JSON.stringify(selfOwner()));
    const before = process.env.HUTCH_IDS_DIR;
    process.env.HUTCH_IDS_DIR = dir;
    try {
      expect(pruneIds()).toBe(1);
    } finally {
      if (before === undefined) delete process.env.HUTCH_IDS_DIR;
      else process.env.HUTCH_IDS_DIR = before;
    }
    expect(readdirSync(dir)).toEqual(['8']);
    rmSync(join(dir, '8'));
  });

  it('prune takes an empty lease (its writer died between create and write) once it is old, not while fresh', () => {
    writeFileSync(join(dir, '9'), '');
    const before = process.env.HUTCH_IDS_DIR;
    process.env.HUTCH_IDS_DIR = dir;
    try {
      expect(pruneIds()).toBe(0); // just made: its writer may be about to fill it
      const old = new Date(Date.now() - 60_000);
      utimesSync(join(dir, '9'), old, old);
      expect(pruneIds()).toBe(1);
    } finally {
      if (before === undefined) delete process.env.HUTCH_IDS_DIR;
      else process.env.HUTCH_IDS_DIR = before;
    }
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a sandbox of this process runs in a range of its own, not the base one', async () => {
    const sb = await Sandbox.create({ image: 'busybox' });
    try {
      expect(uidBase(sb.pid)).toBeGreaterThan(uidBase(process.pid) === 0 ? 1073741824 : 0);
    } finally {
      await sb.destroy();
    }
  });
});
