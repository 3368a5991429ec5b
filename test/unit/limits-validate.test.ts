// Pure validation of `Limits`: no kernel features needed beyond reading /proc/self/limits
// and /sys/devices/system/cpu/online; nothing on the host is changed.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { HutchError } from '../../lib/errors.js';
import { CPU_PERIOD_US, DEFAULT_OUTPUT_BYTES, DEFAULT_PIDS, RLIMIT, mergeExecLimits, onlineCpus, parseCpuList, resolveLimits, suggest } from '../../lib/limits.js';
import { parseCgroupHost } from '../../lib/cgroup/detect.js';

function err(fn: () => unknown): HutchError {
  try {
    fn();
  } catch (e) {
    if (HutchError.is(e)) return e;
    throw e;
  }
  throw new Error('expected a HutchError');
}

function hardLimit(name: string): number {
  const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith(name))!;
  const hard = line.slice(name.length).trim().split(/\s+/)[1]!;
  return hard === 'unlimited' ? Infinity : Number(hard);
}

describe('resolveLimits', () => {
  it('resolves nothing to the defaults: swap off, pids 1024, output 16 MiB', () => {
    const r = resolveLimits(undefined);
    expect(r).toEqual({
      cgroup: { memoryBytes: null, swapBytes: 0, swapExplicit: false, memoryAccounting: 'shared', cpuQuotaUs: null, cpuPeriodUs: null, cpuset: null, pids: 1024, pidsExplicit: false, io: null },
      rlimits: [],
      timeoutMs: null,
      outputBytes: 16 * 2 ** 20,
      diskBytes: null,
    });
    expect(DEFAULT_PIDS).toBe(1024);
    expect(DEFAULT_OUTPUT_BYTES).toBe(16 * 2 ** 20);
    expect(resolveLimits({})).toEqual(r);
    expect(resolveLimits({ memory: undefined })).toEqual(r);
  });

  it('resolves every field to numbers', () => {
    const r = resolveLimits({
      memory: '256MiB',
      memorySwap: '64M',
      cpus: 0.5,
      cpuset: '0',
      pids: 64,
      disk: '1G',
      io: { readBps: '10MB', writeIops: 100 },
      nofile: 256,
      nproc: 100,
      fileSize: '1M',
      stack: '8M',
      cpuTimeMs: 1500,
      timeoutMs: 2000,
      output: '1MiB',
    });
    expect(r.cgroup).toEqual({
      memoryBytes: 256 * 2 ** 20,
      swapBytes: 64 * 2 ** 20,
      swapExplicit: true,
      memoryAccounting: 'sandbox',
      cpuQuotaUs: 50_000,
      cpuPeriodUs: CPU_PERIOD_US,
      cpuset: '0',
      pids: 64,
      pidsExplicit: true,
      io: { readBps: 10_000_000, writeBps: null, readIops: null, writeIops: 100 },
    });
    expect(r.rlimits).toEqual([
      { name: 'nofile', resource: RLIMIT.NOFILE, soft: 256, hard: 256 },
      { name: 'nproc', resource: RLIMIT.NPROC, soft: 100, hard: 100 },
      { name: 'fileSize', resource: RLIMIT.FSIZE, soft: 2 ** 20, hard: 2 ** 20 },
      { name: 'stack', resource: RLIMIT.STACK, soft: 8 * 2 ** 20, hard: 8 * 2 ** 20 },
      { name: 'cpuTimeMs', resource: RLIMIT.CPU, soft: 2, hard: 2 }, // 1500 ms rounds up to 2 s
    ]);
    expect([r.timeoutMs, r.outputBytes, r.diskBytes]).toEqual([2000, 2 ** 20, 2 ** 30]);
  });

  it.each([
    ['memroy', 'memory'],
    ['Memory', 'memory'],
    ['cpu', 'cpus'],
    ['timeout', 'timeoutMs'],
    ['memory_swap', 'memorySwap'],
    ['noFile', 'nofile'],
    ['pid', 'pids'],
    ['filesize', 'fileSize'],
  ])('rejects the unknown key %s, suggesting %s', (key, intended) => {
    const e = err(() => resolveLimits({ [key]: 1 } as never));
    expect(e.code).toBe('EINVAL');
    expect(e.message).toContain(`'${key}'`);
    expect(e.message).toContain(`did you mean '${intended}'`);
    expect(suggest(key, ['memory', 'memorySwap', 'cpus', 'timeoutMs', 'nofile', 'pids', 'fileSize'])).toBe(intended);
  });

  it('rejects an unknown key with no close match, listing the known ones', () => {
    const e = err(() => resolveLimits({ bandwidth: 1 } as never));
    expect(e.message).toContain("'bandwidth'");
    expect(e.message).not.toContain('did you mean');
    expect(e.message).toContain('memory, memorySwap, memoryAccounting, cpus');
  });

  it('rejects unknown io keys and non-objects', () => {
    expect(err(() => resolveLimits({ io: { readbps: '1M' } } as never)).message).toMatch(/limits\.io.*'readbps'.*did you mean 'readBps'/);
    expect(err(() => resolveLimits({ io: 5 } as never)).message).toContain('limits.io');
    expect(err(() => resolveLimits(7 as never)).message).toContain('invalid option limits');
    expect(err(() => resolveLimits([] as never)).code).toBe('EINVAL');
  });

  it.each([
    [{ memory: -1 }, 'limits.memory'],
    [{ memory: 0 }, 'limits.memory'],
    [{ memory: '512k' }, 'limits.memory'], // below 1 MiB: init cannot start
    [{ memory: 'lots' }, 'limits.memory'],
    [{ memorySwap: -1 }, 'limits.memorySwap'],
    [{ pids: 1.5 }, 'limits.pids'],
    [{ pids: 0 }, 'limits.pids'],
    [{ pids: 5_000_000 }, 'limits.pids'],
    [{ cpus: 0 }, 'limits.cpus'],
    [{ cpus: -0.5 }, 'limits.cpus'],
    [{ cpus: NaN }, 'limits.cpus'],
    [{ cpus: 0.001 }, 'limits.cpus'],
    [{ cpus: '1' }, 'limits.cpus'],
    [{ cpuset: '' }, 'limits.cpuset'],
    [{ cpuset: 'all' }, 'limits.cpuset'],
    [{ cpuset: '3-1' }, 'limits.cpuset'],
    [{ cpuset: 0 }, 'limits.cpuset'],
    [{ nofile: 0 }, 'limits.nofile'],
    [{ nproc: 2.5 }, 'limits.nproc'],
    [{ stack: '1k' }, 'limits.stack'],
    [{ cpuTimeMs: 0 }, 'limits.cpuTimeMs'],
    [{ timeoutMs: -1 }, 'limits.timeoutMs'],
    [{ timeoutMs: Infinity }, 'limits.timeoutMs'],
    [{ output: '10 apples' }, 'limits.output'],
    [{ disk: 0 }, 'limits.disk'],
    [{ io: { readIops: 0 } }, 'limits.io.readIops'],
    [{ io: { writeBps: '-1M' } }, 'limits.io.writeBps'],
  ])('rejects %j naming %s', (limits, field) => {
    const e = err(() => resolveLimits(limits as never));
    expect(e.code).toBe('EINVAL');
    expect(e.message).toContain(field);
  });

  it('names the field with a custom prefix', () => {
    expect(err(() => resolveLimits({ pids: -1 }, 'options.limits')).message).toContain('options.limits.pids');
  });

  it('accepts fileSize 0 and memorySwap 0 (both meaningful)', () => {
    expect(resolveLimits({ fileSize: 0 }).rlimits[0]).toMatchObject({ soft: 0, hard: 0 });
    expect(resolveLimits({ memory: '64M', memorySwap: 0 }).cgroup).toMatchObject({ swapBytes: 0, swapExplicit: true });
  });

  it("resolves memoryAccounting: 'sandbox' with a memory limit, 'shared' without, and refuses 'shared' with one", () => {
    expect(resolveLimits({ memory: '64M' }).cgroup.memoryAccounting).toBe('sandbox');
    expect(resolveLimits({ memorySwap: '64M' }).cgroup.memoryAccounting).toBe('sandbox');
    expect(resolveLimits({}).cgroup.memoryAccounting).toBe('shared');
    expect(resolveLimits({ memoryAccounting: 'sandbox' }).cgroup.memoryAccounting).toBe('sandbox');
    expect(resolveLimits({ memoryAccounting: undefined, pids: 5 }).cgroup.memoryAccounting).toBe('shared');
    for (const bad of [{ memory: '64M' }, { memorySwap: 0 }]) {
      const e = err(() => resolveLimits({ ...bad, memoryAccounting: 'shared' }));
      expect(e).toBeInstanceOf(HutchError);
      expect(e.code).toBe('EINVAL');
      expect(e.message).toContain('limits.memoryAccounting');
      expect(e.message).toContain('a memory limit needs a memory cgroup');
    }
    for (const bad of ['own', '', 1, null, true]) {
      expect(() => resolveLimits({ memoryAccounting: bad as never })).toThrow(/invalid option limits.memoryAccounting: expected 'sandbox'/);
    }
  });

  it('turns cpus into a quota over a 100 ms period, up to the online CPU count', () => {
    const n = onlineCpus().length;
    expect(resolveLimits({ cpus: n }).cgroup.cpuQuotaUs).toBe(n * CPU_PERIOD_US);
    expect(resolveLimits({ cpus: 0.01 }).cgroup.cpuQuotaUs).toBe(1000);
    expect(err(() => resolveLimits({ cpus: n + 1 })).message).toMatch(new RegExp(`from 0\\.01 to ${n}`));
  });

  it('checks cpuset against the online CPUs and normalizes it', () => {
    const online = onlineCpus();
    expect(resolveLimits({ cpuset: `${online[0]}` }).cgroup.cpuset).toBe(`${online[0]}`);
    if (online.length >= 2) expect(resolveLimits({ cpuset: ` ${online[1]},${online[0]}, ${online[0]}` }).cgroup.cpuset).toBe(`${online[0]}-${online[1]}`);
    const e = err(() => resolveLimits({ cpuset: '4095' }));
    expect(e.message).toContain('CPU 4095 is not online');
    expect(parseCpuList('0-2,5,7-8')).toEqual([0, 1, 2, 5, 7, 8]);
    expect(parseCpuList('1-0')).toBeUndefined();
  });

  it('rejects an rlimit above this process\'s hard limit, naming the limit and the maximum', () => {
    const nofile = hardLimit('Max open files');
    expect(resolveLimits({ nofile }).rlimits[0]!.hard).toBe(nofile);
    const e = err(() => resolveLimits({ nofile: nofile + 1 }));
    expect(e.code).toBe('EINVAL');
    expect(e.message).toContain('limits.nofile');
    expect(e.message).toContain(`the maximum is ${nofile} files`);
    const nproc = hardLimit('Max processes');
    if (Number.isFinite(nproc)) expect(err(() => resolveLimits({ nproc: nproc + 1 })).message).toContain(`the maximum is ${nproc} processes`);
  });
});

describe('mergeExecLimits', () => {
  const base = resolveLimits({ timeoutMs: 5000, output: '1M' });
  it('keeps the sandbox values when the exec gives none', () => {
    expect(mergeExecLimits(base)).toEqual({ timeoutMs: 5000, outputBytes: 2 ** 20 });
    expect(mergeExecLimits(resolveLimits({}), {})).toEqual({ timeoutMs: null, outputBytes: DEFAULT_OUTPUT_BYTES });
  });
  it('lets the exec override either', () => {
    expect(mergeExecLimits(base, { timeoutMs: 100 })).toEqual({ timeoutMs: 100, outputBytes: 2 ** 20 });
    expect(mergeExecLimits(base, { output: '4k' })).toEqual({ timeoutMs: 5000, outputBytes: 4096 });
  });
  it('validates the overrides, naming the exec option', () => {
    expect(err(() => mergeExecLimits(base, { timeoutMs: 0 })).message).toContain('options.timeoutMs');
    expect(err(() => mergeExecLimits(base, { output: 'x' }, 'exec options')).message).toContain('exec options.output');
  });
});

describe('cgroup layout detection (parsing only)', () => {
  const hybridMountinfo = [
    '30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755',
    '31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate',
    '32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd',
    '35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw shared:15 - cgroup cgroup rw,cpu,cpuacct',
    '36 30 0:32 / /sys/fs/cgroup/memory rw shared:16 - cgroup cgroup rw,memory',
    '37 30 0:33 / /sys/fs/cgroup/pids rw shared:17 - cgroup cgroup rw,pids',
  ].join('\n');
  const hybridCgroup = ['5:pids:/user.slice', '4:memory:/user.slice/app', '3:cpu,cpuacct:/', '1:name=systemd:/user.slice', '0::/user.slice/app'].join('\n');

  it('sees a hybrid host, with co-mounted controllers sharing one hierarchy', () => {
    const h = parseCgroupHost(hybridMountinfo, hybridCgroup, 'Filename Type Size Used Priority\n/swap file 1 0 -2\n');
    expect(h.kind).toBe('hybrid');
    expect(h.swapActive).toBe(true);
    expect(h.unified?.callerDir).toBe('/sys/fs/cgroup/unified/user.slice/app');
    expect(h.v1.get('memory')?.callerDir).toBe('/sys/fs/cgroup/memory/user.slice/app');
    expect(h.v1.get('cpu')).toBe(h.v1.get('cpuacct'));
    expect(h.v1.get('cpu')?.callerDir).toBe('/sys/fs/cgroup/cpu,cpuacct');
    expect(h.v1.has('systemd')).toBe(false);
  });

  it('sees pure v2 and pure v1', () => {
    const v2 = parseCgroupHost('31 25 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw', '0::/test.slice/run.scope\n');
    expect(v2.kind).toBe('v2');
    expect(v2.unified?.callerDir).toBe('/sys/fs/cgroup/test.slice/run.scope');
    expect(v2.swapActive).toBe(false);
    const v1 = parseCgroupHost('36 30 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory', '4:memory:/\n');
    expect(v1.kind).toBe('v1');
    expect(v1.v1.get('memory')?.callerDir).toBe('/sys/fs/cgroup/memory');
  });

  it('maps the caller through a mount whose root is not the hierarchy root (cgroup namespace or bind)', () => {
    const h = parseCgroupHost('31 25 0:27 /ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw', '0::/ctr/app\n');
    expect(h.unified?.callerDir).toBe('/sys/fs/cgroup/app');
    const hidden = parseCgroupHost('31 25 0:27 /ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw', '0::/elsewhere\n');
    expect(hidden.unified?.callerDir).toBeNull();
  });
});
