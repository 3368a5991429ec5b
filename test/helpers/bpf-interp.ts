/**
 * A classic-BPF interpreter over `struct seccomp_data`, checking the program the way the
 * kernel's seccomp_check_filter and bpf_check_classic do (aligned absolute loads inside
 * seccomp_data, jumps inside the program, no fall-off), for testing compiled filters
 * without loading them.
 */

export interface SeccompData {
  nr: number;
  arch: number;
  instructionPointer?: bigint;
  /** Six 64-bit arguments; missing ones are 0. */
  args?: readonly bigint[];
}

export interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

export function decode(prog: Buffer): Insn[] {
  if (prog.length % 8 !== 0) throw new Error(`program length ${prog.length} is not a multiple of 8`);
  const out: Insn[] = [];
  for (let o = 0; o < prog.length; o += 8) {
    out.push({ code: prog.readUInt16LE(o), jt: prog.readUInt8(o + 2), jf: prog.readUInt8(o + 3), k: prog.readUInt32LE(o + 4) });
  }
  return out;
}

/** The 64-byte little-endian struct seccomp_data. */
export function seccompDataBytes(d: SeccompData): Buffer {
  const b = Buffer.alloc(64);
  b.writeInt32LE(d.nr | 0, 0);
  b.writeUInt32LE(d.arch >>> 0, 4);
  b.writeBigUInt64LE(d.instructionPointer ?? 0n, 8);
  for (let i = 0; i < 6; i++) b.writeBigUInt64LE(BigInt.asUintN(64, d.args?.[i] ?? 0n), 16 + 8 * i);
  return b;
}

const CLASS = (c: number): number => c & 0x07;
const SIZE = (c: number): number => c & 0x18;
const MODE = (c: number): number => c & 0xe0;
const OP = (c: number): number => c & 0xf0;
const SRC = (c: number): number => c & 0x08;

const BPF_LD = 0x00, BPF_LDX = 0x01, BPF_ST = 0x02, BPF_STX = 0x03, BPF_ALU = 0x04, BPF_JMP = 0x05, BPF_RET = 0x06, BPF_MISC = 0x07;
const BPF_W = 0x00;
const BPF_IMM = 0x00, BPF_ABS = 0x20, BPF_MEM = 0x60, BPF_LEN = 0x80;
const BPF_K = 0x00, BPF_X = 0x08, BPF_A = 0x10;

/** Runs the program on one seccomp_data; returns the 32-bit SECCOMP_RET_* value. */
export function runFilter(prog: Buffer | Insn[], data: SeccompData): number {
  const insns = Array.isArray(prog) ? prog : decode(prog);
  if (insns.length === 0 || insns.length > 4096) throw new Error(`bad program length ${insns.length}`);
  const mem = seccompDataBytes(data);
  const M = new Uint32Array(16);
  let A = 0;
  let X = 0;
  let pc = 0;
  for (let steps = 0; steps <= insns.length; steps++) {
    const ins = insns[pc];
    if (!ins) throw new Error(`pc ${pc} ran off the end of the program`);
    const { code, jt, jf, k } = ins;
    pc++;
    switch (CLASS(code)) {
      case BPF_LD:
      case BPF_LDX: {
        let v: number;
        if (MODE(code) === BPF_ABS) {
          if (SIZE(code) !== BPF_W || CLASS(code) !== BPF_LD) throw new Error(`seccomp allows only 32-bit ld abs (code ${code})`);
          if (k % 4 !== 0 || k + 4 > 64) throw new Error(`ld [${k}] outside seccomp_data or unaligned`);
          v = mem.readUInt32LE(k);
        } else if (MODE(code) === BPF_IMM) v = k >>> 0;
        else if (MODE(code) === BPF_MEM) {
          if (k > 15) throw new Error(`M[${k}]`);
          v = M[k]!;
        } else if (MODE(code) === BPF_LEN) v = 64;
        else throw new Error(`unsupported load mode (code ${code})`);
        if (CLASS(code) === BPF_LD) A = v;
        else X = v;
        break;
      }
      case BPF_ST:
      case BPF_STX:
        if (k > 15) throw new Error(`M[${k}]`);
        M[k] = CLASS(code) === BPF_ST ? A : X;
        break;
      case BPF_ALU: {
        const src = SRC(code) === BPF_X ? X : k >>> 0;
        switch (OP(code)) {
          case 0x00: A = (A + src) >>> 0; break;
          case 0x10: A = (A - src) >>> 0; break;
          case 0x20: A = Math.imul(A, src) >>> 0; break;
          case 0x30: if (src === 0) return 0; A = Math.floor(A / src) >>> 0; break;
          case 0x40: A = (A | src) >>> 0; break;
          case 0x50: A = (A & src) >>> 0; break;
          case 0x60: A = src >= 32 ? 0 : (A << src) >>> 0; break;
          case 0x70: A = src >= 32 ? 0 : A >>> src; break;
          case 0x80: A = -A >>> 0; break;
          case 0x90: if (src === 0) return 0; A = (A % src) >>> 0; break;
          case 0xa0: A = (A ^ src) >>> 0; break;
          default: throw new Error(`unsupported alu op (code ${code})`);
        }
        break;
      }
      case BPF_JMP: {
        if (OP(code) === 0x00) {
          pc += k >>> 0;
        } else {
          const src = SRC(code) === BPF_X ? X : k >>> 0;
          let cond: boolean;
          switch (OP(code)) {
            case 0x10: cond = A === src; break;
            case 0x20: cond = A > src; break;
            case 0x30: cond = A >= src; break;
            case 0x40: cond = (A & src) !== 0; break;
            default: throw new Error(`unsupported jump (code ${code})`);
          }
          pc += cond ? jt : jf;
        }
        if (pc >= insns.length) throw new Error(`jump past the end to ${pc}`);
        break;
      }
      case BPF_RET: {
        const r = (code & 0x18) === BPF_A ? A : (code & 0x18) === BPF_K ? k : NaN;
        if (Number.isNaN(r)) throw new Error(`bad ret (code ${code})`);
        return r >>> 0;
      }
      case BPF_MISC:
        if ((code & 0xf8) === 0x00) X = A; // TAX
        else if ((code & 0xf8) === 0x80) A = X; // TXA
        else throw new Error(`unsupported misc (code ${code})`);
        break;
    }
  }
  throw new Error('program did not terminate');
}

/** True when every path ends in a ret and jumps stay in range (as the kernel's checker). */
export function checkProgram(prog: Buffer): void {
  const insns = decode(prog);
  insns.forEach((ins, i) => {
    if (CLASS(ins.code) === BPF_JMP) {
      const targets = OP(ins.code) === 0x00 ? [i + 1 + ins.k] : [i + 1 + ins.jt, i + 1 + ins.jf];
      for (const t of targets) if (t >= insns.length) throw new Error(`instruction ${i} jumps to ${t}, past ${insns.length}`);
    }
  });
  const last = insns.at(-1)!;
  if (CLASS(last.code) !== BPF_RET && !(CLASS(last.code) === BPF_JMP)) throw new Error('program does not end in ret');
}
