#!/usr/bin/env node
// `npm install hutch` runs this (the package's install script). It keeps the prebuilt addon
// and init of prebuilds/<platform>-<arch>/ when one matches this host (node-gyp-build picks
// it, as the loader does at run time), and builds both from source only when none does: in a
// git checkout (where `npm install` must build what the sources say), with
// npm_config_build_from_source=true, or on a host the package has no prebuild for. Before
// building, it checks the toolchain and names what is missing instead of failing deep in
// node-gyp.
import { spawnSync } from 'node:child_process';
import { existsSync, openSync, readSync, closeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const require = createRequire(import.meta.url);
const log = (msg) => process.stderr.write(`hutch: ${msg}\n`);

/** The prebuild node-gyp-build would load here, or a reason there is none. */
function prebuild() {
  if (process.platform !== 'linux') return { why: `hutch runs on Linux only (this is ${process.platform})` };
  if (process.env.npm_config_build_from_source === 'true') return { why: 'npm_config_build_from_source=true' };
  // A checkout (the TypeScript sources are there, the package has none): build what they say.
  if (existsSync(join(root, 'tsconfig.json')) && existsSync(join(root, 'lib'))) return { why: 'this is a source checkout' };
  const saved = process.env.PREBUILDS_ONLY;
  process.env.PREBUILDS_ONLY = '1';
  try {
    const file = require('node-gyp-build').resolve(root);
    const init = join(dirname(file), 'hutch-init');
    if (!existsSync(init)) return { why: `${init} is missing next to ${file}` };
    if (!isElf(file) || !isElf(init)) return { why: `${file} or ${init} is not an ELF file (a corrupt download?)` };
    // Loaded once here, as node-gyp-build's own install check does: a glibc older than the
    // prebuild's (before 2.34) refuses it, and a source build is the way out.
    try {
      require(file);
    } catch (e) {
      const glibc = /GLIBC_([0-9.]+)' not found/.exec(String(e?.message));
      return { why: `the prebuilt ${file} does not load here (${glibc ? `it needs glibc ${glibc[1]}, this host's is older` : String(e?.message).split('\n')[0]})` };
    }
    return { file, init };
  } catch (e) {
    // The same inputs node-gyp-build matched on (npm_config_arch and LIBC override the host's).
    const arch = process.env.npm_config_arch || process.arch;
    const libc = process.env.LIBC || (process.report?.getReport?.().header?.glibcVersionRuntime ? 'glibc' : 'musl');
    return { why: `no prebuilt binary for linux-${arch} (${libc}) in this package (it has linux-x64 and linux-arm64, glibc)` };
  } finally {
    if (saved === undefined) delete process.env.PREBUILDS_ONLY;
    else process.env.PREBUILDS_ONLY = saved;
  }
}

function isElf(file) {
  const b = Buffer.alloc(4);
  const fd = openSync(file, 'r');
  try {
    return readSync(fd, b, 0, 4, 0) === 4 && b.toString('latin1') === '\x7fELF';
  } finally {
    closeSync(fd);
  }
}

function onPath(cmd) {
  if (cmd.includes('/')) return existsSync(cmd);
  return (process.env.PATH ?? '').split(delimiter).some((d) => d && existsSync(join(d, cmd)));
}

/** A tool is there when it runs: a file on PATH that fails (a broken install, a stub) is not. */
function runs(cmd) {
  return spawnSync(cmd, ['--version'], { stdio: 'ignore', timeout: 20000 }).status === 0;
}

/** What building from source needs and this host lacks, each with how to get it. */
function missingTools() {
  const missing = [];
  const first = (cands) => cands.find((c) => runs(c));
  const cxx = process.env.CXX ? [process.env.CXX.split(' ')[0]] : ['c++', 'g++', 'clang++'];
  const cc = process.env.CC ? [process.env.CC.split(' ')[0]] : ['cc', 'gcc', 'clang'];
  if (!first(cxx)) missing.push(`a C++17 compiler (${cxx.join(', ')})`);
  if (!first(cc)) missing.push(`a C compiler with static libc (${cc.join(', ')})`);
  if (!runs('make')) missing.push('make');
  if (!first(['python3', 'python'])) missing.push('python3 (node-gyp runs gyp)');
  let addonApi = true;
  try {
    require.resolve('node-addon-api');
  } catch {
    addonApi = false;
    missing.push('node-addon-api (npm install --save-dev node-addon-api)');
  }
  return { missing, addonApi };
}

/** node-gyp: the project's own (a checkout's devDependency) or the one npm ships (on PATH in install scripts). */
function nodeGyp() {
  try {
    const pkg = require('node-gyp/package.json');
    const bin = typeof pkg.bin === 'string' ? pkg.bin : pkg.bin['node-gyp'];
    return [process.execPath, join(dirname(require.resolve('node-gyp/package.json')), bin)];
  } catch {
    return onPath('node-gyp') ? ['node-gyp'] : undefined;
  }
}

const found = prebuild();
if (found.file) {
  process.exit(0);
}
if (process.platform !== 'linux') {
  log(`${found.why}; installing anyway so that type-checking works, but nothing can run here.`);
  process.exit(0);
}
log(`building from source: ${found.why}`);
const { missing } = missingTools();
const gyp = nodeGyp();
if (!gyp) missing.push('node-gyp (npm ships one; or npm install --save-dev node-gyp)');
if (missing.length > 0) {
  log(
    `cannot build the addon and init from source: missing ${missing.join('; ')}.\n` +
      `  Fix one of:\n` +
      `  - install the toolchain: apt-get install g++ gcc libc6-dev make python3 (Debian/Ubuntu),\n` +
      `    dnf install gcc-c++ glibc-static make python3 (Fedora), apk add build-base linux-headers python3 (Alpine);\n` +
      `  - install on linux-x64 or linux-arm64 with glibc 2.34 or newer, where the package's prebuilt binaries need none of it.`,
  );
  process.exit(1);
}
const r = spawnSync(gyp[0], [...gyp.slice(1), 'rebuild'], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) {
  log(`node-gyp rebuild failed (status ${r.status ?? r.signal}); the output above says why`);
  process.exit(r.status || 1);
}
