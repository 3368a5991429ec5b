import { HutchError } from '../errors.js';
import { AUDIT_ARCH, ENOSYS, SECCOMP_RET, syscallTable, type CheckedArg } from './profile.js';
import type { ResolvedFilter, ResolvedRule } from './resolve.js';

// Compiles a resolved profile to classic BPF for seccomp(SECCOMP_SET_MODE_FILTER).
//
// Shape of the program:
//   1. ld arch; anything but the one native AUDIT_ARCH -> KILL_PROCESS (i386 and other
//      compat entries, whose numbers mean different syscalls, never reach the table).
//   2. ld nr; a balanced binary search over the syscall-number line, cut into maximal
//      intervals that share one decision (x86_64's x32 range 0x40000000.. is one of them:
//      KILL_PROCESS). Runs of allowed syscalls collapse into one leaf, so the tree is shallow.
//   3. A leaf is `ret ACTION`, or for a syscall with argument rules, the rules strictest
//      first, each a chain of 64-bit comparisons (AND), falling through to the next (OR).
// Conditional jumps reach 255 instructions at most; the assembler inserts `ja` trampolines
// (32-bit offsets) where a target is further.

/** SECCOMP_RET_USER_NOTIF (linux/seccomp.h): the call waits for the filter's listener. */
export const SECCOMP_RET_USER_NOTIF = 0x7fc00000;
const ACTION_MASK = 0xffff0000;

/**
 * Calls that keep a plain ERRNO in a reporting program: init's exec child makes them after it
 * installed the filter and before exec, while init waits for it (CLONE_VFORK) and cannot
 * answer, so a refusal that waited for an answer would hang the child and init with it:
 * handing the listener to init (sendmsg), the exec itself, and reporting a failed exec (write,
 * exit, exit_group).
 */
export const UNREPORTED_SYSCALLS = ['sendmsg', 'execve', 'execveat', 'write', 'exit', 'exit_group'] as const;

/**
 * The action of a reporting program for `k`: a refusal with an errno other than ENOSYS becomes
 * SECCOMP_RET_USER_NOTIF with the errno kept in the data bits, which the kernel ignores for
 * USER_NOTIF and init reads back by running the same program over the notification's data.
 * ENOSYS stays as it is: it is how a profile says "this call does not exist" so that libc
 * falls back (clone3, numbers newer than the profile), and reporting it would report every
 * thread glibc starts.
 */
export function reportingAction(k: number): number {
  if (((k & ACTION_MASK) >>> 0) !== SECCOMP_RET.ERRNO || (k & 0xffff) === ENOSYS) return k;
  return (SECCOMP_RET_USER_NOTIF | (k & 0xffff)) >>> 0;
}

/** BPF_MAXINSNS (linux/bpf_common.h). */
export const BPF_MAXINSNS = 4096;

// Opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS = 0x20;
const BPF_JMP_JA = 0x05;
const BPF_JEQ_K = 0x15;
const BPF_JGT_K = 0x25;
const BPF_JGE_K = 0x35;
const BPF_JSET_K = 0x45;
const BPF_ALU_AND_K = 0x54;
const BPF_RET_K = 0x06;

// struct seccomp_data offsets; both supported arches are little-endian, so an argument's low
// word comes first.
const OFF_NR = 0;
const OFF_ARCH = 4;
const argLo = (i: number): number => 16 + 8 * i;
const argHi = (i: number): number => 16 + 8 * i + 4;

/** x32 syscalls on x86_64 carry __X32_SYSCALL_BIT. */
const X32_SYSCALL_BIT = 0x40000000;
/**
 * A tracer that skips a syscall sets its number to -1; nothing runs for it, and returning an
 * errno would overwrite the tracer's chosen result (strace --inject), so it is allowed.
 */
const NR_SKIPPED = 0xffffffff;

class Label {
  pos = -1;
}

type Item =
  | { kind: 'label'; label: Label }
  | { kind: 'stmt'; code: number; k: number }
  | { kind: 'jcond'; code: number; k: number; jt: Label; jf: Label }
  | { kind: 'ja'; target: Label };

/** A list of instructions with symbolic forward jumps. */
class Assembler {
  items: Item[] = [];

  label(l: Label): void {
    this.items.push({ kind: 'label', label: l });
  }
  ld(offset: number): void {
    this.items.push({ kind: 'stmt', code: BPF_LD_W_ABS, k: offset });
  }
  and(k: number): void {
    this.items.push({ kind: 'stmt', code: BPF_ALU_AND_K, k: k >>> 0 });
  }
  ret(k: number): void {
    this.items.push({ kind: 'stmt', code: BPF_RET_K, k: k >>> 0 });
  }
  jump(code: number, k: number, jt: Label, jf: Label): void {
    this.items.push({ kind: 'jcond', code, k: k >>> 0, jt, jf });
  }

  /** Lays out, adding `ja` trampolines until every conditional offset fits in 8 bits. */
  assemble(): Buffer {
    for (;;) {
      let pc = 0;
      for (const it of this.items) {
        if (it.kind === 'label') it.label.pos = pc;
        else pc++;
      }
      let changed = false;
      pc = 0;
      for (let i = 0; i < this.items.length && !changed; i++) {
        const it = this.items[i]!;
        if (it.kind === 'label') continue;
        if (it.kind === 'jcond') {
          const far = ([it.jt, it.jf] as const).filter((t) => t.pos - pc - 1 > 255);
          if (far.length > 0) {
            const inserted: Item[] = [];
            for (const target of new Set(far)) {
              const tramp = new Label();
              inserted.push({ kind: 'label', label: tramp }, { kind: 'ja', target });
              if (it.jt === target) it.jt = tramp;
              if (it.jf === target) it.jf = tramp;
            }
            this.items.splice(i + 1, 0, ...inserted);
            changed = true;
          }
        }
        pc++;
      }
      if (changed) continue;

      const buf = Buffer.alloc(pc * 8);
      pc = 0;
      for (const it of this.items) {
        if (it.kind === 'label') continue;
        let code: number, jt = 0, jf = 0, k: number;
        if (it.kind === 'stmt') {
          code = it.code;
          k = it.k;
        } else if (it.kind === 'ja') {
          code = BPF_JMP_JA;
          k = it.target.pos - pc - 1;
        } else {
          code = it.code;
          k = it.k;
          jt = it.jt.pos - pc - 1;
          jf = it.jf.pos - pc - 1;
        }
        if (jt < 0 || jf < 0 || k < 0) throw new Error('seccomp compiler bug: backward jump');
        buf.writeUInt16LE(code, pc * 8);
        buf.writeUInt8(jt, pc * 8 + 2);
        buf.writeUInt8(jf, pc * 8 + 3);
        buf.writeUInt32LE(k >>> 0, pc * 8 + 4);
        pc++;
      }
      return buf;
    }
  }
}

const hi32 = (v: bigint): number => Number((v >> 32n) & 0xffffffffn);
const lo32 = (v: bigint): number => Number(v & 0xffffffffn);

/**
 * One 64-bit unsigned comparison of argument `a.index` with its value, from the high and the
 * low 32-bit words: control reaches `pass` when it holds, `fail` when not.
 */
function emitCompare(asm: Assembler, a: CheckedArg, pass: Label, fail: Label): void {
  const vh = hi32(a.value);
  const vl = lo32(a.value);
  const lo = new Label();
  const hiEq = new Label();
  // NE, LT and LE are EQ, GE and GT with the outcomes swapped.
  const negated = a.op === 'SCMP_CMP_NE' || a.op === 'SCMP_CMP_LT' || a.op === 'SCMP_CMP_LE';
  const yes = negated ? fail : pass;
  const no = negated ? pass : fail;
  switch (a.op) {
    case 'SCMP_CMP_EQ':
    case 'SCMP_CMP_NE':
      asm.ld(argHi(a.index));
      asm.jump(BPF_JEQ_K, vh, lo, no);
      asm.label(lo);
      asm.ld(argLo(a.index));
      asm.jump(BPF_JEQ_K, vl, yes, no);
      return;
    case 'SCMP_CMP_GT':
    case 'SCMP_CMP_GE':
    case 'SCMP_CMP_LT':
    case 'SCMP_CMP_LE':
      // arg > value (GT; LE is its negation) or arg >= value (GE; LT is its negation):
      // hi > vh holds, hi < vh does not, equal hi words leave it to the low words.
      asm.ld(argHi(a.index));
      asm.jump(BPF_JGT_K, vh, yes, hiEq);
      asm.label(hiEq);
      asm.jump(BPF_JEQ_K, vh, lo, no);
      asm.label(lo);
      asm.ld(argLo(a.index));
      asm.jump(a.op === 'SCMP_CMP_GT' || a.op === 'SCMP_CMP_LE' ? BPF_JGT_K : BPF_JGE_K, vl, yes, no);
      return;
    case 'SCMP_CMP_MASKED_EQ': {
      // (arg & value) == valueTwo, valueTwo already masked (profile.ts); a word whose mask is
      // 0 holds whatever it is, so it is not tested (libseccomp does the same). The check
      // step drops a mask of 0, so at least one word is tested.
      const mh = hi32(a.value);
      const ml = lo32(a.value);
      const hiPass = ml === 0 ? pass : lo;
      if (mh !== 0) {
        asm.ld(argHi(a.index));
        if (mh !== 0xffffffff) asm.and(mh);
        asm.jump(BPF_JEQ_K, hi32(a.valueTwo), hiPass, fail);
        if (ml !== 0) asm.label(lo);
      }
      if (ml !== 0) {
        asm.ld(argLo(a.index));
        if (ml !== 0xffffffff) asm.and(ml);
        asm.jump(BPF_JEQ_K, lo32(a.valueTwo), pass, fail);
      }
      return;
    }
  }
}

/**
 * What one interval of syscall numbers does. `x86high` is x86_64's 0x40000000..0xfffffffe:
 * x32 (bit 30) killed, the rest `notSyscall`.
 */
type Decision =
  | { kind: 'ret'; k: number }
  | { kind: 'rules'; rules: ResolvedRule[]; fallback: number }
  | { kind: 'x86high'; notSyscall: number };

/**
 * Drops rules that cannot change the outcome: everything after the first unconditional rule
 * (which becomes the fallback), then trailing rules whose action is the fallback anyway.
 */
function simplify(rules: ResolvedRule[], dflt: number): Decision {
  let fallback = dflt;
  const kept: ResolvedRule[] = [];
  for (const r of rules) {
    if (r.args.length === 0) {
      fallback = r.action;
      break;
    }
    kept.push(r);
  }
  while (kept.length > 0 && kept.at(-1)!.action === fallback) kept.pop();
  return kept.length === 0 ? { kind: 'ret', k: fallback } : { kind: 'rules', rules: kept, fallback };
}

interface Interval {
  start: number;
  decision: Decision;
}

function reportingDecision(d: Decision): Decision {
  if (d.kind === 'ret') return { kind: 'ret', k: reportingAction(d.k) };
  if (d.kind === 'x86high') return { kind: 'x86high', notSyscall: reportingAction(d.notSyscall) };
  return { kind: 'rules', rules: d.rules.map((r) => ({ ...r, action: reportingAction(r.action) })), fallback: reportingAction(d.fallback) };
}

/**
 * Cuts 0..2^32-1 into maximal intervals of equal decision. With `report`, refusals become
 * reporting actions (reportingAction), but for UNREPORTED_SYSCALLS. The mapping is one to one
 * on the actions a profile can have (none is USER_NOTIF: SCMP_ACT_NOTIFY is refused), so the
 * intervals, and with them the search tree every allowed call walks, are the same as without
 * it, unless the profile refuses one of UNREPORTED_SYSCALLS, which then gets a leaf of its own.
 */
function intervals(filter: ResolvedFilter, report = false): Interval[] {
  const out: Interval[] = [];
  const push = (start: number, decision: Decision): void => {
    const last = out.at(-1);
    if (last && last.decision.kind === 'ret' && decision.kind === 'ret' && last.decision.k === decision.k) return;
    out.push({ start, decision });
  };
  const plainDflt: Decision = { kind: 'ret', k: filter.defaultAction };
  const plainBeyond = filter.enosysAbove === undefined ? plainDflt : { kind: 'ret' as const, k: (SECCOMP_RET.ERRNO | ENOSYS) >>> 0 };
  const mapped = (d: Decision): Decision => (report ? reportingDecision(d) : d);
  const dflt = mapped(plainDflt);
  const beyond = mapped(plainBeyond);
  const table = syscallTable(filter.arch);
  const unreported = new Set<number>(report ? UNREPORTED_SYSCALLS.map((n) => table[n]).filter((n): n is number => n !== undefined) : []);
  const numbers = [...new Set([...filter.bySyscall.keys(), ...unreported])].sort((a, b) => a - b);
  const decide = (nr: number): Decision => {
    const rules = filter.bySyscall.get(nr);
    const plain = rules ? simplify(rules, filter.defaultAction) : filter.enosysAbove !== undefined && nr > filter.enosysAbove ? plainBeyond : plainDflt;
    return unreported.has(nr) ? plain : mapped(plain);
  };
  // Numbers no rule names, from..to-1: the default, then ENOSYS past the newest named call
  // (which may have no rule left: one that repeats the default action is dropped).
  const gap = (from: number, to: number): void => {
    const cut = filter.enosysAbove === undefined ? to : Math.max(from, Math.min(to, filter.enosysAbove + 1));
    if (from < cut) push(from, dflt);
    if (cut < to) push(cut, beyond);
  };
  let next = 0;
  for (const nr of numbers) {
    gap(next, nr);
    push(nr, decide(nr));
    next = nr + 1;
  }
  gap(next, filter.arch === 'x86_64' ? X32_SYSCALL_BIT : NR_SKIPPED);
  if (filter.arch === 'x86_64') {
    // x32 numbers (bit 30) are killed; 0x80000000..0xbfffffff are no syscall of either ABI:
    // the kernel answers ENOSYS for them, and so does runc's stub, which only skips numbers
    // with bit 30 set, so they get what numbers past the newest syscall get. One leaf for
    // 0x40000000..0xfffffffe keeps the search tree the shape it had when all of it was killed.
    push(X32_SYSCALL_BIT, mapped({ kind: 'x86high', notSyscall: filter.enosysAbove === undefined ? filter.defaultAction : plainBeyond.k }));
  }
  push(NR_SKIPPED, { kind: 'ret', k: SECCOMP_RET.ALLOW });
  return out;
}

function emitLeaf(asm: Assembler, d: Decision): void {
  if (d.kind === 'ret') {
    asm.ret(d.k);
    return;
  }
  if (d.kind === 'x86high') {
    const x32 = new Label();
    const notSyscall = new Label();
    asm.jump(BPF_JSET_K, X32_SYSCALL_BIT, x32, notSyscall);
    asm.label(notSyscall);
    asm.ret(d.notSyscall);
    asm.label(x32);
    asm.ret(SECCOMP_RET.KILL_PROCESS);
    return;
  }
  for (const rule of d.rules) {
    const nextRule = new Label();
    const hit = new Label();
    rule.args.forEach((a, i) => {
      const pass = i === rule.args.length - 1 ? hit : new Label();
      emitCompare(asm, a, pass, nextRule);
      if (pass !== hit) asm.label(pass);
    });
    asm.label(hit);
    asm.ret(rule.action);
    asm.label(nextRule);
  }
  asm.ret(d.fallback);
}

/** Binary search over intervals[lo..hi]; the accumulator holds the syscall number. */
function emitTree(asm: Assembler, iv: Interval[], lo: number, hi: number): void {
  if (lo === hi) {
    emitLeaf(asm, iv[lo]!.decision);
    return;
  }
  const mid = (lo + hi + 1) >> 1;
  const below = new Label();
  const above = new Label();
  asm.jump(BPF_JGE_K, iv[mid]!.start, above, below);
  asm.label(below);
  emitTree(asm, iv, lo, mid - 1);
  asm.label(above);
  emitTree(asm, iv, mid, hi);
}

/**
 * The `struct sock_filter[]` program for a resolved filter; EINVAL past BPF_MAXINSNS. With
 * `report`, a reporting program: refusals wait for init's answer (reportingAction).
 */
export function generateProgram(filter: ResolvedFilter, what = 'seccomp', report = false): Buffer {
  const asm = new Assembler();
  const archOk = new Label();
  const badArch = new Label();
  asm.ld(OFF_ARCH);
  asm.jump(BPF_JEQ_K, AUDIT_ARCH[filter.arch], archOk, badArch);
  asm.label(badArch);
  asm.ret(SECCOMP_RET.KILL_PROCESS);
  asm.label(archOk);
  asm.ld(OFF_NR);
  const iv = intervals(filter, report);
  emitTree(asm, iv, 0, iv.length - 1);
  const prog = asm.assemble();
  const n = prog.length / 8;
  if (n > BPF_MAXINSNS) {
    throw new HutchError(
      'EINVAL',
      `invalid option ${what}: the profile compiles to ${n} BPF instructions for ${filter.arch}, ` +
        `more than the kernel's limit of ${BPF_MAXINSNS}; merge rules or use fewer argument conditions`,
    );
  }
  return prog;
}
