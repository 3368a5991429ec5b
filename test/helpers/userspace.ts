/**
 * Shared by the userspace-link tests (test/network/userspace*.test.ts): a sandbox's link, whether
 * a process still runs, and a Node script run inside a sandbox.
 */
import { existsSync, readFileSync } from 'node:fs';
import type { Sandbox } from '../../lib/index.js';
import type { NetworkAttachment } from '../../lib/network/index.js';

/** The sandbox's link, for the pasta process a test checks. */
export function attachmentOf(sb: Sandbox): NetworkAttachment {
  return (sb as unknown as { core: { attachment: NetworkAttachment } }).core.attachment;
}

/** True while `pid` runs; a zombie is gone for this purpose (only its reaping is left). */
export function alive(pid: number): boolean {
  if (!existsSync(`/proc/${pid}`)) return false;
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

/** `node -e script` inside the sandbox; its trimmed stdout, or a throw with its stderr. */
export async function inside(sb: Sandbox, script: string): Promise<string> {
  const r = await sb.exec(['node', '-e', script], { encoding: 'utf8', timeoutMs: 30_000 });
  if (r.exitCode !== 0) throw new Error(`node inside failed (${r.exitCode}): ${r.stderr}`);
  return String(r.stdout).trim();
}
