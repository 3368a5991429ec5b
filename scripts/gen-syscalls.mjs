#!/usr/bin/env node
// Writes lib/seccomp/syscalls.generated.ts: syscall name -> number for x86_64 and aarch64,
// read from the kernel's UAPI headers (linux-libc-dev), plus the set of names that any
// architecture defines (so a profile can name e.g. `chown32` or `s390_runtime_instr` without
// being rejected as a typo).
//
//   node scripts/gen-syscalls.mjs [--include DIR] [--out FILE] [--force] [--check]
//
// --include  header root (default /usr/include). Newer headers know newer syscalls: Debian's
//            linux-libc-dev is architecture-independent and ships every arch's asm/ dir.
// --force    write even when the headers are older than the ones the current file came from
//            (by default an older header set never replaces a newer table).
// --check    write nothing; exit 1 if the file would change (skipped, exit 0, when the
//            headers are older than the file's, unless --force).
//
// Sources, in order of preference:
//   x86_64:  <inc>/x86_64-linux-gnu/asm/unistd_64.h, else <inc>/asm/unistd_64.h
//   aarch64: <inc>/aarch64-linux-gnu/asm/unistd_64.h (generated from syscall.tbl since
//            Linux 6.11), else <inc>/asm-generic/unistd.h evaluated with the macros that
//            arm64's asm/unistd.h defines before including it (the older layout).
import { readFileSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
function opt(name, dflt) {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
}
const include = resolve(opt('--include', '/usr/include'));
const out = resolve(opt('--out', join(here, '..', 'lib', 'seccomp', 'syscalls.generated.ts')));
const force = args.includes('--force');
const check = args.includes('--check');

/** Macros arm64's uapi asm/unistd.h defined before including asm-generic/unistd.h (<= 6.10). */
const ARM64_GENERIC_DEFINES = {
  __BITS_PER_LONG: '64',
  __ARCH_WANT_RENAMEAT: '',
  __ARCH_WANT_NEW_STAT: '',
  __ARCH_WANT_SET_GET_RLIMIT: '',
  __ARCH_WANT_TIME32_SYSCALLS: '',
  __ARCH_WANT_SYS_CLONE3: '',
  __ARCH_WANT_MEMFD_SECRET: '',
};

/** Macros named like syscalls that are not syscalls. */
const NOT_SYSCALLS = new Set([
  'syscalls', 'arch_specific_syscall', 'Linux', 'Linux_syscalls', 'BASE', 'SYSCALL_BASE',
  'OABI_SYSCALL_BASE', 'SYSCALL_MASK',
]);

// ---- a small C preprocessor: #if/#ifdef/#ifndef/#elif/#else/#endif, #define, #undef ----

function tokenize(expr) {
  const re = /\s*(0x[0-9a-fA-F]+|\d+|[A-Za-z_]\w*|\|\||&&|==|!=|<=|>=|<<|>>|[-+*()!<>|&~])/y;
  const toks = [];
  let m;
  re.lastIndex = 0;
  while (re.lastIndex < expr.length && (m = re.exec(expr))) toks.push(m[1]);
  if (expr.slice(re.lastIndex).trim() !== '') throw new Error(`cannot parse expression: ${expr}`);
  return toks;
}

function evaluate(expr, macros, depth = 0) {
  if (depth > 20) throw new Error(`macro recursion in ${expr}`);
  const toks = tokenize(expr.replace(/\/\*.*?\*\//g, '').replace(/\bUL?\b/g, ''));
  let i = 0;
  const peek = () => toks[i];
  const next = () => toks[i++];
  const bin = (ops, sub) => () => {
    let v = sub();
    while (ops.includes(peek())) {
      const op = next();
      const r = sub();
      v = { '||': +(v || r), '&&': +(v && r), '==': +(v === r), '!=': +(v !== r), '<': +(v < r), '>': +(v > r),
        '<=': +(v <= r), '>=': +(v >= r), '+': v + r, '-': v - r, '*': v * r, '|': v | r, '&': v & r,
        '<<': v * 2 ** r, '>>': Math.floor(v / 2 ** r) }[op];
    }
    return v;
  };
  const unary = () => {
    const t = next();
    if (t === '!') return +!unary();
    if (t === '-') return -unary();
    if (t === '~') return ~unary();
    if (t === '(') {
      const v = or();
      if (next() !== ')') throw new Error(`missing ) in ${expr}`);
      return v;
    }
    if (t === 'defined') {
      const paren = peek() === '(';
      if (paren) next();
      const name = next();
      if (paren && next() !== ')') throw new Error(`missing ) in ${expr}`);
      return +(name in macros);
    }
    if (/^\d|^0x/.test(t)) return Number(t);
    if (/^[A-Za-z_]/.test(t)) {
      if (!(t in macros) || macros[t] === '') return 0;
      return evaluate(macros[t], macros, depth + 1);
    }
    throw new Error(`unexpected ${t} in ${expr}`);
  };
  const mul = bin(['*'], unary);
  const add = bin(['+', '-'], mul);
  const shift = bin(['<<', '>>'], add);
  const rel = bin(['<', '>', '<=', '>='], shift);
  const eq = bin(['==', '!='], rel);
  const band = bin(['&'], eq);
  const bor = bin(['|'], band);
  const and = bin(['&&'], bor);
  const or = bin(['||'], and);
  const v = or();
  if (i !== toks.length) throw new Error(`trailing tokens in ${expr}`);
  return v;
}

/** Runs the directives of one header; returns the macros it left defined. */
function preprocess(text, predefined = {}) {
  const macros = { ...predefined };
  const lines = text.replace(/\\\n/g, ' ').split('\n');
  const stack = []; // { active, taken, parentActive }
  const active = () => stack.every((s) => s.active);
  for (const raw of lines) {
    const line = raw.replace(/\/\*.*?\*\//g, '').replace(/\/\/.*$/, '').trim();
    const m = /^#\s*(\w+)\s*(.*)$/.exec(line);
    if (!m) continue;
    const [, dir, rest] = m;
    if (dir === 'ifdef' || dir === 'ifndef' || dir === 'if') {
      const parent = active();
      let cond = false;
      if (parent) {
        if (dir === 'ifdef') cond = rest.trim() in macros;
        else if (dir === 'ifndef') cond = !(rest.trim() in macros);
        else cond = evaluate(rest, macros) !== 0;
      }
      stack.push({ active: parent && cond, taken: cond, parent });
    } else if (dir === 'elif') {
      const top = stack.at(-1);
      const cond = top.parent && !top.taken && evaluate(rest, macros) !== 0;
      top.active = cond;
      top.taken ||= cond;
    } else if (dir === 'else') {
      const top = stack.at(-1);
      top.active = top.parent && !top.taken;
      top.taken = true;
    } else if (dir === 'endif') {
      stack.pop();
    } else if (!active()) {
      continue;
    } else if (dir === 'define') {
      const d = /^(\w+)(\([^)]*\))?\s*(.*)$/.exec(rest);
      if (d && !d[2]) macros[d[1]] = d[3].trim();
    } else if (dir === 'undef') {
      delete macros[rest.trim()];
    }
  }
  return macros;
}

/** name -> number for every `__NR_<name>` a header defines (given what is predefined). */
function syscallTable(file, predefined = {}) {
  const macros = preprocess(readFileSync(file, 'utf8'), predefined);
  const table = {};
  for (const [macro, value] of Object.entries(macros)) {
    const m = /^__NR_(\w+)$/.exec(macro);
    if (!m || NOT_SYSCALLS.has(m[1]) || value === '') continue;
    const nr = evaluate(value, macros);
    if (!Number.isInteger(nr) || nr < 0) throw new Error(`${file}: ${macro} is ${value}`);
    table[m[1]] = nr;
  }
  return table;
}

function firstExisting(...paths) {
  return paths.find((p) => existsSync(p));
}

function headerVersion() {
  const f = join(include, 'linux', 'version.h');
  if (!existsSync(f)) return { code: 0, text: 'unknown' };
  const t = readFileSync(f, 'utf8');
  const code = Number(/LINUX_VERSION_CODE\s+(\d+)/.exec(t)?.[1] ?? 0);
  return { code, text: `${code >> 16}.${(code >> 8) & 255}.${code & 255}` };
}

const x86File = firstExisting(join(include, 'x86_64-linux-gnu/asm/unistd_64.h'), join(include, 'asm/unistd_64.h'));
if (!x86File) {
  console.error(`gen-syscalls: no x86_64 asm/unistd_64.h under ${include} (install linux-libc-dev)`);
  process.exit(1);
}
const x86_64 = syscallTable(x86File);

const arm64File = join(include, 'aarch64-linux-gnu/asm/unistd_64.h');
const genericFile = join(include, 'asm-generic/unistd.h');
let aarch64;
let aarch64Source;
if (existsSync(arm64File)) {
  aarch64 = syscallTable(arm64File);
  aarch64Source = 'aarch64-linux-gnu/asm/unistd_64.h';
} else if (existsSync(genericFile)) {
  aarch64 = syscallTable(genericFile, ARM64_GENERIC_DEFINES);
  aarch64Source = 'asm-generic/unistd.h (as arm64 includes it)';
} else {
  console.error(`gen-syscalls: neither ${arm64File} nor ${genericFile} exists`);
  process.exit(1);
}

// Every name any architecture defines: `__NR_x`, `__NR3264_x` and ARM's private `__ARM_NR_x`.
const anyArch = new Set([...Object.keys(x86_64), ...Object.keys(aarch64)]);
const headerFiles = [genericFile];
for (const d of readdirSync(include)) {
  const asm = join(include, d, 'asm');
  if (!existsSync(asm)) continue;
  for (const f of readdirSync(asm)) if (/^unistd.*\.h$/.test(f)) headerFiles.push(join(asm, f));
}
for (const f of headerFiles) {
  if (!existsSync(f)) continue;
  for (const m of readFileSync(f, 'utf8').matchAll(/#define\s+__(?:ARM_)?NR(?:3264)?_(\w+)/g)) {
    if (!NOT_SYSCALLS.has(m[1])) anyArch.add(m[1]);
  }
}

const version = headerVersion();

function objectLiteral(table) {
  const entries = Object.entries(table).sort((a, b) => a[1] - b[1] || (a[0] < b[0] ? -1 : 1));
  return `{\n${entries.map(([n, nr]) => `  ${n}: ${nr},`).join('\n')}\n}`;
}
function wrap(names) {
  const lines = [];
  let line = ' ';
  for (const n of names) {
    const item = ` '${n}',`;
    if (line.length + item.length > 110) {
      lines.push(line);
      line = ' ';
    }
    line += item;
  }
  lines.push(line);
  return lines.join('\n');
}

const text = `// Generated by scripts/gen-syscalls.mjs from the Linux ${version.text} UAPI headers. Do not edit:
// run \`node scripts/gen-syscalls.mjs [--include DIR]\` instead.
// x86_64: ${x86File.slice(include.length + 1)}; aarch64: ${aarch64Source}.

/** LINUX_VERSION_CODE of the headers these tables were read from. */
export const SYSCALL_HEADERS_VERSION_CODE = ${version.code};
/** The same, as text. */
export const SYSCALL_HEADERS_VERSION = '${version.text}';

/** x86_64 (64-bit ABI) syscall numbers. */
export const SYSCALLS_X86_64: Readonly<Record<string, number>> = ${objectLiteral(x86_64)};

/** aarch64 syscall numbers. */
export const SYSCALLS_AARCH64: Readonly<Record<string, number>> = ${objectLiteral(aarch64)};

/** Every syscall name that some Linux architecture defines (from every asm/unistd*.h found). */
export const SYSCALL_NAMES_ANY_ARCH: ReadonlySet<string> = new Set([
${wrap([...anyArch].sort())}
]);
`;

const old = existsSync(out) ? readFileSync(out, 'utf8') : '';
const oldCode = Number(/SYSCALL_HEADERS_VERSION_CODE = (\d+)/.exec(old)?.[1] ?? 0);
if (check) {
  if (!force && oldCode > version.code) {
    console.log(`gen-syscalls: not checked: ${out} came from newer headers than ${include} (${version.text})`);
    process.exit(0);
  }
  if (old !== text) {
    console.error(`gen-syscalls: ${out} is out of date with the headers under ${include}`);
    process.exit(1);
  }
  process.exit(0);
}
if (!existsSync(dirname(out))) {
  // An installed package has no lib/ sources: nothing to regenerate.
  console.log(`gen-syscalls: ${dirname(out)} does not exist; nothing to do`);
  process.exit(0);
}
if (!force && oldCode > version.code) {
  console.log(`gen-syscalls: kept ${out}: it came from newer headers than ${include} (${version.text}); --force to replace`);
  process.exit(0);
}
writeFileSync(out, text);
console.log(
  `gen-syscalls: wrote ${out} from Linux ${version.text} headers: ${Object.keys(x86_64).length} x86_64, ` +
    `${Object.keys(aarch64).length} aarch64, ${anyArch.size} names on any arch`,
);
