/**
 * A one-off job runner: runs a script from an untrusted source in a fresh sandbox with a
 * time, memory and network budget, streams its output, and prints a usage report.
 *
 *   node dist/examples/job-runner/run.js examples/job-runner/samples/primes.py
 *   node dist/examples/job-runner/run.js --memory 64MiB examples/job-runner/samples/hog.py
 *   curl -s https://example.org/job.py | node dist/examples/job-runner/run.js --lang python -
 *
 * The language comes from the extension (.py, .js/.mjs/.cjs, .sh) or --lang. The script's
 * stdout and stderr go to ours as they come; the report goes to stderr (or --report stdout,
 * --json FILE). The exit status is the script's; 124 when the time budget ran out, 128+n
 * when a signal ended it (137 for an OOM kill), 125 when hutch itself failed.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { basename, extname } from 'node:path';
import { constants } from 'node:os';
import { parseArgs } from 'node:util';
import { HutchError, Sandbox, type ExecResult, type NetworkOptions, type SandboxOptions } from '../../lib/index.js';

const USAGE = `usage: node dist/examples/job-runner/run.js [options] SCRIPT|- [-- ARGS...]

Budget:
  --time DURATION      wall-clock budget (default 10s; 500ms, 10s, 2m)
  --cpu-time DURATION  CPU time per process (RLIMIT_CPU; default none)
  --memory SIZE        memory of the whole sandbox (default 256MiB; 64MiB, 1G, bytes)
  --pids N             processes and threads in the sandbox (default 64)
  --output SIZE        stdout + stderr kept before the job is stopped (default 1MiB)
  --network MODE       none (default: loopback only), bridge (a link the host reaches; the job reaches nothing),
                       nat (also outbound, masqueraded; limit it with --allow)
  --bandwidth RATE     cap each direction of the link (e.g. 1mbit, 10mbit, 2MBps)
  --allow CIDR         with --network nat: a range the job may reach (repeatable)
Other:
  --lang LANG          python, node or sh (default: from the extension; needed for -)
  --image IMAGE        host (default) or busybox (sh only), or an imported image
  --report WHERE       stderr (default), stdout or none
  --json FILE          also write the report as JSON to FILE
`;

const LANGS = {
  python: { ext: 'py', argv: ['python3', '-B'] },
  node: { ext: 'js', argv: ['node'] },
  sh: { ext: 'sh', argv: ['/bin/sh'] },
} as const;
type Lang = keyof typeof LANGS;
const BY_EXT: Record<string, Lang> = { '.py': 'python', '.js': 'node', '.mjs': 'node', '.cjs': 'node', '.sh': 'sh' };

/** A script is read whole before anything runs; past this it is refused. */
const MAX_SCRIPT_BYTES = 1024 * 1024;

class UsageError extends Error {}

function parseDuration(flag: string, v: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(v.trim());
  if (!m) throw new UsageError(`--${flag}: expected a duration such as 500ms, 10s or 2m, got ${JSON.stringify(v)}`);
  return Math.ceil(Number(m[1]) * (m[2] === 's' ? 1000 : m[2] === 'm' ? 60_000 : 1));
}

/** Bytes as text: what was printed, for people. */
function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function readScript(path: string): Buffer {
  const data = path === '-' ? readFileSync(0) : readFileSync(path);
  if (data.length > MAX_SCRIPT_BYTES) throw new UsageError(`the script is larger than ${bytes(MAX_SCRIPT_BYTES)}`);
  return data;
}

export interface JobReport {
  script: string;
  language: Lang;
  reason: ExecResult['reason'];
  exitCode: number | null;
  signal: string | null;
  wallMs: number;
  cpuUserMs: number;
  cpuSystemMs: number;
  memoryPeakBytes: number;
  pids: number;
  oomKills: number;
  outputBytes: number;
  truncated: boolean;
  network: string;
  netRxBytes?: number;
  netTxBytes?: number;
  budget: { timeMs: number; cpuTimeMs?: number; memory: string; pids: number; output: string };
}

function table(r: JobReport): string {
  const b = r.budget;
  const rows: [string, string, string][] = [
    ['reason', r.reason, ''],
    ['exit', r.exitCode !== null ? `code ${r.exitCode}` : `signal ${r.signal}`, ''],
    ['wall', `${r.wallMs.toFixed(1)} ms`, `${b.timeMs} ms`],
    ['cpu', `${(r.cpuUserMs + r.cpuSystemMs).toFixed(1)} ms (user ${r.cpuUserMs.toFixed(1)}, system ${r.cpuSystemMs.toFixed(1)})`, b.cpuTimeMs !== undefined ? `${b.cpuTimeMs} ms per process` : '-'],
    ['peak memory', bytes(r.memoryPeakBytes), b.memory],
    ['pids', String(r.pids), String(b.pids)],
    ['oom kills', String(r.oomKills), ''],
    ['output', bytes(r.outputBytes), b.output],
    ['network', r.network + (r.netRxBytes !== undefined ? ` (rx ${bytes(r.netRxBytes)}, tx ${bytes(r.netTxBytes ?? 0)})` : ''), ''],
  ];
  const w0 = Math.max(...rows.map((x) => x[0].length));
  const w1 = Math.max(...rows.map((x) => x[1].length), 'used'.length);
  const line = (a: string, b2: string, c: string): string => `${a.padEnd(w0)}  ${b2.padEnd(w1)}  ${c}`.trimEnd();
  return [
    `== job report: ${r.script} (${r.language})`,
    line('', 'used', 'budget'),
    ...rows.map(([a, b2, c]) => line(a, b2, c)),
  ].join('\n') + '\n';
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      time: { type: 'string', default: '10s' },
      'cpu-time': { type: 'string' },
      memory: { type: 'string', default: '256MiB' },
      pids: { type: 'string', default: '64' },
      output: { type: 'string', default: '1MiB' },
      network: { type: 'string', default: 'none' },
      bandwidth: { type: 'string' },
      allow: { type: 'string', multiple: true },
      lang: { type: 'string' },
      image: { type: 'string', default: 'host' },
      report: { type: 'string', default: 'stderr' },
      json: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const [scriptPath, ...args] = positionals;
  if (!scriptPath) throw new UsageError('no script given (a path, or - for stdin)');
  const lang = (values.lang ?? BY_EXT[extname(scriptPath)]) as Lang | undefined;
  if (!lang || !(lang in LANGS)) {
    throw new UsageError(values.lang ? `--lang: expected python, node or sh, got ${JSON.stringify(values.lang)}` : `cannot tell the language of ${scriptPath}: use --lang python|node|sh`);
  }
  if (!['stderr', 'stdout', 'none'].includes(values.report)) throw new UsageError('--report: expected stderr, stdout or none');
  const timeMs = parseDuration('time', values.time);
  const cpuTimeMs = values['cpu-time'] !== undefined ? parseDuration('cpu-time', values['cpu-time']) : undefined;
  const pids = Number(values.pids);

  // The network budget. hutch validates it (modes, rates, CIDRs) and says what is wrong.
  let network: SandboxOptions['network'] = 'none';
  if (values.network === 'bridge' || values.network === 'nat') {
    const n: NetworkOptions = { mode: 'bridge' };
    if (values.network === 'nat') n.outbound = 'nat';
    if (values.bandwidth) n.egress = n.ingress = values.bandwidth;
    if (values.allow) n.allow = values.allow;
    network = n;
  } else if (values.network !== 'none') {
    throw new UsageError(`--network: expected none, bridge or nat, got ${JSON.stringify(values.network)}`);
  } else if (values.bandwidth || values.allow) {
    throw new UsageError('--bandwidth and --allow need --network bridge or nat');
  }

  const cap = outputCap(values.output);
  const script = readScript(scriptPath);
  const file = `/job/main.${LANGS[lang].ext}`;
  const sb = await Sandbox.create({
    image: values.image,
    network,
    limits: { memory: values.memory, pids, ...(cpuTimeMs !== undefined ? { cpuTimeMs } : {}) },
    env: { HOME: '/job', LANG: 'C.UTF-8' },
    cwd: '/',
  });
  // Ctrl-C or a kill of this process: destroy the sandbox before going.
  const onSignal = (): void => void sb.destroy().then(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let result: ExecResult;
  let outputBytes = 0;
  let truncated = false;
  let netStats: { rx?: number; tx?: number } = {};
  try {
    await sb.exec(['mkdir', '-p', '/job']);
    await sb.writeFile(file, script, { mode: 0o644 });
    await sb.exec(['chown', '-R', '65534:65534', '/job']);
    // spawn streams the job's output as it comes; the output cap is kept here.
    const proc = sb.spawn([...LANGS[lang].argv, file, ...args], { user: 65534, cwd: '/job', timeoutMs: timeMs });
    proc.stdin.end();
    for (const [from, to] of [[proc.stdout, process.stdout], [proc.stderr, process.stderr]] as const) {
      from.on('data', (d: Buffer) => {
        if (truncated) return;
        const room = cap - outputBytes;
        if (d.length > room) {
          to.write(d.subarray(0, room));
          outputBytes = cap;
          truncated = true;
          proc.kill('SIGKILL');
          return;
        }
        outputBytes += d.length;
        to.write(d);
      });
    }
    result = await proc.result;
    if (network !== 'none') netStats = await linkBytes(sb);
  } finally {
    await sb.destroy();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }

  const u = result.usage;
  const report: JobReport = {
    script: scriptPath === '-' ? '(stdin)' : basename(scriptPath),
    language: lang,
    reason: truncated ? 'output-limit' : result.reason,
    exitCode: result.exitCode,
    signal: result.signal,
    wallMs: u.wallMs,
    cpuUserMs: u.cpuUserMs,
    cpuSystemMs: u.cpuSystemMs,
    memoryPeakBytes: u.memoryPeakBytes,
    pids: u.pids,
    oomKills: u.oomKills,
    outputBytes,
    truncated,
    network: values.network + (values.bandwidth ? ` at ${values.bandwidth}` : ''),
    budget: { timeMs, memory: values.memory, pids, output: values.output, ...(cpuTimeMs !== undefined ? { cpuTimeMs } : {}) },
  };
  const rx = u.netRxBytes ?? netStats.rx;
  const tx = u.netTxBytes ?? netStats.tx;
  if (rx !== undefined) report.netRxBytes = rx;
  if (tx !== undefined) report.netTxBytes = tx;
  if (values.report !== 'none') (values.report === 'stdout' ? process.stdout : process.stderr).write(table(report));
  if (values.json) writeFileSync(values.json, JSON.stringify(report, null, 2) + '\n');

  if (result.reason === 'timeout') return 124;
  if (result.signal) return 128 + (constants.signals[result.signal] ?? 0);
  return result.exitCode ?? 1;
}

/** The output cap in bytes: hutch's sizes ('1MiB', '64k', a number of bytes). */
function outputCap(size: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmg]i?b?)?$/i.exec(size.trim());
  if (!m) throw new UsageError(`--output: expected a size such as 64k, 1MiB or a number of bytes, got ${JSON.stringify(size)}`);
  const unit = (m[2] ?? '').toLowerCase()[0];
  return Math.floor(Number(m[1]) * (unit === 'k' ? 1024 : unit === 'm' ? 1024 ** 2 : unit === 'g' ? 1024 ** 3 : 1));
}

/** Bytes through the sandbox's eth0, as its own kernel counts them. */
async function linkBytes(sb: Sandbox): Promise<{ rx?: number; tx?: number }> {
  const r = await sb.exec(['cat', '/proc/net/dev'], { encoding: 'utf8' });
  const line = (r.stdout as string).split('\n').find((l) => l.trim().startsWith('eth0:'));
  if (!line) return {};
  const f = line.split(':')[1]!.trim().split(/\s+/).map(Number);
  return { rx: f[0], tx: f[8] };
}

try {
  process.exitCode = await main();
} catch (e) {
  if (e instanceof UsageError) {
    process.stderr.write(`job-runner: ${e.message}\n\n${USAGE}`);
    process.exitCode = 2;
  } else if (HutchError.is(e)) {
    process.stderr.write(`job-runner: ${e.code}: ${e.message}\n`);
    process.exitCode = 125;
  } else {
    throw e;
  }
}
