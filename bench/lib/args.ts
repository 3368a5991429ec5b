/**
 * Command-line flags of `npm run bench`. Defaults are modest (the reference machine has two
 * cores shared with other work); raise them with flags for publishable figures.
 */

export const SCENARIOS = ['startup', 'pool', 'exec', 'phases', 'throughput', 'memory', 'layers', 'size', 'density', 'templates'] as const;
export type Scenario = (typeof SCENARIOS)[number];

export interface BenchArgs {
  only: Set<Scenario>;
  quick: boolean;
  /** Measured samples per peer in the latency scenarios (startup, pool, exec). */
  iterations: number;
  /** Samples per peer discarded before measuring. */
  warmup: number;
  /** Samples per point of the cost curves (layers, size, density). */
  curveIterations: number;
  /** Seconds per concurrency level in the throughput scenario. */
  durationS: number;
  concurrency: number[];
  /** Idle sandboxes created by the memory scenario. */
  sandboxes: number;
  /** Idle sandboxes kept alive in the density scenario, one level after another. */
  live: number[];
  layers: number[];
  /** Image sizes of the size scenario, MiB. */
  sizesMiB: number[];
  poolSize: number;
  /** Samples per case of the templates scenario. */
  templateSamples: number;
  /** The templates scenario's built-in zygotes. */
  zygotes: ('python' | 'node')[];
  /** Peers of the latency scenarios to keep (all when empty). */
  peers: Set<string>;
  outDir: string | null;
  write: boolean;
}

export const USAGE = `usage: npm run bench -- [flags]

  --only LIST            scenarios, comma-separated (default: all):
                         ${SCENARIOS.join(', ')}
  --quick                small counts: a smoke run in about two minutes
  --iterations N         samples per peer in startup/pool/exec (default 200, quick 40)
  --warmup N             samples per peer discarded first (default 20, quick 5)
  --curve-iterations N   samples per point of layers/size/density (default 50, quick 20)
  --duration S           seconds per throughput level (default 5, quick 2)
  --concurrency LIST     throughput levels (default 1,4,8)
  --sandboxes N          idle sandboxes for the memory scenario (default 100, quick 50; try 1000)
  --live LIST            live idle sandboxes for density (default 1,10,100,500, quick 1,10,100)
  --layers LIST          image layer counts (default 1,3,10,50)
  --sizes LIST           image sizes in MiB (default 1,64,256, quick 1,64)
  --pool-size N          SandboxPool size (default 8)
  --template-samples N   samples per case of templates (default 30, quick 10)
  --zygotes LIST         templates' zygotes (default python,node)
  --peers LIST           keep only these peers in startup/pool/exec
                         (spawn, unshare, bwrap, crun, runc, hutch-run, hutch-limits, pool-run, exec)
  --out DIR              results directory (default bench/results of the checkout)
  --no-write             print only; write no result files
  -h, --help             this text
`;

function list(flag: string, v: string): number[] {
  const out = v.split(',').map((x) => Number(x.trim()));
  if (out.length === 0 || out.some((n) => !Number.isFinite(n) || n < 0)) throw new Error(`${flag}: expected numbers separated by commas, got ${v}`);
  return out;
}

function int(flag: string, v: string | undefined, min = 1): number {
  const n = Number(v);
  if (v === undefined || !Number.isInteger(n) || n < min) throw new Error(`${flag}: expected an integer >= ${min}, got ${v ?? 'nothing'}`);
  return n;
}

export function parseArgs(argv: readonly string[]): BenchArgs | 'help' {
  const quick = argv.includes('--quick');
  const a: BenchArgs = {
    only: new Set(SCENARIOS),
    quick,
    iterations: quick ? 40 : 200,
    warmup: quick ? 5 : 20,
    curveIterations: quick ? 20 : 50,
    durationS: quick ? 2 : 5,
    concurrency: [1, 4, 8],
    sandboxes: quick ? 50 : 100,
    live: quick ? [1, 10, 100] : [1, 10, 100, 500],
    layers: [1, 3, 10, 50],
    sizesMiB: quick ? [1, 64] : [1, 64, 256],
    poolSize: 8,
    templateSamples: quick ? 10 : 30,
    zygotes: ['python', 'node'],
    peers: new Set(),
    outDir: null,
    write: true,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    const [name, inline] = flag.startsWith('--') && flag.includes('=') ? [flag.slice(0, flag.indexOf('=')), flag.slice(flag.indexOf('=') + 1)] : [flag, undefined];
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${name}: needs a value`);
      return v;
    };
    switch (name) {
      case '-h':
      case '--help':
        return 'help';
      case '--quick':
        break;
      case '--only': {
        const names = value().split(',').map((s) => s.trim()).filter(Boolean);
        for (const n of names) if (!(SCENARIOS as readonly string[]).includes(n)) throw new Error(`--only: unknown scenario ${n}; known: ${SCENARIOS.join(', ')}`);
        a.only = new Set(names as Scenario[]);
        break;
      }
      case '--iterations':
        a.iterations = int(name, value());
        break;
      case '--warmup':
        a.warmup = int(name, value(), 0);
        break;
      case '--curve-iterations':
        a.curveIterations = int(name, value());
        break;
      case '--duration':
        a.durationS = Number(value());
        if (!(a.durationS > 0)) throw new Error('--duration: expected seconds > 0');
        break;
      case '--concurrency':
        a.concurrency = list(name, value()).filter((n) => n >= 1);
        break;
      case '--sandboxes':
        a.sandboxes = int(name, value());
        break;
      case '--live':
        a.live = list(name, value());
        break;
      case '--layers':
        a.layers = list(name, value()).filter((n) => n >= 1);
        break;
      case '--sizes':
        a.sizesMiB = list(name, value());
        break;
      case '--pool-size':
        a.poolSize = int(name, value());
        break;
      case '--template-samples':
        a.templateSamples = int(name, value());
        break;
      case '--zygotes': {
        const z = value().split(',').map((x) => x.trim()).filter(Boolean);
        const bad = z.find((x) => x !== 'python' && x !== 'node');
        if (bad !== undefined || z.length === 0) throw new Error(`--zygotes: expected python and/or node, comma-separated, got ${z.join(',') || 'nothing'}`);
        a.zygotes = z as ('python' | 'node')[];
        break;
      }
      case '--peers':
        a.peers = new Set(value().split(',').map((s) => s.trim()).filter(Boolean));
        break;
      case '--out':
        a.outDir = value();
        break;
      case '--no-write':
        a.write = false;
        break;
      default:
        throw new Error(`unknown flag ${flag}\n\n${USAGE}`);
    }
  }
  return a;
}
