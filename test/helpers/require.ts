import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { hostMode } from '../../lib/host/mode.js';

/**
 * A test that needs a host feature skips with the reason; with HUTCH_REQUIRE_ALL=1 (CI sets
 * it) the missing feature fails the test instead, so CI never goes green by skipping.
 */
export const REQUIRE_ALL = process.env.HUTCH_REQUIRE_ALL === '1';

/** Returns undefined when `ok`, else the reason; throws when HUTCH_REQUIRE_ALL=1. */
export function needs(ok: boolean, reason: string): string | undefined {
  if (ok) return undefined;
  if (REQUIRE_ALL) throw new Error(`HUTCH_REQUIRE_ALL=1 but a test needs what this host lacks: ${reason}`);
  return reason;
}

export const isRoot = process.getuid?.() === 0;

/**
 * Undefined when this process is root and every command is on PATH, else the reason
 * ("<what> need root with a, b and c"); throws when HUTCH_REQUIRE_ALL=1.
 */
export function needsRootWith(what: string, commands: string[]): string | undefined {
  const found = commands.every((c) => spawnSync('sh', ['-c', `command -v ${c}`], { stdio: 'ignore' }).status === 0);
  const list = commands.length > 1 ? `${commands.slice(0, -1).join(', ')} and ${commands[commands.length - 1]}` : commands.join('');
  return needs(isRoot && found, `${what} need root with ${list}`);
}

/**
 * Host root (root in the host's user namespace). Tests of what only host root does (host id
 * ranges, per-sandbox ranges, files planted in host directories) skip outside it, with or
 * without HUTCH_REQUIRE_ALL: the rootless runs (scripts/rootless-ci.sh, the container test)
 * cover the other modes with tests of their own (test/runtime/rootless.test.ts).
 */
export const hostRoot = hostMode() === 'root';

/**
 * This process already runs under a seccomp filter of its own (a container's or a pod's
 * profile, e.g. deploy/seccomp/hutch.json): every sandbox inherits it, so 'unconfined' still
 * shows `Seccomp: 2`, and a call that filter refuses fails (ENOSYS there) before hutch's own
 * filter is asked.
 */
export const outerSeccomp = /^Seccomp:\s+2$/m.test(readFileSync('/proc/self/status', 'utf8'));
