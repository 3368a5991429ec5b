/**
 * The addon's interface, and its loading (lib/native-load.ts finds the addon and the init: a
 * source build or the package's prebuild; a failure names the file, the platform and the fix).
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HutchError } from './errors.js';
import { findAddon, findInit, loadAddon, platformName } from './native-load.js';

/** A failure the addon returns as data: lib/ turns it into a HutchError with the caller's stack. */
export interface NativeFailure {
  step?: string;
  errno: number;
  path?: string;
}

/** What a clone needs besides the encoded plan (lib/plan/encode.ts): its id maps and cgroup placement. */
export interface CloneOptions {
  uidMap: string;
  gidMap: string;
  /** cgroup v2: the cgroup's directory fd for CLONE_INTO_CGROUP; -1 on v1. */
  cgroupFd: number;
  /** v1 `tasks` files the child joins by writing "0" (see SandboxCgroup.joinFiles). */
  joinFiles: string[];
  /** Outside root mode: the holder user namespace the maps' outer ids belong to (lib/host/ids.ts); absent or -1: none. */
  userns?: number;
  /** A one-id map written by an unprivileged parent: deny setgroups before the gid map. */
  denySetgroups?: boolean;
  /** A prepared network link (lib/network/linkpool.ts): its user and network namespaces, joined instead of made. */
  linkUserns?: number;
  linkNetns?: number;
}

/** addon/plan.h's numbers, for the layout test. */
export interface PlanLayout {
  magic: number;
  version: number;
  max: number;
  maxFds: number;
  headerSize: number;
  opSize: number;
  offsets: Record<string, number>;
  ops: Record<string, number>;
  flags: Record<string, number>;
}

export interface ClonedInit {
  pid: number;
  pidfd: number;
  errFd: number;
  ctlFd: number;
}

export interface Watch {
  close(): void;
  ref(): void;
  unref(): void;
}

export interface Native {
  steps: string[];
  setInit(path: string): number | NativeFailure;
  planLayout: PlanLayout;
  /** Clones a sandbox's child with its encoded plan and the fds the plan names. */
  cloneSandbox(plan: Buffer, fds: number[], clone: CloneOptions): ClonedInit | NativeFailure;
  /** A blank child: cloned into its namespaces and cgroup, id maps written, waiting for startBlank. */
  cloneBlank(opts: CloneOptions): Promise<ClonedInit | NativeFailure>;
  /** Gives a blank child its encoded plan and the fds it names (one go message) and lets it go. */
  startBlank(pid: number, plan: Buffer, fds: number[]): true | NativeFailure;
  /** A detached clone of the tree at `path` and the real path of what was opened. */
  openTree(path: string, readonly: boolean, usernsFd?: number): { fd: number; real: string } | NativeFailure;
  /** A user namespace with these maps, as an fd (for idmapped mounts). */
  makeUserns(uidMap: string, gidMap: string): number | NativeFailure;
  /** The same, with the maps written by `mapper(pid)` while the namespace's first process waits (0 or an errno). */
  makeUserns(mapper: (pid: number) => number): number | NativeFailure;
  /** Holder mode: gives the entries extracted beneath rootFd their owners, inside the holder namespace. */
  extractFinish(rootFd: number): undefined | NativeFailure;
  /** Outside root mode: the holder user namespace extraction's chowns run in (-1: none). */
  setOwnerUserns(fd: number): void;
  /** chown of `path` (not followed), inside `userns` (-1: here). */
  chownPath(path: string, uid: number, gid: number, userns: number): undefined | NativeFailure;
  /** Removes parent/name and all beneath it, never through a symlink, inside `userns` (-1: here). */
  removeTree(parent: string, name: string, userns: number): undefined | NativeFailure;
  /** userns: outside root mode, the holder user namespace whose ids uid and gid are (-1 or absent: none). */
  openInRoot(pid: number, path: string, flags: number, mode: number, uid: number, gid: number, userns?: number): number | NativeFailure;
  // addon/extract.cc (lib/image/tar.ts): layer entries made beneath the layer's root fd.
  /** Makes the layer's root directory (0700; must not exist) and returns an fd of it. */
  extractRoot(path: string): number | NativeFailure;
  /** Runs extraction operations in order; the first failure (its index) stops the batch. */
  extractBatch(rootFd: number, ops: unknown[][]): undefined | (NativeFailure & { index: number });
  /** A new regular file beneath the root, open for writing (O_EXCL, no symlink followed). */
  extractOpen(rootFd: number, rel: string): number | NativeFailure;
  /** ftruncate (size >= 0), owner (uid >= 0), mode and mtime of a file from extractOpen, then close. */
  extractClose(fd: number, uid: number, gid: number, mode: number, mtime: number, size: number): undefined | NativeFailure;
  reap(pidfd: number): { code: number | null; signal: number | null } | null | NativeFailure;
  pidfdKill(pidfd: number, signal: number): boolean;
  /** pidfd_open of one of this process's own children, not yet reaped. */
  pidfdOpen(pid: number): number | NativeFailure;
  readSetupError(fd: number, pid: number): undefined | null | NativeFailure;
  send(fd: number, data: Buffer, fds?: number[]): number | NativeFailure;
  recv(fd: number): Buffer | null | undefined | NativeFailure;
  pipe(nonblockingRead?: boolean): [number, number] | NativeFailure;
  /** A non-blocking fd's waiting bytes (up to 1 MiB); null at EOF; undefined when none. */
  readSome(fd: number, drain?: boolean): Buffer | null | undefined | NativeFailure;
  /** A small pseudo-file whole (up to 64 KiB), or -errno. */
  readSmall(path: string): string | number;
  /** One open/write/close: 0 or -errno. */
  writeSmall(path: string, value: string): number;
  close(fd: number): void;
  /** TIOCSWINSZ on a pty's master: 0 or -errno. */
  ptyResize(fd: number, columns: number, rows: number): number;
  /** addon/upperio.cc: every readable xattr of the fd's inode, or -errno. */
  fdXattrs(fd: number): Record<string, Buffer> | number;
  /** lseek(fd, offset, SEEK_HOLE or SEEK_DATA): the offset, or -errno (-ENXIO: no more data). */
  seekData(fd: number, offset: number, hole: boolean): number;
  Watch: new (fd: number, cb: (status: number) => void) => Watch;
  // addon/netlink.cc (lib/network/netlink.ts): failures carry `detail`, the kernel's extended ack.
  netlinkSocket(pid: number): number | (NativeFailure & { detail?: string });
  netlinkAddVeth(host: string, peer: string, pid: number, queues: number): true | (NativeFailure & { detail?: string });
  netlinkAddIfb(name: string, sock?: number): true | (NativeFailure & { detail?: string });
  netlinkConfigure(sock: number, name: string, address: number, prefix: number, gateway: number): true | (NativeFailure & { detail?: string });
  netlinkSetUp(name: string, sock?: number): true | (NativeFailure & { detail?: string });
  netlinkAddTbf(name: string, bps: number, burstBytes: number, limitBytes: number, sock?: number): true | (NativeFailure & { detail?: string });
  netlinkAddRedirect(name: string, target: string, sock?: number): true | (NativeFailure & { detail?: string });
  netlinkDeleteLinks(names: string[]): Promise<(true | (NativeFailure & { detail?: string }))[]>;
  netfilterSetExists(table: string, set: string): boolean | (NativeFailure & { detail?: string });
  netlinkDeleteLinksSync(names: string[]): (true | (NativeFailure & { detail?: string }))[];
  // addon/nsjoin.cc (lib/network/userspace.ts): a sandbox's user + net namespace without host root.
  /** A prepared link's user + network namespaces (lib/network/linkpool.ts), maps written as a sandbox's. */
  makeLinkNamespaces(opts: { uidMap: string; gidMap: string; userns: number; denySetgroups: boolean }): { userns: number; netns: number } | (NativeFailure & { step?: string; path?: string });
  nsNetlinkSocket(pid: number | readonly [number, number], protocol: number): number | (NativeFailure & { step: string });
  nsSpawn(file: string, argv: string[], env: string[], fds: number[], joinPid: number | readonly [number, number], pdeathsig: boolean): { pid: number; pidfd: number } | (NativeFailure & { step: string });
  // addon/nflog.cc (lib/network/nflog.ts): refused packets logged by nftables to an NFLOG group.
  nflogOpen(group: number): number | (NativeFailure & { step: string });
  nflogRead(fd: number): { prefix: string; src: string; dst: string; proto: number; dport: number | null }[];
  /** The packets of a named counter of an inet table (NFT_MSG_GETOBJ). */
  nftCounter(table: string, name: string): number | (NativeFailure & { step: string });
  /** Adds IPv4 addresses to a set of an inet table (one nf_tables batch, NFT_MSG_NEWSETELEM). */
  nftAddElements(table: string, set: string, addresses: string[]): true | (NativeFailure & { step: string });
  /** SO_ORIGINAL_DST of a redirected TCP connection (the ask listener, lib/network/sni-proxy.ts). */
  originalDst(fd: number): { address: string; port: number } | (NativeFailure & { step: string });
  /** Deletes the conntrack entry of TCP src:sport -> dst:dport (the ask listener, after refusing); true when gone. */
  conntrackForget(src: string, sport: number, dst: string, dport: number): true | (NativeFailure & { step: string });
  /** addon/relay.cc: both ways between two sockets with splice on a thread. Bytes moved, -1 after an error. */
  spliceRelay(a: number, b: number, id: number): Promise<number>;
  relayStop(id: number): void;
  // addon/nfqueue.cc (lib/network/nfqueue.ts): the name check's netfilter queue and its own table.
  nfqTable(queue: number, marks: { pending: number; checked: number; allow: number; refuse: number; pass: number }): true | (NativeFailure & { step: string; detail?: string });
  nfqOpen(queue: number): number | (NativeFailure & { step: string });
  nfqRead(fd: number): { id: number; proto: number; src?: string; dst?: string; sport?: number; dport?: number; seq?: number; flags?: number; data?: Buffer }[];
  nfqVerdict(fd: number, queue: number, id: number, verdict: number, mark?: number): true | (NativeFailure & { step: string });
  nfqClose(fd: number, queue: number): void;
  // addon/imageview.cc (lib/image/view.ts): opened beneath the layer dir, no symlinks, O_NONBLOCK, on the libuv pool.
  /** A file of a layer: its mode and size, and its bytes when it is a regular file of at most maxBytes. */
  viewRead(layerDir: string, rel: string, maxBytes: number): Promise<{ mode: number; size: number; data?: Buffer } | NativeFailure>;
  /** A directory's xattr in a layer, or null when it has none. */
  viewXattr(layerDir: string, rel: string, name: string): Promise<string | null | NativeFailure>;
}

export function isFailure(v: unknown): v is NativeFailure {
  return typeof v === 'object' && v !== null && !Buffer.isBuffer(v) && typeof (v as NativeFailure).errno === 'number';
}

/** The package root: the nearest directory above this file with binding.gyp. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'binding.gyp'))) return dir;
    dir = dirname(dir);
  }
  return dirname(dirname(fileURLToPath(import.meta.url)));
}

let loaded: { native: Native; initPath: string } | undefined;

/**
 * The addon, loaded once, and its init made the one every sandbox runs. lib/native-load.ts
 * finds both (a source build, else the package's prebuild for this platform) and turns a
 * missing or mismatched binary into a HutchError naming the file, the platform and the fix.
 */
export function native(): Native {
  if (loaded) return loaded.native;
  const root = packageRoot();
  const file = findAddon(root);
  const mod = loadAddon<Native>(file, root);
  const initPath = findInit(file, root);
  const r = mod.setInit(initPath);
  if (isFailure(r)) {
    throw new HutchError('EUNSUPPORTED', `the hutch init ${initPath} could not be loaded (${platformName()}): errno ${r.errno}; reinstall hutch or rebuild it: cd ${root} && npm rebuild hutch --build-from-source`, { path: initPath });
  }
  loaded = { native: mod, initPath };
  return mod;
}
