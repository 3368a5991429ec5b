/**
 * Seccomp refusals reported by a sandbox's init (MSG_VIOLATION, addon/init/init.c): turned
 * into `Violation`s of kind 'syscall' and recorded for the exec whose filter refused them.
 */
import type { InitMessage } from '../protocol.js';
import type { Violation, ViolationCollector, ViolationLog } from '../network/violations.js';
import { AUDIT_ARCH, syscallTable, type SeccompArch } from './profile.js';

type ViolationMessage = Extract<InitMessage, { type: 'violation' }>;

const archByAudit = new Map<number, SeccompArch>(Object.entries(AUDIT_ARCH).map(([a, n]) => [n, a as SeccompArch]));
const namesByArch = new Map<SeccompArch, Map<number, string>>();

/** A syscall number's name on `arch` ('x86_64', 'aarch64'), or `syscall_<nr>` for one no table names. */
export function syscallName(arch: SeccompArch, nr: number): string {
  let names = namesByArch.get(arch);
  if (!names) {
    names = new Map(Object.entries(syscallTable(arch)).map(([name, n]) => [n, name]));
    namesByArch.set(arch, names);
  }
  return names.get(nr) ?? `syscall_${nr >>> 0}`;
}

/** The Violation a MSG_VIOLATION describes (undefined for a count only). */
export function syscallViolation(m: ViolationMessage, time = Date.now()): Violation | undefined {
  if (m.nr < 0 && m.arch === 0) return undefined;
  const arch = archByAudit.get(m.arch);
  return {
    kind: 'syscall',
    time,
    reason: 'seccomp',
    pid: m.pid,
    syscall: arch ? syscallName(arch, m.nr) : `syscall_${m.nr >>> 0}`,
    arch: arch ?? `audit_arch_0x${m.arch.toString(16)}`,
  };
}

/**
 * Records what init reported: the refusals it counted but did not send (its own rate bound),
 * then the refusal itself. `to`: the collector of the exec whose filter refused it, or null when
 * that exec has ended (a process it left behind): then only the sandbox's event.
 */
export function recordSyscallViolation(log: ViolationLog | undefined, m: ViolationMessage, to: ViolationCollector | null): void {
  if (!log) return;
  if (m.dropped > 0) log.drop(m.dropped, to);
  const v = syscallViolation(m);
  if (v) log.record(v, 1, to);
}
