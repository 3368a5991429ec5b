/**
 * Making a sandbox: plan what can still refuse, start it (lib/start.ts), then watch it, attach
 * the network and hook up the AbortSignal. Also Sandbox.run's one-off path and Sandbox.settle.
 */
import { HutchError } from '../errors.js';
import { dropIdleIds } from '../idrange.js';
import { native } from '../native.js';
import { compileSeccomp, seccompReporting } from '../seccomp/index.js';
import { ImageStore } from '../image/store.js';
import { attachNetwork, hostsFile, settleNetwork } from '../network/index.js';
import { SandboxEgress, nflogGroup } from '../network/egress.js';
import type { ResolvedExecOptions, ResolvedSandboxOptions } from '../options.js';
import type { ExecResult } from '../process.js';
import { Trace } from '../trace.js';
import { inBackground, takeFailures, teardownsDone } from '../teardowns.js';
import { dropBlanks, makeBlank } from '../warm.js';
import { dropLinks } from '../network/linkpool.js';
import { prepareImageUser, resolveCached } from '../plan/index.js';
import { startSandbox, type StartedSandbox } from '../start.js';
import { SandboxCore } from './core.js';
import { abandonEarly, execResolved, watch, watchControl } from './control.js';
import { destroySandbox } from './destroy.js';
import { writeInside } from './files.js';

let defaultStore: ImageStore | undefined;

/** Sandbox.run's command, for createCore to send during setup; `result` is its exec. */
export interface FirstExec {
  command: unknown;
  exec: ResolvedExecOptions;
  result?: Promise<ExecResult>;
}

function abortError(signal: AbortSignal): HutchError {
  return new HutchError('EDESTROYED', 'the sandbox was aborted through its AbortSignal', { cause: signal.reason });
}

/** Sandbox.createResolved: a running sandbox's core, its init started. */
export async function createCore(opts: ResolvedSandboxOptions, how: { warm?: boolean; first?: FirstExec } = {}): Promise<SandboxCore> {
  if (opts.signal?.aborted) throw abortError(opts.signal);
  const tr = new Trace('create');
  const n = native();
  // Planning that can still refuse (a profile too large for BPF...) runs before anything is made.
  const seccomp = compileSeccomp(opts.seccomp, { capabilities: opts.capabilities, report: seccompReporting() });
  tr.mark('seccomp');
  const store = opts.store ?? (defaultStore ??= ImageStore.default());
  const image = await resolveCached(store, opts.image);
  await prepareImageUser(image);
  tr.mark('resolve');
  // What the host cannot do with these options is refused by the plan (lib/plan/plan.ts),
  // first thing in startSandbox, before anything is made.
  let early: SandboxCore | undefined;
  const started = await startSandbox(opts, store, image, tr, {
    warm: how.warm === true,
    // Sandbox.run: its command is sent as soon as the child is cloned, while it sets up.
    // init reads it as it starts, instead of after a round trip through this event loop.
    // Nothing else would happen in between with no network to attach; the v1 cgroups are
    // joined already (the child's first step), the cgroup namespace is made by init at the exec.
    ...(how.first && opts.network.mode === 'none' && !opts.signal
      ? {
          spawned: (st: StartedSandbox) => {
            const first = how.first!;
            const c = new SandboxCore(st.id, opts, store, image, st.spawned, st.cgroup, seccomp);
            early = c;
            watchControl(c);
            first.result = execResolved(c, first.command ?? c.defaultCommand(), first.exec, true);
            first.result.catch(() => undefined); // a failed setup is what create reports
          },
          failed: () => {
            if (early) abandonEarly(early);
          },
        }
      : {}),
  });
  const { id, spawned, cgroup } = started;
  n.close(spawned.errFd);
  tr.mark('wake');
  const core: SandboxCore = early ?? new SandboxCore(id, opts, store, image, spawned, cgroup, seccomp);
  const warmKey = started.warmKey;
  if (warmKey !== null) core.warmNext = () => void makeBlank(warmKey, store, image.image.id, image.layersDir, opts.limits.cgroup);
  core.disk = started.disk;
  core.ids = started.ids;
  core.onAbort = () => void destroySandbox(core);
  watch(core);
  try {
    if (opts.network.mode === 'bridge') {
      core.attachment = await attachNetwork(opts.network, id, spawned.pid, nflogGroup(opts.network));
      if (core.attachment) {
        writeInside(core, '/etc/hosts', hostsFile(opts.hostname ?? `hutch-${id}`, core.attachment));
        core.egress = await SandboxEgress.start(opts.network, core.attachment, core.violationLog, nflogGroup(opts.network), async (p, d) => writeInside(core, p, d));
      }
    }
    if (opts.signal) {
      if (opts.signal.aborted) throw abortError(opts.signal);
      opts.signal.addEventListener('abort', core.onAbort, { once: true });
    }
  } catch (e) {
    await destroySandbox(core);
    throw e;
  }
  tr.mark('ready');
  tr.end();
  return core;
}

/** Sandbox.run after option resolution: create, exec, destroy in the background. */
export async function runOnce(opts: ResolvedSandboxOptions, command: unknown, exec: ResolvedExecOptions): Promise<ExecResult> {
  const first: FirstExec = { command, exec };
  const core = await createCore(opts, { warm: true, first });
  let result: ExecResult;
  try {
    const running = first.result ?? execResolved(core, command ?? core.defaultCommand(), exec);
    // The next run's blank is made while this command runs: the event loop idles then, and
    // a clone now does not contend with this sandbox's own setup (both want the kernel's
    // network and mount locks).
    core.warmNext?.();
    result = await running;
  } catch (e) {
    await destroySandbox(core);
    throw e;
  }
  // Everything in the sandbox is killed now (destroy's first, synchronous step); the
  // rest of the teardown (reaping, cgroup rmdir, releases) finishes off the caller's path.
  inBackground(destroySandbox(core));
  return result;
}

/** Sandbox.settle. */
export async function settleAll(): Promise<void> {
  await dropBlanks();
  await dropLinks();
  await teardownsDone();
  // The id ranges kept for reuse go too, leases included: nothing of this process is left.
  dropIdleIds();
  const failures = takeFailures();
  await settleNetwork();
  if (failures.length > 0) throw failures[0];
}
