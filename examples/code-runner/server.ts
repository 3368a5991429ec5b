/**
 * The code runner's command line:
 *
 *   node dist/examples/code-runner/server.js --port 8080
 *
 * then open http://127.0.0.1:8080/ or
 *
 *   curl -s localhost:8080/run -H 'content-type: application/json' \
 *     -d '{"language":"python","source":"print(6*7)"}'
 *
 * Options: --port N (0: any free port; default 8080), --host ADDR (default 127.0.0.1),
 * --pool-size N, --max-concurrent N, --max-queue N, --max-timeout MS, --max-memory BYTES,
 * --max-pids N, --terminal-idle MS (the terminal page's idle timeout, default 10 minutes),
 * --domain NAME (repeatable: programs may reach these names and nothing else, through NAT;
 * each refusal is in the answer's `violations`), --dns-server ADDR (repeatable: the resolvers
 * those names are looked up at; default the host's), --template LANG (repeatable: serve LANG
 * from a warm interpreter, `Sandbox.template`; python, node). Prints "listening on URL" when ready; SIGINT/SIGTERM close it cleanly (running
 * requests get 5 s, then are aborted; every sandbox is destroyed); a second signal exits at once.
 */
import { parseArgs } from 'node:util';
import { createCodeRunner, DEFAULT_MAX_LIMITS, LANGUAGES, type Language } from './service.js';

function intFlag(name: string, v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) {
    console.error(`--${name}: expected a whole number, got ${JSON.stringify(v)}`);
    process.exit(2);
  }
  return n;
}

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '8080' },
    host: { type: 'string', default: '127.0.0.1' },
    'pool-size': { type: 'string' },
    'max-concurrent': { type: 'string' },
    'max-queue': { type: 'string' },
    'max-timeout': { type: 'string' },
    'max-memory': { type: 'string' },
    'max-pids': { type: 'string' },
    'terminal-idle': { type: 'string' },
    domain: { type: 'string', multiple: true },
    'dns-server': { type: 'string', multiple: true },
    template: { type: 'string', multiple: true },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  console.log('usage: node dist/examples/code-runner/server.js [--port 8080] [--host 127.0.0.1] [--pool-size 2] [--max-concurrent 4] [--max-queue 16] [--max-timeout 10000] [--max-memory 268435456] [--max-pids 64] [--terminal-idle 600000] [--domain NAME]... [--dns-server ADDR]... [--template python|node]...');
  process.exit(0);
}

const domains = values.domain ?? [];
if (values['dns-server'] !== undefined && domains.length === 0) {
  console.error('--dns-server: give the names programs may reach with --domain NAME');
  process.exit(2);
}
for (const t of values.template ?? []) {
  if (!(t in LANGUAGES)) {
    console.error(`--template: expected one of ${Object.keys(LANGUAGES).join(', ')}, got ${JSON.stringify(t)}`);
    process.exit(2);
  }
}

const runner = createCodeRunner({
  ...(domains.length > 0 ? { network: { domains, ...(values['dns-server'] ? { dns: { servers: values['dns-server'] } } : {}) } } : {}),
  templates: (values.template ?? []) as Language[],
  terminal: { idleMs: intFlag('terminal-idle', values['terminal-idle'], 10 * 60_000) },
  poolSize: intFlag('pool-size', values['pool-size'], 2),
  maxConcurrent: Math.max(1, intFlag('max-concurrent', values['max-concurrent'], 4)),
  maxQueue: intFlag('max-queue', values['max-queue'], 16),
  maxLimits: {
    timeoutMs: intFlag('max-timeout', values['max-timeout'], DEFAULT_MAX_LIMITS.timeoutMs),
    memory: intFlag('max-memory', values['max-memory'], DEFAULT_MAX_LIMITS.memory),
    pids: intFlag('max-pids', values['max-pids'], DEFAULT_MAX_LIMITS.pids),
  },
});

let closing = false;
async function shutdown(signal: string): Promise<void> {
  if (closing) {
    // A second signal: do not wait any longer.
    console.log(`${signal} again: exiting now`);
    process.exit(1);
  }
  closing = true;
  console.log(`${signal}: closing`);
  await runner.close();
  process.exit(0);
}
process.on('SIGINT', () => void shutdown('SIGINT'));
process.on('SIGTERM', () => void shutdown('SIGTERM'));

let url: string;
try {
  url = await runner.listen(intFlag('port', values.port, 8080), values.host);
} catch (e) {
  console.error(`cannot start: ${(e as Error).message}`);
  await runner.close(0);
  process.exit(1);
}
console.log(`listening on ${url}`);
