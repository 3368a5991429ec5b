/**
 * hutch: embeddable Linux sandboxes for Node.js.
 *
 * @example
 * ```ts
 * import { Sandbox } from 'hutch';
 * const r = await Sandbox.run({ image: 'busybox', command: 'echo hi', encoding: 'utf8' });
 * ```
 * @packageDocumentation
 */
export { Sandbox, SandboxPool, DEFAULT_DISK_BYTES } from './sandbox.js';
export { type PoolOptions } from './pool.js';
export { ZygoteTemplate } from './template/index.js';
export type { SandboxTemplate } from './sandbox.js';
export type { TemplateOptions, TemplateRunOptions } from './options.js';
export { HutchError, type HutchErrorCode } from './errors.js';
export type { HutchErrorDetails, HutchErrorStep } from './errors.js';
export { ImageStore } from './image/store.js';
import './image/build.js'; // registers ImageStore.build's builder (storeHooks)
export type { ImageStoreOptions, BuildOptions } from './image/store.js';
export type { HostPruneResult as PruneResult } from './host/prune.js';
export type { ExtractLimits } from './image/tar.js';
export type { Image, ImageConfig, Progress } from './image/types.js';
export type { SandboxOptions, RunOptions, ExecOptions, SpawnOptions, Mount } from './options.js';
export type { ExecResult, ResourceUsage, SandboxProcess, EndReason } from './process.js';
export type { Limits } from './limits.js';
export { DEFAULT_PIDS, DEFAULT_OUTPUT_BYTES } from './limits.js';
export type { ByteSize, Rate } from './units.js';
export type { NetworkOptions, EgressRequest, EgressRefusal, AskFunction, Violation } from './network/index.js';
export type { PortMapping, HostPort } from './network/options.js';
export type { SeccompProfile } from './seccomp/index.js';
export type {
  SeccompOption, SeccompAction, SeccompSyscallRule, SeccompArg, SeccompFilter, SeccompOperator, SeccompValue,
} from './seccomp/index.js';
export type { HostReport, HostCheck } from './host.js';
export type { HostMode } from './host/mode.js';
export { DEFAULT_CAPABILITIES } from './capabilities.js';
