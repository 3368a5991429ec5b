import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { Sandbox } from '../../lib/index.js';
import { findProgram } from '../../lib/network/userspace-options.js';
import { isRoot, needs } from '../helpers/require.js';

// Egress by name outside host root: never a sandbox that runs unfiltered. The userspace link
// (pasta) cannot send the sandbox's traffic to hutch's resolver and name check, so every way of
// asking for names there is refused, naming why and what to do. No traffic at all.
const DIST = resolve('dist');
const names = [
  ['domains', "domains: ['ok.example']"],
  ['deny', "deny: ['bad.example']"],
  ['ask', 'ask: () => true'],
  ['dns', "dns: { servers: ['192.0.2.53'] }"],
] as const;
const why = (field: string) => ({
  code: 'EUNSUPPORTED',
  message: expect.stringMatching(new RegExp(`^${field}\\.domains/deny/ask/dns \\(egress by name\\) outside host root.*never runs a sandbox unfiltered.*Run hutch as host root.*\`allow\` CIDRs$`)),
});

describe.skipIf(!isRoot)('egress by name as an ordinary user', () => {
  // Run as nobody: a real ordinary user, whose default network backend is the userspace one.
  const asNobody = (script: string) =>
    spawnSync('runuser', ['-u', 'nobody', '--', process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000, cwd: '/' });

  it.each(names)('%s: Sandbox.create is refused with EUNSUPPORTED, before anything runs', (_key, option) => {
    const r = asNobody(`
const { Sandbox } = await import('${DIST}/lib/index.js');
try {
  const sb = await Sandbox.create({ network: { mode: 'bridge', outbound: 'nat', ${option} } });
  console.log(JSON.stringify({ created: true })); await sb.destroy();
} catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual(why('network'));
  });

  it('hutch run --domain fails without running the command', () => {
    const r = spawnSync('runuser', ['-u', 'nobody', '--', process.execPath, `${DIST}/bin/hutch.js`, 'run', '--domain', 'ok.example', '--', 'sh', '-c', 'echo RAN'], { encoding: 'utf8', timeout: 60_000, cwd: '/' });
    expect(r.status).not.toBe(0);
    expect(r.stdout).not.toContain('RAN');
    expect(r.stderr).toContain('outside host root');
  });
});

const noPasta = needs(findProgram('pasta') !== null, 'the userspace network backend needs pasta: apt-get install passt');

describe.skipIf(noPasta !== undefined)('egress by name on a userspace link', () => {
  it('names given at create or later through setNetworkPolicy are refused with EUNSUPPORTED', async () => {
    const saved = process.env.HUTCH_NETWORK_BACKEND;
    process.env.HUTCH_NETWORK_BACKEND = 'userspace';
    let sb: Sandbox | undefined;
    try {
      await expect(Sandbox.create({ image: 'host', network: { mode: 'bridge', outbound: 'nat', domains: ['ok.example'] } })).rejects.toMatchObject(why('network'));
      sb = await Sandbox.create({ image: 'host', network: { mode: 'bridge', outbound: 'nat', allow: ['192.0.2.0/24'] } });
      await expect(sb.setNetworkPolicy({ domains: ['ok.example'] })).rejects.toMatchObject(why('policy'));
      await expect(sb.setNetworkPolicy({ allow: ['192.0.2.0/24'], deny: ['bad.example'] })).rejects.toMatchObject(why('policy'));
    } finally {
      await sb?.destroy();
      if (saved === undefined) delete process.env.HUTCH_NETWORK_BACKEND;
      else process.env.HUTCH_NETWORK_BACKEND = saved;
    }
  });
});
