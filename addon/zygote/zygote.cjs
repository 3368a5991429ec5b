'use strict';
/*
 * hutch's built-in Node zygote (docs/templates.md, "The Node zygote"). Run as
 * `node zygote.cjs`. Requires the preload, then serves the zygote protocol through its addon
 * (hutch_zygote_node.node, which loads libhutch-zygote.so): the addon's serve() returns only in
 * a forked child that the helper has made a fresh sandbox, with its task's request; the child
 * has V8 platform worker threads of its own (node_platform.cc). The task then runs in this warm
 * interpreter: `node main.js args`, `node -e code`, `node -p code`, `node -` (stdin). Any other
 * command, and node with options of its own, is exec'd (no warm start, same isolation).
 */
const fs = require('node:fs');
const path = require('node:path');
const Module = require('node:module');
const vm = require('node:vm');
const util = require('node:util');
const crypto = require('node:crypto');
const { errno: ERRNO } = require('node:os').constants;

const env = process.env;
const addon = require(env.HUTCH_ZYGOTE_NODE_ADDON);
addon.load(env.HUTCH_ZYGOTE_LIB);
const preload = JSON.parse(env.HUTCH_ZYGOTE_PRELOAD || '[]');
delete env.HUTCH_ZYGOTE_NODE_ADDON;
delete env.HUTCH_ZYGOTE_LIB;
delete env.HUTCH_ZYGOTE_PRELOAD;
// libhutch-zygote.so was preloaded for its mmap (addon/zygote/mmap_hint.c): nothing this
// process starts gets it; the environment's own LD_PRELOAD, if it had one, is put back.
if (env.HUTCH_ZYGOTE_LD_PRELOAD) env.LD_PRELOAD = env.HUTCH_ZYGOTE_LD_PRELOAD;
else delete env.LD_PRELOAD;
delete env.HUTCH_ZYGOTE_LD_PRELOAD;

function say(s) {
  fs.writeSync(2, `hutch node zygote: ${s}\n`);
}

// The preload, resolved as the task's own require would from the working directory.
const preloadRequire = Module.createRequire(path.join(process.cwd(), '[preload]'));
for (const name of preload) {
  try {
    preloadRequire(name.includes('/') && !name.startsWith('@') ? path.resolve(name) : name);
  } catch (e) {
    say(`cannot preload ${JSON.stringify(name)}: ${e && e.stack ? e.stack : e}`);
    process.exitCode = 1;
    addon.exit(1);
  }
}

const errnoOf = (e) => (e && typeof e.code === 'string' && ERRNO[e.code]) || (e && typeof e.errno === 'number' && Math.abs(e.errno)) || 5;

/** The task's files ([[path, size], ...] in order, their bytes one after another on `fd`). */
function writeFiles(files, fd) {
  for (const [p, size] of files) {
    const data = Buffer.allocUnsafe(size);
    let got = 0;
    while (got < size) {
      const n = fs.readSync(fd, data, got, size - got, null);
      if (n === 0) throw Object.assign(new Error('the files of the request ended early'), { code: 'EPIPE' });
      got += n;
    }
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, data);
    if ((data[0] === 0x23 && data[1] === 0x21) || (data[0] === 0x7f && data[1] === 0x45 && data[2] === 0x4c && data[3] === 0x46)) fs.chmodSync(p, 0o755);
  }
  fs.closeSync(fd);
}

function step(name, f) {
  try {
    return f();
  } catch (e) {
    addon.fail(name, errnoOf(e));
  }
}

/**
 * Math.random in this fork: V8's generator state (the isolate's, and this context's cache)
 * is the zygote's, the same in every fork. It draws from the CSPRNG instead, which OpenSSL
 * reseeded in this process (its pid differs from the zygote's).
 */
function reseedMathRandom() {
  const pool = new Uint32Array(1024);
  let at = pool.length;
  const random = function random() {
    if (at + 2 > pool.length) {
      crypto.randomFillSync(pool);
      at = 0;
    }
    const a = pool[at++] >>> 5;
    const b = pool[at++] >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  };
  Object.defineProperty(Math, 'random', { value: random, writable: true, configurable: true, enumerable: false });
}

/** How node prints an error that ends the process (source line when the stack names a file). */
function printFatal(er) {
  let out = '';
  try {
    const frame = er && typeof er.stack === 'string' ? /\(?((?:\/|file:\/\/)[^():]+):(\d+):(\d+)\)?/.exec(er.stack.split('\n').slice(1).join('\n')) : null;
    if (frame) {
      const file = frame[1].startsWith('file://') ? new URL(frame[1]).pathname : frame[1];
      const line = fs.readFileSync(file, 'utf8').split('\n')[Number(frame[2]) - 1];
      if (line !== undefined) out += `${file}:${frame[2]}\n${line}\n${' '.repeat(Math.max(0, Number(frame[3]) - 1))}^\n\n`;
    }
  } catch {}
  try {
    out += er instanceof Error ? util.inspect(er) : `Uncaught ${util.inspect(er)}`;
  } catch {
    out += String(er);
  }
  out += `\n\nNode.js ${process.version}\n`;
  try {
    fs.writeSync(2, out);
  } catch {}
}

/**
 * The task ends through _exit: node's own exit disposes the V8 platform and joins its worker
 * threads, which do not exist in a fork. Every way a node program ends passes here: the
 * natural end and process.exit() (the 'exit' event, after every listener), process.reallyExit,
 * and an uncaught exception or unhandled rejection (printed as node prints it, status 1).
 */
function hookExit() {
  let fatal = false;
  const end = (code) => addon.exit(Number(code) & 0xff);
  const emit = process.emit;
  process.emit = function (ev, ...a) {
    const r = emit.call(this, ev, ...a);
    if (ev === 'exit' && !fatal) end(process.exitCode ?? a[0] ?? 0);
    return r;
  };
  process.reallyExit = (code) => end(code ?? process.exitCode ?? 0);
  const onFatal = process._fatalException;
  process._fatalException = function (er, fromPromise) {
    fatal = true;
    let handled;
    try {
      handled = onFatal.call(this, er, fromPromise);
    } finally {
      fatal = false;
    }
    if (handled === false) {
      printFatal(er);
      end(process.exitCode || 1);
    }
    return handled;
  };
}

/** Options of node's own that a warm interpreter cannot honour: such a command is exec'd. */
function warmArgs(argv) {
  const name = path.basename(argv[0]);
  if (name !== 'node' && name !== 'nodejs') return null;
  const a = argv.slice(1);
  if (a[0] === '-e' || a[0] === '--eval' || a[0] === '-p' || a[0] === '--print') return a.length >= 2 ? { kind: a[0].startsWith('-p') || a[0] === '--print' ? 'print' : 'eval', code: a[1], rest: a.slice(2) } : null;
  if (a[0] === '--') a.shift();
  if (a.length === 0 || a[0] === '-') return { kind: 'stdin', rest: a.slice(1) };
  if (a[0].startsWith('-')) return null;
  return { kind: 'script', script: a[0], rest: a.slice(1) };
}

/** The module and require of code run by `-e`, `-p` or `-` as `name`, in the working directory. */
function evalModule(name) {
  const filename = path.join(process.cwd(), name);
  const m = new Module(filename);
  m.filename = filename;
  m.paths = Module._nodeModulePaths(process.cwd());
  return { m, require: Module.createRequire(filename) };
}

function evalScript(code, name) {
  return vm.runInThisContext(code, { filename: name, importModuleDynamically: vm.constants?.USE_MAIN_CONTEXT_DEFAULT_LOADER });
}

function evalCode(code, name, print) {
  const { m, require } = evalModule(name);
  globalThis.module = m;
  globalThis.exports = m.exports;
  globalThis.require = require;
  globalThis.__filename = name;
  globalThis.__dirname = '.';
  const r = evalScript(code, name);
  if (print) console.log(r);
}

/** The task's C environment, one block ("K=V\0..."), from the request's `env`. */
function envBlock(env) {
  const e = Object.entries(env).filter(([k, v]) => k && !k.includes('=') && !(k + v).includes('\0'));
  return Buffer.from(e.map(([k, v]) => `${k}=${v}\0`).join(''));
}

/**
 * In the task (PID 1 of its own sandbox). `json` null: nothing is done (the zygote's warm-up
 * calls it so, to have it compiled before it serves, as warm() does for the rest of the path).
 */
function runTask(json, filesFd) {
  if (json === null) return;
  const req = JSON.parse(json);
  addon.environ(envBlock(req.env));
  step('files', () => writeFiles(req.files, filesFd));
  step('cwd', () => process.chdir(req.cwd));
  const argv = req.argv;
  const w = warmArgs(argv);
  if (!w) addon.fail('exec', addon.exec(argv[0], argv));
  if (w.kind === 'script') {
    const script = path.resolve(w.script);
    process.argv = [process.execPath, script, ...w.rest];
  } else {
    process.argv = [process.execPath, ...w.rest];
  }
  process.execArgv = [];
  // node read its pid at its start: the zygote's. This process is PID 1 of its own namespace.
  const [pid, ppid] = addon.ids();
  Object.defineProperty(process, 'pid', { value: pid, writable: false, enumerable: true, configurable: true });
  Object.defineProperty(process, 'ppid', { value: ppid, writable: true, enumerable: true, configurable: true });
  reseedMathRandom();
  hookExit();
  addon.close(); // task code from here on: the request socket is gone
  if (w.kind === 'script') Module.runMain(process.argv[1]);
  else if (w.kind === 'stdin') evalCode(fs.readFileSync(0, 'utf8'), '[stdin]', false);
  else evalCode(w.code, '[eval]', w.kind === 'print');
}

/**
 * The zygote's own path a task takes, on a sample (no task input): run once in the zygote
 * before it serves, so the functions on it are compiled there (V8 compiles a function when it
 * is first called: its bytecode, and the writes that go with it, would otherwise be made in
 * every fork: 0.15 MiB for `node -e`, 0.06 MiB more for a first setTimeout), and again in a
 * fork prepared ahead, before its request, so the pages that path writes are copied off the
 * task's clock. The timer is cleared at once: none is left to run in a fork.
 */
function warm() {
  const req = JSON.parse('{"argv": ["node", "-e", "0"], "env": {"A": "b"}, "cwd": "/", "files": []}');
  envBlock(req.env);
  warmArgs(req.argv);
  warmArgs(['node', 'main.js']);
  path.resolve('main.js');
  process.cwd();
  evalModule('[warm]');
  evalScript('0', '[warm]');
  clearTimeout(setTimeout(warmArgs, 1)); // node's timers code, which most tasks use
}

/**
 * In the zygote only (best effort): a task's files written once, a sample in the zygote's own
 * /tmp (forks never see the template's root), then removed, so that the fs code on that path is
 * compiled here: -0.08 MiB per fork of a task with files. (Also loading the sample with
 * require() made such forks 0.05 MiB larger instead: not done.)
 */
function warmFiles() {
  const dir = '/tmp/.hutch-zygote-warm';
  let r = -1;
  let w = -1;
  try {
    [r, w] = addon.pipe();
    fs.writeSync(w, '0;\n');
    fs.closeSync(w);
    w = -1;
    writeFiles([[path.join(dir, 'main.js'), 3]], r); // closes r
    r = -1;
    fs.rmSync(dir, { recursive: true, force: true });
  } catch {}
  for (const fd of [r, w]) if (fd >= 0) fs.closeSync(fd);
}

// What every task uses, loaded once here (process.stdout and console load net, tty and
// stream when first used; many programs use the rest); then a full collection, so that the
// forks start with as little garbage as can be.
for (const m of ['net', 'tty', 'stream', 'string_decoder', 'events', 'timers', 'url', 'os', 'zlib', 'child_process', 'worker_threads', 'readline']) require(`node:${m}`);
// A task's first console.log creates process.stdout (a net.Socket on a pipe) and formats with
// util.inspect: that code compiled here once, on a pipe of the zygote's own, instead of in
// every fork. The socket is destroyed (its fd closed, no watcher left); its close callback
// runs in the zygote's one loop turn below.
function warmStdio() {
  const [r, w] = addon.pipe();
  const s = new (require('node:net').Socket)({ fd: w, readable: false, writable: true });
  const c = new console.Console(s, s);
  c.log('%s %d', 'warm', 1, { a: [1, 'b'], c: new Map([[1, 2]]) });
  c.error(new Error('warm'));
  s.write(Buffer.from('warm\n'));
  s.destroy();
  fs.closeSync(r);
}
warmStdio();
// One turn of the event loop first (the warm-up socket's close callback and write callbacks
// run here, once, not in every fork), then a full collection and serving, from inside that
// turn's check phase: in a fork, serve() returns there and the task's loop goes on from it.
setImmediate(() => {
  warm();
  warmFiles();
  runTask(null);
  require('node:v8').setFlagsFromString('--expose-gc');
  vm.runInNewContext('gc')();
  let served;
  try {
    served = addon.listen();
  } catch (e) {
    say(e.message); // the layout check of node_platform.cc refused: no fork is made
    addon.exit(1);
  }
  if (!served) addon.exit(0);
  let r = addon.serve();
  if (r === null) addon.exit(0); // the host is gone
  if (r === 'prepared') {
    warm();
    r = addon.ready();
  }
  runTask(r[0], r[1]);
  // The event loop runs the task from here; it ends through hookExit's _exit.
});
