import { kernelFeatures } from '../host/features.js';
import { invalid, unsupported } from '../errors.js';
import { generateProgram, SECCOMP_RET_USER_NOTIF } from './bpf.js';
import { DEFAULT_SECCOMP_PROFILE } from './default.js';
import { parseKernelRelease, resolveProfile } from './resolve.js';
import {
  checkProfile,
  normalizeCapability,
  type CheckedProfile,
  type SeccompArch,
  type SeccompProfile,
} from './profile.js';

export type {
  SeccompAction,
  SeccompArch,
  SeccompArg,
  SeccompFilter,
  SeccompOperator,
  SeccompProfile,
  SeccompSyscallRule,
  SeccompValue,
} from './profile.js';
export { DEFAULT_SECCOMP_PROFILE } from './default.js';
export { BPF_MAXINSNS } from './bpf.js';

/**
 * The `seccomp` option ({@link SandboxOptions.seccomp}): `'default'` (Docker's default
 * profile, the default), `'unconfined'` (no filter at all) or an OCI / Docker profile.
 *
 * @example
 * ```ts
 * const strict: SeccompOption = { defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['read', 'write', 'exit_group'], action: 'SCMP_ACT_ALLOW' }] };
 * await Sandbox.run({ command: ['true'], seccomp: 'unconfined' });
 * ```
 */
export type SeccompOption = 'default' | 'unconfined' | SeccompProfile;

export interface CompileSeccompOptions {
  /** Default: this host's (x64 -> x86_64, arm64 -> aarch64). */
  arch?: SeccompArch;
  /** Capabilities of the process, e.g. 'CHOWN', 'SYS_ADMIN' (a `CAP_` prefix is accepted). */
  capabilities: readonly string[];
  /** For `minKernel` conditions; default: this host's kernel release. */
  kernelRelease?: string;
  /**
   * A reporting program: refusals with an errno (ENOSYS excepted) wait for the answer of init,
   * which reports them as violations (docs/seccomp.md, "Violations"). Default false. Taken
   * only where the kernel has what init needs (Linux 5.10); elsewhere the plain program.
   */
  report?: boolean;
}

/** Programs that refuse by notifying init: their exec requests ask init for a listener. */
const reportingPrograms = new WeakSet<Buffer>();

/** Whether init must install `prog` with a listener and answer its notifications. */
export function isReportingProgram(prog: Buffer | null): boolean {
  return prog !== null && reportingPrograms.has(prog);
}

/**
 * Whether this kernel can run reporting programs: SECCOMP_RET_USER_NOTIF (5.0), the listener's
 * POLLHUP once no task uses its filter (5.9), which init needs to know when to close it.
 */
export function kernelCanReport(kernelRelease: string): boolean {
  const [major, minor] = parseKernelRelease(kernelRelease);
  return major > 5 || (major === 5 && minor >= 10);
}

let reportingEnabled = true;

/**
 * @internal Turns the reporting of seccomp refusals off (or on again) for sandboxes created
 * after the call: for the benchmark's "reporting off" runs (bench/seccomp-notify.ts).
 */
export function setSeccompReporting(on: boolean): void {
  reportingEnabled = on;
}

/** @internal Whether sandboxes made now report seccomp refusals. */
export function seccompReporting(): boolean {
  return reportingEnabled;
}

function hasNotify(prog: Buffer): boolean {
  for (let i = 0; i < prog.length; i += 8) {
    if (prog.readUInt16LE(i) === 0x06 && (prog.readUInt32LE(i + 4) & 0xffff0000) >>> 0 === SECCOMP_RET_USER_NOTIF) return true;
  }
  return false;
}

/** The architecture seccomp programs are built for on this host. */
export function hostSeccompArch(): SeccompArch {
  if (process.arch === 'x64') return 'x86_64';
  if (process.arch === 'arm64') return 'aarch64';
  throw unsupported(`seccomp on ${process.arch}`, 'hutch builds seccomp programs for x86_64 and aarch64 only');
}

/** Validated profiles, by identity: a profile object is taken as read-only once passed. */
const checkedByIdentity = new WeakMap<object, CheckedProfile>();
/** Programs by (profile identity) then (arch, capabilities, kernel). */
const programsByIdentity = new WeakMap<object, Map<string, Buffer>>();
/** Programs by (profile JSON, arch, capabilities, kernel), for equal profiles made anew. */
const programsByJson = new Map<string, Buffer>();
const JSON_CACHE_LIMIT = 64;

function check(profile: object, option: string): CheckedProfile {
  let checked = checkedByIdentity.get(profile);
  if (!checked) {
    checked = checkProfile(profile, option);
    checkedByIdentity.set(profile, checked);
  }
  return checked;
}

function profileJson(profile: object): string {
  return JSON.stringify(profile, (_k, v: unknown) => (typeof v === 'bigint' ? `${v.toString()}n` : v));
}

/**
 * Compiles a seccomp profile to a classic BPF program: the bytes of a `struct sock_filter[]`
 * (8 bytes each, little-endian) for seccomp(SECCOMP_SET_MODE_FILTER). Returns null for
 * 'unconfined'. Programs are cached per (profile, arch, capabilities, kernel): a second call
 * returns the same Buffer, which callers must not modify. Throws `EINVAL` for a bad profile.
 *
 * @example
 * ```ts
 * const prog = compileSeccomp('default', { capabilities: ['CHOWN', 'SETUID', 'SETGID'] });
 * ```
 */
export function compileSeccomp(profile: SeccompOption, opts: CompileSeccompOptions): Buffer | null {
  if (profile === 'unconfined') return null;
  const arch = opts.arch ?? hostSeccompArch();
  if (arch !== 'x86_64' && arch !== 'aarch64') throw invalid('arch', "'x86_64' or 'aarch64'", arch);
  if (!Array.isArray(opts.capabilities)) throw invalid('capabilities', 'an array of capability names', opts.capabilities);
  const caps = [
    ...new Set(
      opts.capabilities.map((c: unknown, i) => {
        if (typeof c !== 'string') throw invalid(`capabilities[${i}]`, "a capability name such as 'CHOWN'", c);
        return normalizeCapability(c, `capabilities[${i}]`);
      }),
    ),
  ].sort();
  const release = opts.kernelRelease ?? kernelFeatures().kernelRelease;
  const kernel = parseKernelRelease(release);
  const report = opts.report === true && kernelCanReport(release);
  const key = `${arch}|${kernel.join('.')}|${caps.join(',')}${report ? '|report' : ''}`;

  const obj: unknown = profile === 'default' ? DEFAULT_SECCOMP_PROFILE : profile;
  if (typeof obj !== 'object' || obj === null) throw invalid('seccomp', "'default', 'unconfined' or a seccomp profile object", profile);
  let perProfile = programsByIdentity.get(obj);
  const cached = perProfile?.get(key);
  if (cached) return cached;

  const checked = check(obj, 'seccomp');
  const jsonKey = `${key}|${profileJson(obj)}`;
  let prog = programsByJson.get(jsonKey);
  if (!prog) {
    prog = generateProgram(resolveProfile(checked, { arch, capabilities: caps, kernelRelease: kernel.join('.') }), 'seccomp', report);
    if (report && hasNotify(prog)) reportingPrograms.add(prog);
    if (programsByJson.size >= JSON_CACHE_LIMIT) programsByJson.delete(programsByJson.keys().next().value!);
    programsByJson.set(jsonKey, prog);
  }
  if (!perProfile) programsByIdentity.set(obj, (perProfile = new Map()));
  perProfile.set(key, prog);
  return prog;
}

/**
 * Checks the `seccomp` option ('default', 'unconfined' or a profile) without compiling it;
 * throws `EINVAL` naming the field, e.g. `seccomp.syscalls[3].args[0].op`.
 */
export function validateSeccompOption(option: string, value: unknown): SeccompOption {
  if (value === 'default' || value === 'unconfined') return value;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalid(option, "'default', 'unconfined' or a seccomp profile object (OCI / Docker JSON shape)", value);
  }
  check(value, option);
  return value as SeccompProfile;
}

/** The SECCOMP_FILTER_FLAG_* bits a profile asks init to pass to seccomp(2); 0 for none. */
export function seccompFilterFlags(profile: SeccompOption): number {
  if (profile === 'unconfined' || profile === 'default') return 0;
  return check(profile, 'seccomp').flags;
}
