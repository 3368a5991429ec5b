// A hutch user that the chaos test SIGKILLs at a random moment. It runs a seeded random
// schedule of mixed work against the store in HUTCH_ROOT and prints one JSON line per event:
//   {"ev":"plan","n":7,"delay":12}       the driver kills 12 ms after step 7 starts
//   {"ev":"ready"}
//   {"ev":"mark","what":"commit","n":7}          step 7 (a commit) starts
//   {"ev":"done","what":"commit","n":7}          step 7 returned
//   {"ev":"sandbox","id":"…","pid":123,"slot":…} a sandbox exists
//   {"ev":"image","id":"sha256:…","tag":"…","kind":"commit"|"import"|"build"|"pull"}  it returned
// Uses the compiled library (dist/).
//
// usage: node chaos-child.mjs <seed> <round> <archive>   (a schedule of ops, forever; CHAOS_PULL: a ref to pull)
//        node chaos-child.mjs clean                       (one create, then wait for stdin to close)
//        node chaos-child.mjs ten                         (ten sandboxes of every kind, then wait)
//        node chaos-child.mjs paused                      (a sandbox, frozen with pause(), then wait)
import { Sandbox, ImageStore } from '../../dist/lib/index.js';
import { seeded, slotOf } from './child-util.mjs';

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const store = ImageStore.default();

async function create(opts) {
  const sb = await Sandbox.create({ store, ...opts });
  out({ ev: 'sandbox', id: sb.id, pid: sb.pid, slot: slotOf(sb) });
  return sb;
}

if (process.argv[2] === 'ten') {
  const kinds = [
    { image: 'busybox' },
    { image: 'busybox', limits: { memory: '64MiB', pids: 64, cpus: 0.5 } },
    { image: 'busybox', network: { mode: 'bridge' } },
    { image: 'busybox', persistent: true, limits: { disk: '8MiB' } },
    { image: 'busybox', network: { mode: 'bridge', egress: '10mbit' }, limits: { memory: '32MiB' } },
  ];
  for (let i = 0; i < 10; i++) await create(kinds[i % kinds.length]);
  out({ ev: 'ready' });
  setInterval(() => undefined, 1000);
} else if (process.argv[2] === 'paused') {
  const sb = await create({ image: 'busybox' });
  await sb.exec('sleep 1000 </dev/null >/dev/null 2>&1 &');
  await sb.pause();
  out({ ev: 'ready' });
  setInterval(() => undefined, 1000);
} else if (process.argv[2] === 'clean') {
  // The next process: its first create starts the cleanup of what the dead ones left.
  const sb = await create({ image: 'busybox' });
  out({ ev: 'ready' });
  process.stdin.resume();
  process.stdin.on('end', async () => {
    await sb.destroy();
    await Sandbox.settle();
    process.exit(0);
  });
} else {
  const seed = Number(process.argv[2]);
  const round = Number(process.argv[3]);
  const archive = process.argv[4];
  const rand = seeded((seed ^ Math.imul(round + 1, 0x9e3779b1)) >>> 0);
  // Where the driver kills this round: `delay` ms after step `stepAt` starts.
  const stepAt = 1 + Math.floor(rand() * 10);
  const delay = Math.floor(rand() * 40);
  const pick = (xs) => xs[Math.floor(rand() * xs.length)];
  const live = [];
  let pool;
  let n = 0;

  const OPS = {
    create: () => create({ image: 'busybox', limits: { memory: '64MiB', pids: 64, cpus: 0.5, nofile: 256 } }).then((sb) => live.push(sb)),
    bridge: () => create({ image: 'busybox', network: { mode: 'bridge', egress: '10mbit' } }).then((sb) => live.push(sb)),
    persistent: () => create({ image: 'busybox', persistent: true, limits: { disk: '8MiB' } }).then((sb) => live.push(sb)),
    exec: async () => {
      if (live.length === 0) return;
      await Promise.all(live.map((sb) => sb.exec('echo x > /tmp/x; i=0; while [ $i -lt 300 ]; do i=$((i+1)); done', { timeoutMs: 10_000 })));
    },
    commit: async () => {
      if (live.length === 0) return;
      const sb = pick(live);
      const tag = `chaos-c-${round}-${n}`;
      await sb.exec(`echo ${tag} > /marker`);
      const img = await sb.commit({ tag });
      out({ ev: 'image', id: img.id, tag, kind: 'commit' });
    },
    import: async () => {
      const tag = `chaos-i-${round}-${n}`;
      const img = await store.import(archive, { tag });
      out({ ev: 'image', id: img.id, tag, kind: 'import' });
    },
    build: async () => {
      const tag = `chaos-b-${round}-${n}`;
      const img = await store.build({ dockerfile: `FROM busybox\nRUN echo ${tag} > /marker\n`, tag });
      out({ ev: 'image', id: img.id, tag, kind: 'build' });
    },
    pull: async () => {
      if (!process.env.CHAOS_PULL) return;
      // A fresh tag each time: the layer may already be in the store (from an import), the pull still runs.
      const img = await store.pull(process.env.CHAOS_PULL, { insecure: true });
      out({ ev: 'image', id: img.id, tag: process.env.CHAOS_PULL, kind: 'pull' });
    },
    pool: async () => {
      pool ??= Sandbox.pool({ image: 'busybox', size: 2, store, limits: { memory: '64MiB' } });
      await pool.run(['true']);
    },
    run: () => Sandbox.run({ command: ['echo', 'x'], image: 'busybox', store }),
    destroy: async () => {
      if (live.length === 0) return;
      const sb = live.splice(Math.floor(rand() * live.length), 1)[0];
      await sb.destroy();
    },
    prune: () => store.prune(),
  };
  const names = Object.keys(OPS);
  out({ ev: 'plan', n: stepAt, delay });
  await store.list();
  out({ ev: 'ready' });
  for (;;) {
    const what = live.length >= 4 ? 'destroy' : pick(names);
    out({ ev: 'mark', what, n: ++n });
    await OPS[what]();
    out({ ev: 'done', what, n });
  }
}
