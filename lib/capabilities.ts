/** Capability names (without CAP_) and their numbers (linux/capability.h), and the default set. */
import { invalid } from './errors.js';
import { suggest } from './validators.js';

export const CAPABILITIES: readonly string[] = [
  'CHOWN', 'DAC_OVERRIDE', 'DAC_READ_SEARCH', 'FOWNER', 'FSETID', 'KILL', 'SETGID', 'SETUID', 'SETPCAP',
  'LINUX_IMMUTABLE', 'NET_BIND_SERVICE', 'NET_BROADCAST', 'NET_ADMIN', 'NET_RAW', 'IPC_LOCK', 'IPC_OWNER',
  'SYS_MODULE', 'SYS_RAWIO', 'SYS_CHROOT', 'SYS_PTRACE', 'SYS_PACCT', 'SYS_ADMIN', 'SYS_BOOT', 'SYS_NICE',
  'SYS_RESOURCE', 'SYS_TIME', 'SYS_TTY_CONFIG', 'MKNOD', 'LEASE', 'AUDIT_WRITE', 'AUDIT_CONTROL', 'SETFCAP',
  'MAC_OVERRIDE', 'MAC_ADMIN', 'SYSLOG', 'WAKE_ALARM', 'BLOCK_SUSPEND', 'AUDIT_READ', 'PERFMON', 'BPF',
  'CHECKPOINT_RESTORE',
];

/**
 * The capabilities a sandbox keeps by default ({@link SandboxOptions.capabilities}): Docker's
 * default set minus AUDIT_WRITE, MKNOD and NET_RAW. They are capabilities of the sandbox's
 * own user namespace, never of the host.
 *
 * @example
 * ```ts
 * // the default plus NET_RAW (for ping), minus KILL
 * const capabilities = [...DEFAULT_CAPABILITIES.filter((c) => c !== 'KILL'), 'NET_RAW'];
 * const sb = await Sandbox.create({ capabilities });
 * ```
 */
export const DEFAULT_CAPABILITIES: readonly string[] = [
  'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'NET_BIND_SERVICE', 'SETFCAP', 'SETGID', 'SETPCAP',
  'SETUID', 'SYS_CHROOT',
];

/** Validates a capability list ('CAP_' prefix and any case accepted); returns canonical names. */
export function resolveCapabilities(field: string, value: unknown): string[] {
  if (value === undefined) return [...DEFAULT_CAPABILITIES];
  if (!Array.isArray(value)) throw invalid(field, 'an array of capability names such as ["CHOWN", "NET_BIND_SERVICE"]', value);
  const out = new Set<string>();
  value.forEach((v, i) => {
    if (typeof v !== 'string') throw invalid(`${field}[${i}]`, 'a capability name', v);
    const name = v.toUpperCase().replace(/^CAP_/, '');
    if (!CAPABILITIES.includes(name)) {
      const s = suggest(name, CAPABILITIES);
      throw invalid(`${field}[${i}]`, `a capability name${s ? ` (did you mean ${s}?)` : ''}, one of ${CAPABILITIES.join(' ')}`, v);
    }
    out.add(name);
  });
  return [...out];
}

export function capabilityMask(names: readonly string[]): bigint {
  let m = 0n;
  for (const n of names) m |= 1n << BigInt(CAPABILITIES.indexOf(n));
  return m;
}
