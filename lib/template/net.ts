/**
 * A template fork's network link (docs/templates.md, "Network"): a template made with
 * `network: { mode: 'bridge', ... }` gives each fork what a created sandbox gets (lib/network):
 * a veth pair with a /30 of its own, the template's filter, shaping and published ports, its
 * /etc/hosts, and, with `domains`/`deny`/`ask`, its own resolver and name check.
 *
 * The fork makes its network namespace (in its own user namespace) after its mounts and
 * pivot_root, says 'L' on its request socket, and waits for 'C' before any task code. The host
 * makes the link on 'L' and sends 'C' only once both the cgroup move and the link are done
 * (placeFork), so a task never runs without its network, nor sees a half-made one.
 */
import { attachNetwork, hostsFile, releaseNetwork, type NetworkAttachment } from '../network/index.js';
import { SandboxEgress, ViolationLog, nflogGroup, type Violation } from '../network/egress.js';
import type { NetworkPlan } from '../network/options.js';
import { writeInRootOf } from '../runtime/files.js';
import type { AdoptedLink } from '../sandbox.js';

export class ForkNet implements AdoptedLink {
  attachment: NetworkAttachment | null = null;
  egress: SandboxEgress | null = null;
  /** Refusals of its egress check; a run reads its own from here, a fork() hands it to its Sandbox. */
  readonly log = new ViolationLog((v) => this.sink(v));
  private sink: (v: Violation) => void = () => undefined;
  private made: Promise<void> | null = null;
  private settle!: (e?: unknown) => void;
  /** Settles once the fork's link is made (or failed, or the fork ended before asking). */
  readonly linked: Promise<void>;

  constructor(
    private readonly plan: NetworkPlan,
    private readonly id: string,
    private readonly hostname: string,
    private readonly ids: { uid: number; gid: number },
  ) {
    this.linked = new Promise<void>((resolve, reject) => {
      this.settle = (e?: unknown) => (e === undefined ? resolve() : reject(e));
    });
    this.linked.catch(() => undefined);
  }

  /** A fork's network, or null for `network: 'none'` (its namespace keeps only `lo`). */
  static of(plan: NetworkPlan, id: string, hostname: string, ids: { uid: number; gid: number }): ForkNet | null {
    return plan.mode === 'none' ? null : new ForkNet(plan, id, hostname, ids);
  }

  /** The fork's 'L': its network namespace exists; `pid` is its task's host pid. */
  link(pid: number): void {
    this.made ??= (async () => {
      const group = nflogGroup(this.plan);
      this.attachment = await attachNetwork(this.plan, this.id, pid, group);
      if (!this.attachment || this.plan.mode === 'none') return;
      // Written as a created sandbox's are (addon/rootio.cc: beneath its root, as its root's ids).
      const write = (p: string, d: string): void => writeInRootOf(pid, this.ids, this.id, p, Buffer.from(d));
      write('/etc/hosts', hostsFile(this.hostname, this.attachment));
      this.egress = await SandboxEgress.start(this.plan, this.attachment, this.log, group, async (p, d) => write(p, d));
    })();
    this.made.then(() => this.settle(), (e: unknown) => this.settle(e));
  }

  /** The fork ended (or failed) before its 'L': nothing waits for a link any more. */
  abandon(why: unknown): void {
    if (!this.made) this.settle(why);
  }

  /** fork(): the Sandbox's 'violation' listeners get what the log records from now on. */
  route(emit: (v: Violation) => void): void {
    this.sink = emit;
  }

  /** The link, resolver and rules gone (once a link being made is done). */
  async release(): Promise<void> {
    await this.made?.catch(() => undefined);
    this.egress?.close();
    this.egress = null;
    const att = this.attachment;
    this.attachment = null;
    if (att) await releaseNetwork(att);
  }
}
