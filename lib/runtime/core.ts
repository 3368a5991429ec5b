/**
 * The state of one sandbox, shared by the runtime's parts (create, control socket, files,
 * destroy); lib/sandbox.ts wraps it in the public `Sandbox`.
 */
import { HutchError } from '../errors.js';
import type { SandboxIds } from '../idrange.js';
import type { ClonedInit, Watch } from '../native.js';
import { capabilityMask } from '../capabilities.js';
import type { SandboxCgroup } from '../cgroup/driver.js';
import type { ImageStore } from '../image/store.js';
import type { ResolvedImage } from '../image/types.js';
import type { NetworkAttachment } from '../network/index.js';
import type { ResolvedSandboxOptions } from '../options.js';
import { sandboxEnv } from '../plan/image.js';
import type { ProcessState, ResourceUsage } from '../process.js';
import type { PersistentDisk } from '../disk.js';
import { SandboxFreezer } from '../pause.js';
import { ViolationLog, type SandboxEgress, type Violation } from '../network/egress.js';

export interface SandboxEvents {
  oom: [ResourceUsage];
  exit: [{ code: number | null; signal: number | null }];
  destroyed: [];
  violation: [Violation];
}

type Emit = <K extends keyof SandboxEvents>(event: K, ...args: SandboxEvents[K]) => void;

export class SandboxCore {
  readonly id: string;
  readonly pid: number;
  state: 'running' | 'destroyed' = 'running';
  readonly opts: ResolvedSandboxOptions;
  readonly store: ImageStore;
  readonly image: ResolvedImage;
  readonly spawned: ClonedInit;
  cgroup: SandboxCgroup | null;
  attachment: NetworkAttachment | null = null;
  /** Egress by name (lib/network/egress.ts): the resolver, nft set and proxy of this sandbox. */
  egress: SandboxEgress | null = null;
  /** Where refusals go (seccomp, egress); a template's fork() brings the one its link's egress already reports to. */
  violationLog = new ViolationLog((v) => this.emit('violation', v));
  disk: PersistentDisk | null = null;
  /** Sandbox.run: makes the blank for the next run like this one (lib/warm.ts). */
  warmNext: (() => void) | undefined;
  /** The host ids of this sandbox's range. */
  ids!: SandboxIds;
  ctlWatch: Watch | null = null;
  pidWatch: Watch | null = null;
  readonly procs = new Map<number, ProcessState>();
  nextId = 1;
  destroying: Promise<void> | null = null;
  readonly exitedP: Promise<void>;
  exitedResolve!: () => void;
  initExit: { code: number | null; signal: number | null } | null = null;
  /** Resolves when nothing reads the writable layer any more (stopKeepingUpper); destroy frees the disk after it. */
  upperHeld: Promise<void> = Promise.resolve();
  readonly seccomp: Buffer | null;
  readonly caps: bigint;
  readonly baseEnv: string[];
  oomSeen = 0;
  /** The largest ru_maxrss of an exec that ended, bytes: stats()'s peak without a memory cgroup of the sandbox's own. */
  rssPeak = 0;
  /** Opens init's pidfd again if it was parked (lib/runtime/control.ts sets it; destroy calls it). */
  unparkPidfd: () => void = () => undefined;
  /** Set by create when an AbortSignal is given; destroy removes it. */
  onAbort: () => void = () => undefined;
  /** pause/resume and commit's freeze (lib/pause.ts). */
  readonly freezer: SandboxFreezer;
  /** The public Sandbox's events; a no-op until lib/sandbox.ts wraps this core. */
  emit: Emit = () => undefined;

  constructor(
    id: string,
    opts: ResolvedSandboxOptions,
    store: ImageStore,
    image: ResolvedImage,
    spawned: ClonedInit,
    cgroup: SandboxCgroup | null,
    seccomp: Buffer | null,
  ) {
    this.id = id;
    this.opts = opts;
    this.store = store;
    this.image = image;
    this.spawned = spawned;
    this.pid = spawned.pid;
    this.cgroup = cgroup;
    this.caps = capabilityMask(opts.capabilities);
    this.seccomp = seccomp;
    this.baseEnv = Object.entries(sandboxEnv(image, opts.env)).map(([k, v]) => `${k}=${v}`);
    this.exitedP = new Promise((r) => (this.exitedResolve = r));
    this.freezer = new SandboxFreezer(id, () => this.cgroup);
  }

  gone(errno?: number): HutchError {
    return new HutchError('EDESTROYED', `sandbox ${this.id} is destroyed${errno ? ` (control socket: errno ${errno})` : ''}; create a new one`);
  }

  defaultCommand(): string[] {
    const c = this.image.image.config;
    const cmd = [...(c.entrypoint ?? []), ...(c.cmd ?? [])];
    if (cmd.length === 0) throw new HutchError('EINVAL', `invalid option command: none given and the image ${this.image.image.id} has no Entrypoint or Cmd`);
    return cmd;
  }

  private liveRssPeak(): number {
    try {
      return this.cgroup?.liveRssPeak() ?? 0;
    } catch {
      return 0;
    }
  }

  /** The whole sandbox's usage now (Sandbox.stats). */
  stats(): ResourceUsage {
    if (this.state === 'destroyed') throw this.gone();
    const u = this.cgroup?.usage();
    return {
      wallMs: 0,
      cpuUserMs: u?.cpuUserMs ?? 0,
      cpuSystemMs: u?.cpuSystemMs ?? 0,
      // Without a memory cgroup of its own: the largest resident set of any of its processes,
      // ended (ru_maxrss as init reaped them) or alive (VmHWM, init's own included).
      memoryPeakBytes: u?.memoryPeakBytes ?? Math.max(this.rssPeak, this.liveRssPeak()),
      pids: u?.pids ?? 0,
      oomKills: u?.oomKills ?? 0,
      ...(u?.ioReadBytes !== undefined ? { ioReadBytes: u.ioReadBytes } : {}),
      ...(u?.ioWriteBytes !== undefined ? { ioWriteBytes: u.ioWriteBytes } : {}),
    };
  }
}
