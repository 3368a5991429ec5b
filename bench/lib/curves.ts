/**
 * Cost curves: Sandbox.run latency against the number of image layers, the image size, and
 * the number of sandboxes alive at the same time. The layer and size images are generated
 * and imported into a temporary store; their points are sampled round-robin together. The
 * density levels run one after another (each adds live sandboxes), with bubblewrap sampled
 * alongside at every level as a control for machine noise.
 */
import { join } from 'node:path';
import { ImageStore, Sandbox, type Image } from '../../lib/index.js';
import { timeChild, which } from './child.js';
import { defer } from './cleanup.js';
import { layeredImage, sizedImage } from './images.js';
import type { BenchContext } from './latency.js';
import { interleave, timeTrue, type Peer } from './peers.js';
import type { CurveSection, LatencyRow } from './results.js';
import { summarize } from './stats.js';

let curveStore: ImageStore | undefined;
function store(ctx: BenchContext): ImageStore {
  curveStore ??= new ImageStore({ root: join(ctx.tmp, 'store') });
  return curveStore;
}

function imagePeer(name: string, s: ImageStore, image: Image): Peer {
  return {
    name,
    what: `Sandbox.run of /bin/true in ${image.tags[0] ?? image.id} (${image.layers.length} layers, ${(image.sizeBytes / 1048576).toFixed(1)} MiB)`,
    sample: () => timeTrue('Sandbox.run', () => Sandbox.run({ image: image.id, store: s, command: ['/bin/true'] })),
  };
}

function rowsOf(results: Awaited<ReturnType<typeof interleave>>): LatencyRow[] {
  return results.map((r) => ({ name: r.peer.name, what: r.peer.what, summary: summarize(r.samples, r.failures), errors: r.errors, dropped: r.disabled }));
}

const CURVE_WARMUP = 3;

/** A curve over generated images: one peer per x value, sampled round-robin together. */
async function imageCurve(
  ctx: BenchContext,
  tag: string,
  xs: number[],
  label: (x: number) => string,
  make: (s: ImageStore, x: number) => Promise<Image>,
  section: Pick<CurveSection, 'title' | 'description' | 'xLabel'>,
): Promise<CurveSection> {
  const s = store(ctx);
  const peers: Peer[] = [];
  for (const x of xs) {
    process.stderr.write(`  ${tag}: importing an image of ${label(x)}\n`);
    peers.push(imagePeer(label(x), s, await make(s, x)));
  }
  const results = await interleave(peers, CURVE_WARMUP, ctx.args.curveIterations, tag);
  return { kind: 'curve', ...section, points: rowsOf(results).map((row) => ({ x: row.name, rows: [row] })), notes: [] };
}

export function layersCurve(ctx: BenchContext): Promise<CurveSection> {
  return imageCurve(ctx, 'layers', ctx.args.layers, (n) => `${n} layers`, (s, n) => layeredImage(s, ctx.tmp, n), {
    title: 'Cost curve: image layers',
    description: 'Images of a busybox base layer plus N-1 layers of one tiny file each (an overlay lowerdir per layer), imported with ImageStore.import; interleaved.',
    xLabel: 'layers',
  });
}

export function sizeCurve(ctx: BenchContext): Promise<CurveSection> {
  return imageCurve(ctx, 'size', ctx.args.sizesMiB, (mib) => `+${mib} MiB`, (s, mib) => sizedImage(s, ctx.tmp, mib), {
    title: 'Cost curve: image size',
    description: 'Images of the busybox base layer plus one layer holding N one-MiB files; interleaved. Overlay mounts do not read file data, so this should be flat.',
    xLabel: 'data',
  });
}

export async function densityCurve(ctx: BenchContext): Promise<CurveSection> {
  const live: Sandbox[] = [];
  const undo = defer('density sandboxes', () => Promise.all(live.splice(0).map((sb) => sb.destroy().catch(() => undefined))));
  const points: CurveSection['points'] = [];
  const notes: string[] = [];
  const bwrapArgv = ['bwrap', '--unshare-all', '--ro-bind', ctx.rootfs, '/', '--proc', '/proc', '--dev', '/dev', '/bin/true'];
  const peers: Peer[] = [
    {
      name: 'hutch-run',
      what: 'Sandbox.run busybox /bin/true',
      sample: () => timeTrue('Sandbox.run', () => Sandbox.run({ image: 'busybox', command: ['/bin/true'] })),
    },
  ];
  if (which('bwrap')) {
    peers.push({
      name: 'bwrap',
      what: 'bwrap (control)',
      async sample() {
        const r = await timeChild(bwrapArgv);
        if (r.code !== 0) throw new Error(`bwrap exited ${r.code}`);
        return r.ms;
      },
    });
  }
  try {
    for (const target of [...ctx.args.live].sort((a, b) => a - b)) {
      process.stderr.write(`  density: bringing live sandboxes to ${target}\n`);
      let failed: string | null = null;
      let inFlight = 0;
      const workers = Array.from({ length: 4 }, async () => {
        while (live.length + inFlight < target && !failed) {
          inFlight++;
          try {
            live.push(await Sandbox.create({ image: 'busybox' }));
          } catch (e) {
            failed = (e as Error).message;
          } finally {
            inFlight--;
          }
        }
      });
      await Promise.all(workers);
      if (failed) {
        notes.push(`could not reach ${target} live sandboxes (stopped at ${live.length}): ${failed}`);
        break;
      }
      await new Promise((r) => setTimeout(r, 500));
      const results = await interleave(peers, CURVE_WARMUP, ctx.args.curveIterations, `density ${target}`);
      points.push({ x: `${live.length} live`, rows: rowsOf(results) });
    }
  } finally {
    process.stderr.write(`  density: destroying ${live.length} sandboxes\n`);
    await undo();
  }
  return {
    kind: 'curve',
    title: 'Cost curve: concurrent live sandboxes',
    description: 'K idle busybox sandboxes alive while Sandbox.run is sampled; bwrap sampled alongside as a control for machine noise.',
    xLabel: 'live sandboxes',
    points,
    notes,
  };
}
