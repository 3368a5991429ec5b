#!/usr/bin/env node
/**
 * The hutch command line: `hutch run`, `doctor`, `images`, `import`, `pull`, `push`, `build`,
 * `rmi`, `prune`, `bench`. Exit status of `run` is the command's (128+N for signal N); hutch's
 * own failures exit 125 and print the error's code.
 */
import { closeSync, readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { parseArgs } from 'node:util';
import { HutchError, ImageStore, Sandbox, type SandboxOptions, type Limits, type NetworkOptions } from '../lib/index.js';
import { settleNetwork } from '../lib/network/index.js';

const USAGE = `usage:
  hutch run [-i] [-t] [--image I] [--memory M] [--cpus N] [--pids N] [--disk D] [--timeout MS] [--output B]
            [--nofile N] [--network none|bridge] [--egress R] [--ingress R] [-p HOST:SANDBOX[/udp]]...
            [--nat] [--allow CIDR]... [--domain NAME]... [--dns ADDR]... [--host-port PORT[/udp]]... [-e K=V]... [-w DIR] [-u UID[:GID]] [-v SRC:DST[:rw]]... -- CMD...
                                    -i: keep stdin open; -t: a terminal inside (-it: interactive, like docker run -it)
  hutch doctor                      what this host supports
  hutch images                      list images
  hutch import FILE [--tag T]       import a rootfs tarball, OCI layout or docker save archive
  hutch pull REF [--insecure]       pull from a registry
  hutch push IMAGE REF [--insecure] push to a registry
  hutch build [-f Dockerfile] [DIR] [--tag T]
  hutch rmi REF                     remove an image
  hutch prune                       remove unreferenced layers and leftovers of crashed sandboxes
  hutch bench                       the startup benchmark (npm run bench)`;

function fail(e: unknown): never {
  if (HutchError.is(e)) {
    process.stderr.write(`hutch: ${e.code}: ${e.message}\n`);
  } else {
    process.stderr.write(`hutch: ${e instanceof Error ? e.message : String(e)}\n`);
  }
  process.exit(125);
}

function num(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new HutchError('EINVAL', `invalid option --${name}: expected a number, got ${JSON.stringify(v)}`);
  return n;
}

async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      image: { type: 'string' }, memory: { type: 'string' }, cpus: { type: 'string' }, pids: { type: 'string' },
      disk: { type: 'string' }, timeout: { type: 'string' }, output: { type: 'string' }, nofile: { type: 'string' },
      network: { type: 'string' }, egress: { type: 'string' }, ingress: { type: 'string' },
      publish: { type: 'string', short: 'p', multiple: true }, nat: { type: 'boolean' }, allow: { type: 'string', multiple: true },
      'host-port': { type: 'string', multiple: true }, domain: { type: 'string', multiple: true }, dns: { type: 'string', multiple: true },
      env: { type: 'string', short: 'e', multiple: true }, workdir: { type: 'string', short: 'w' },
      user: { type: 'string', short: 'u' }, volume: { type: 'string', short: 'v', multiple: true },
      hostname: { type: 'string' }, 'read-only': { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
      interactive: { type: 'boolean', short: 'i' }, tty: { type: 'boolean', short: 't' },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  if (positionals.length === 0) throw new HutchError('EINVAL', 'hutch run: no command given; put it after --, e.g. hutch run -- echo hi');
  const limits: Limits = {};
  if (values.memory !== undefined) limits.memory = values.memory;
  if (values.cpus !== undefined) limits.cpus = num('cpus', values.cpus);
  if (values.pids !== undefined) limits.pids = num('pids', values.pids);
  if (values.disk !== undefined) limits.disk = values.disk;
  if (values.timeout !== undefined) limits.timeoutMs = num('timeout', values.timeout);
  if (values.output !== undefined) limits.output = values.output;
  if (values.nofile !== undefined) limits.nofile = num('nofile', values.nofile);
  const opts: SandboxOptions = { limits };
  if (values.image) opts.image = values.image;
  if (values.hostname) opts.hostname = values.hostname;
  if (values['read-only']) opts.readonlyRootfs = true;
  if (values.workdir) opts.cwd = values.workdir;
  if (values.user) opts.user = /^\d+$/.test(values.user) ? Number(values.user) : values.user;
  if (values.env) {
    opts.env = {};
    for (const kv of values.env) {
      const i = kv.indexOf('=');
      if (i <= 0) throw new HutchError('EINVAL', `invalid option --env: expected K=V, got ${JSON.stringify(kv)}`);
      opts.env[kv.slice(0, i)] = kv.slice(i + 1);
    }
  }
  if (values.volume) {
    opts.mounts = values.volume.map((v) => {
      const [source, target, mode] = v.split(':');
      if (!source || !target || (mode !== undefined && mode !== 'ro' && mode !== 'rw')) {
        throw new HutchError('EINVAL', `invalid option --volume: expected SRC:DST[:ro|rw], got ${JSON.stringify(v)}`);
      }
      return { source, target, readonly: mode !== 'rw' };
    });
  }
  const wantsBridge = values.network === 'bridge' || values.egress || values.ingress || values.publish || values.nat || values['host-port'] || values.domain || values.dns;
  if (values.network !== undefined && values.network !== 'none' && values.network !== 'bridge') {
    throw new HutchError('EINVAL', `invalid option --network: expected none or bridge, got ${JSON.stringify(values.network)}`);
  }
  if (wantsBridge) {
    if (values.network === 'none') throw new HutchError('EINVAL', 'invalid option --network none: --egress, --ingress, -p, --nat, --domain, --dns and --host-port need --network bridge');
    const net: NetworkOptions = { mode: 'bridge' };
    if (values.egress) net.egress = values.egress;
    if (values.ingress) net.ingress = values.ingress;
    if (values.nat) net.outbound = 'nat';
    if (values.allow) net.allow = values.allow;
    // --domain: egress by name, which implies outbound NAT.
    if (values.domain) Object.assign(net, { outbound: 'nat', domains: values.domain });
    if (values.dns) net.dns = { servers: values.dns };
    if (values.publish) {
      net.ports = values.publish.map((p) => {
        const m = /^(\d+):(\d+)(?:\/(tcp|udp))?$/.exec(p);
        if (!m) throw new HutchError('EINVAL', `invalid option -p: expected HOST:SANDBOX[/tcp|udp], got ${JSON.stringify(p)}`);
        return { host: Number(m[1]), sandbox: Number(m[2]), protocol: (m[3] ?? 'tcp') as 'tcp' | 'udp' };
      });
    }
    if (values['host-port']) {
      net.hostPorts = values['host-port'].map((p) => {
        const m = /^(\d+)(?:\/(tcp|udp))?$/.exec(p);
        if (!m) throw new HutchError('EINVAL', `invalid option --host-port: expected PORT[/tcp|udp], got ${JSON.stringify(p)}`);
        return { port: Number(m[1]), protocol: (m[2] ?? 'tcp') as 'tcp' | 'udp' };
      });
    }
    opts.network = net;
  }
  const interactive = !!values.interactive;
  const tty = !!values.tty;
  if (tty && interactive && !process.stdin.isTTY) {
    throw new HutchError('EINVAL', 'hutch run -it: the input device is not a TTY; drop -t (keep -i) to pipe input');
  }
  const cmd = positionals.length === 1 && /\s/.test(positionals[0]!) ? positionals[0]! : positionals;
  return runInSandbox(opts, cmd, { interactive, tty, timeout: values.timeout });
}

/** The terminal modes hutch changed, undone on every way out (also process.exit). */
let restoreTerminal = (): void => undefined;
/** SIGHUP came: the terminal may be gone. */
let hungUp = false;
process.on('exit', () => {
  restoreTerminal();
  // Node restores its stdio's terminal modes at exit and aborts when that fails, as it does
  // on a hung-up terminal (EIO): it skips fds that are no longer the files it started with.
  if (hungUp) for (const fd of [0, 1, 2]) try { closeSync(fd); } catch {}
});

/**
 * Runs one command in a new sandbox, its stdio joined to hutch's. Every way out destroys the
 * sandbox: the command's end, SIGINT/SIGTERM/SIGHUP to hutch (forwarded to the command, then
 * SIGKILL if it is still there 3 s later), and hutch's own failures.
 */
async function runInSandbox(opts: SandboxOptions, cmd: string | string[], o: { interactive: boolean; tty: boolean; timeout?: string }): Promise<number> {
  const ac = new AbortController();
  const sigs: NodeJS.Signals[] = [];
  let p: ReturnType<Sandbox['spawn']> | undefined;
  let escalate: NodeJS.Timeout | undefined;
  const onSig = (sig: NodeJS.Signals): void => {
    sigs.push(sig);
    if (sig === 'SIGHUP') hungUp = true;
    if (!p || sigs.length > 1) return ac.abort();
    p.kill(sig);
    escalate ??= setTimeout(() => ac.abort(), 3000);
  };
  const handlers = (['SIGINT', 'SIGTERM', 'SIGHUP'] as const).map((s) => [s, () => onSig(s)] as const);
  for (const [s, h] of handlers) process.on(s, h);
  // A closed terminal makes writes fail (EIO): that must not end hutch before the cleanup.
  for (const s of [process.stdout, process.stderr]) s.on('error', () => undefined);
  const sb = await Sandbox.create(opts);
  sb.on('violation', (v) => process.stderr.write(`hutch: refused ${v.kind === 'network' ? `${v.protocol ?? ''} ${v.host ?? v.address ?? ''}${v.address && v.host ? ` (${v.address})` : ''}${v.port ? ` port ${v.port}` : ''}` : `syscall ${v.syscall ?? ''}`}: ${v.reason}\n`));
  try {
    if (sigs.length > 0) return 128 + (osConstants.signals[sigs[0]!] ?? 9);
    const out = process.stdout;
    const size = o.tty && out.isTTY ? { columns: out.columns, rows: out.rows } : o.tty ? true : undefined;
    p = sb.spawn(cmd, { signal: ac.signal, ...(size ? { tty: size } : {}) });
    const proc = p;
    const onResize = (): void => proc.resize(out.columns, out.rows);
    if (o.tty && out.isTTY) out.on('resize', onResize);
    if (o.tty && o.interactive && process.stdin.isTTY) {
      process.stdin.setRawMode(true);
      restoreTerminal = () => {
        restoreTerminal = () => undefined;
        try {
          process.stdin.setRawMode(false);
        } catch {}
      };
    }
    if (o.interactive) {
      // The host's terminal is never handed in: its bytes are copied to the sandbox's own pty.
      if (o.tty) process.stdin.on('data', (b: Buffer) => proc.stdin.write(b));
      else process.stdin.pipe(proc.stdin);
    } else if (!o.tty) {
      proc.stdin.end(); // as docker run without -i: no input
    }
    proc.stdout.pipe(process.stdout);
    proc.stderr.pipe(process.stderr);
    let r;
    try {
      r = await proc.result;
    } catch (e) {
      // As Docker: 127 when the command is not found, 126 when it cannot be run.
      if (HutchError.is(e) && e.code === 'ESETUP' && e.step === 'exec' && (e.errno === 'ENOENT' || e.errno === 'EACCES' || e.errno === 'ENOEXEC')) {
        process.stderr.write(`hutch: ${e.message}\n`);
        return e.errno === 'ENOENT' ? 127 : 126;
      }
      throw e;
    } finally {
      restoreTerminal();
      out.off('resize', onResize);
      process.stdin.unpipe();
      process.stdin.removeAllListeners('data');
      process.stdin.destroy();
    }
    if (r.reason === 'timeout') process.stderr.write(`hutch: timed out after ${o.timeout} ms\n`);
    if (r.reason === 'oom') process.stderr.write('hutch: killed by the OOM killer (memory limit)\n');
    if (r.exitCode !== null) return r.exitCode;
    return 128 + (r.signal ? (osConstants.signals[r.signal] ?? 9) : 9);
  } finally {
    clearTimeout(escalate);
    restoreTerminal();
    await sb.destroy();
    for (const [s, h] of handlers) process.off(s, h);
  }
}

function bar(cur: number, total?: number): string {
  if (!total) return `${(cur / 1e6).toFixed(1)} MB`;
  const w = 30;
  const k = Math.round((cur / total) * w);
  return `[${'#'.repeat(k)}${' '.repeat(w - k)}] ${((cur / total) * 100).toFixed(0)}%`;
}

function progress(label: string): (p: { phase: string; current: number; total?: number }) => void {
  const tty = process.stderr.isTTY;
  let last = 0;
  return (p) => {
    if (tty) process.stderr.write(`\r${label} ${p.phase} ${bar(p.current, p.total)}   `);
    else if (Date.now() - last > 1000 || p.current === p.total) {
      last = Date.now();
      process.stderr.write(`${label} ${p.phase} ${p.current}${p.total ? `/${p.total}` : ''}\n`);
    }
  };
}

async function main(): Promise<number> {
  const [cmd, ...rest] = process.argv.slice(2);
  const store = ImageStore.default();
  switch (cmd) {
    case 'run':
      return run(rest);
    case 'doctor': {
      const r = await Sandbox.checkHost();
      for (const c of r.checks) {
        process.stdout.write(`${c.ok ? 'ok  ' : 'MISSING'} ${c.name}: ${c.detail}\n      needed for: ${c.neededFor}${!c.ok && c.fix ? `\n      fix: ${c.fix}` : ''}\n`);
      }
      process.stdout.write(r.ok ? 'this host can run hutch sandboxes\n' : 'this host lacks what hutch needs (see MISSING above)\n');
      return r.ok ? 0 : 1;
    }
    case 'images': {
      for (const i of await store.list()) {
        process.stdout.write(`${i.id.slice(7, 19)}  ${(i.sizeBytes / 1e6).toFixed(1).padStart(8)} MB  ${i.layers.length} layer(s)  ${i.tags.join(' ')}\n`);
      }
      return 0;
    }
    case 'import': {
      const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { tag: { type: 'string' } } });
      if (!positionals[0]) throw new HutchError('EINVAL', 'hutch import: give a FILE');
      const i = await store.import(positionals[0], { ...(values.tag ? { tag: values.tag } : {}), onProgress: progress('import') });
      process.stdout.write(`\n${i.id}\n`);
      return 0;
    }
    case 'pull': {
      const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { insecure: { type: 'boolean' } } });
      if (!positionals[0]) throw new HutchError('EINVAL', 'hutch pull: give a REF');
      const i = await store.pull(positionals[0], { insecure: !!values.insecure, onProgress: progress('pull') });
      process.stdout.write(`\n${i.id}\n`);
      return 0;
    }
    case 'push': {
      const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { insecure: { type: 'boolean' } } });
      if (!positionals[0] || !positionals[1]) throw new HutchError('EINVAL', 'hutch push: give IMAGE and REF');
      await store.push(positionals[0], positionals[1], { insecure: !!values.insecure });
      return 0;
    }
    case 'build': {
      const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { file: { type: 'string', short: 'f' }, tag: { type: 'string', short: 't' } } });
      const context = positionals[0] ?? '.';
      const dockerfile = readFileSync(values.file ?? `${context}/Dockerfile`, 'utf8');
      const i = await store.build({ dockerfile, context, ...(values.tag ? { tag: values.tag } : {}), onProgress: progress('build') });
      process.stdout.write(`\n${i.id}\n`);
      return 0;
    }
    case 'rmi':
      if (!rest[0]) throw new HutchError('EINVAL', 'hutch rmi: give a REF');
      await store.remove(rest[0]);
      return 0;
    case 'prune': {
      // Everything crashed hutch processes left: cgroups, links and rules, store leftovers.
      const { pruneAll } = await import('../lib/prune.js');
      const r = await pruneAll({ store });
      process.stdout.write(`${JSON.stringify(r)}\n`);
      return 0;
    }
    case 'bench': {
      // The benchmark reads its own flags from argv (hutch bench --quick = npm run bench -- --quick)
      // and exits by itself when done.
      process.argv.splice(2, 1);
      // @ts-ignore the bench entry is compiled beside this file
      await import('../bench/startup.js');
      return 0;
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE + '\n');
      return cmd === undefined ? 2 : 0;
    default:
      throw new HutchError('EINVAL', `unknown command ${JSON.stringify(cmd)}\n${USAGE}`);
  }
}

// Links of bridge sandboxes are deleted in the background: finish that before exiting.
main().then(
  async (code) => {
    await settleNetwork().catch(() => undefined);
    process.exit(code);
  },
  async (e) => {
    await settleNetwork().catch(() => undefined);
    fail(e);
  },
);
