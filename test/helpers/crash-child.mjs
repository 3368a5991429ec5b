// A hutch user that the reliability tests SIGKILL at chosen points. It runs one scenario in
// a loop forever and prints one JSON line per event on stdout:
//   {"ev":"ready"}                         set up, the loop starts
//   {"ev":"mark","what":"create","n":3}    about to start the n-th operation of the loop
//   {"ev":"sandbox","id":"…","pid":123,"slot":"0ac8…"|null}   a sandbox exists
// Uses the compiled library (dist/, `npx tsc -p tsconfig.json`), HUTCH_ROOT and
// HUTCH_CGROUP_PARENT from the environment.
//
// usage: node crash-child.mjs <scenario> [archive]
//   create   create sandboxes (some bridged, some limited), keep up to 4, destroy the oldest
//   exec     3 sandboxes, then execs in all of them at once, again and again
//   destroy  create 3 sandboxes (one bridged), destroy them all at once, again
//   pool     a pool of 3 (one refill per run), pool.run again and again
//   import   store.import(archive) again and again
//   mixed    all of the above interleaved
import { Sandbox, ImageStore } from '../../dist/lib/index.js';
import { slotOf } from './child-util.mjs';

const scenario = process.argv[2];
const archive = process.argv[3];
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const store = ImageStore.default();

const OPTIONS = [
  { image: 'busybox' },
  { image: 'busybox', limits: { memory: '64MiB', pids: 64, cpus: 0.5 } },
  { image: 'busybox', network: { mode: 'bridge' } },
  { image: 'busybox', limits: { disk: '8MiB', nofile: 256 }, readonlyRootfs: false, env: { A: '1' } },
  { image: 'busybox', network: { mode: 'bridge', egress: '10mbit' }, limits: { memory: '32MiB' } },
];
let k = 0;
const nextOptions = () => OPTIONS[k++ % OPTIONS.length];

async function create(opts) {
  const sb = await Sandbox.create(opts);
  out({ ev: 'sandbox', id: sb.id, pid: sb.pid, slot: slotOf(sb) });
  return sb;
}

let n = 0;
const mark = (what) => out({ ev: 'mark', what, n: ++n });

const scenarios = {
  async create() {
    const live = [];
    for (;;) {
      mark('create');
      live.push(await create(nextOptions()));
      if (live.length > 4) await live.shift().destroy();
    }
  },
  async exec() {
    const sbs = [await create(OPTIONS[0]), await create(OPTIONS[1]), await create(OPTIONS[2])];
    out({ ev: 'ready' });
    for (;;) {
      mark('exec');
      await Promise.all(sbs.map((sb) => sb.exec('echo x; i=0; while [ $i -lt 200 ]; do i=$((i+1)); done', { timeoutMs: 5000 })));
    }
  },
  async destroy() {
    for (;;) {
      const sbs = await Promise.all([create(OPTIONS[0]), create(OPTIONS[2]), create(OPTIONS[1])]);
      mark('destroy');
      await Promise.all(sbs.map((sb) => sb.destroy()));
    }
  },
  async pool() {
    const pool = Sandbox.pool({ image: 'busybox', size: 3, limits: { memory: '64MiB' } });
    await (await pool.acquire()).destroy();
    out({ ev: 'ready' });
    for (;;) {
      mark('pool');
      await pool.run(['true']);
    }
  },
  async import() {
    await store.list();
    out({ ev: 'ready' });
    for (;;) {
      mark('import');
      await store.import(archive, { tag: `crash:${n}` });
      await store.remove(`crash:${n}`);
    }
  },
  async mixed() {
    const pool = Sandbox.pool({ image: 'busybox', size: 2 });
    const live = [];
    out({ ev: 'ready' });
    for (;;) {
      mark('mixed');
      const jobs = [create(nextOptions()).then((sb) => live.push(sb)), pool.run(['echo', 'x'])];
      if (archive) jobs.push(store.import(archive));
      for (const sb of live) jobs.push(sb.exec(['true']));
      await Promise.all(jobs);
      while (live.length > 3) await live.shift().destroy();
    }
  },
};

const run = scenarios[scenario];
if (!run) {
  process.stderr.write(`unknown scenario ${scenario}\n`);
  process.exit(2);
}
if (scenario === 'create' || scenario === 'destroy') out({ ev: 'ready' });
run().catch((e) => {
  process.stderr.write(`crash-child ${scenario}: ${e?.stack ?? e}\n`);
  process.exit(1);
});
