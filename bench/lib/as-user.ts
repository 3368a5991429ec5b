/**
 * A bench of hutch outside host root, started as root: makes an ordinary user with subordinate
 * ids and a delegated cgroup (scripts/rootless-user.sh; HUTCH_BENCH_USER, default hutchbench),
 * runs this same bench as that user with a store of its own, then removes the user's cgroups
 * and store (the user and its ranges stay, as rootless-user.sh leaves them).
 * `runFlags`: more flags for `rootless-user.sh run` (`--tun`: a 0666 /dev/net/tun for pasta).
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';

export function asBenchUser(...runFlags: string[]): void {
  const user = process.env.HUTCH_BENCH_USER ?? 'hutchbench';
  const root = process.cwd();
  const run = (argv: string[]) => {
    const r = spawnSync(argv[0]!, argv.slice(1), { stdio: 'inherit', cwd: root });
    if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status}`);
  };
  run(['sh', 'scripts/rootless-user.sh', 'setup', user]);
  const dir = mkdtempSync('/tmp/hutch-bench-rootless-');
  chmodSync(dir, 0o755);
  const uid = Number(spawnSync('id', ['-u', user], { encoding: 'utf8' }).stdout.trim());
  chownSync(dir, uid, uid);
  try {
    run(['sh', 'scripts/rootless-user.sh', 'run', user, ...runFlags, '--', 'env', `HUTCH_ROOT=${join(dir, 'store')}`, 'HUTCH_BACKGROUND_PRUNE=0', process.execPath, ...process.argv.slice(1)]);
  } finally {
    run(['sh', 'scripts/rootless-user.sh', 'teardown', user]);
    // The store's layers belong to the user's subordinate ids: removed by the user, in its holder namespace.
    spawnSync('sh', ['scripts/rootless-user.sh', 'run', user, '--no-cgroup', '--', process.execPath, '--input-type=module', '-e',
      `const m = await import(${JSON.stringify(join(root, 'dist/lib/host/ids.js'))}); m.idSource(); m.removeStoreTree(${JSON.stringify(dir)}, 'store');`], { stdio: 'inherit', cwd: root });
    rmSync(dir, { recursive: true, force: true });
  }
}
