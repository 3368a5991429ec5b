/**
 * Spawning `ip`, `tc` and `nft`. Each call is one batch (`-batch -` / `-f -`) so a step costs
 * one process; the commands are built by small pure functions (veth.ts, tc.ts, nat.ts) so the
 * hot ones can move to netlink in the addon without touching the callers.
 */
import { spawn } from 'node:child_process';
import { HutchError } from '../errors.js';

export interface RunResult {
  stdout: string;
  stderr: string;
}

/** Runs `cmd args` with `input` on stdin; rejects with ESETUP (step 'network') naming the command and its stderr. */
export function run(cmd: string, args: readonly string[], input?: string, what?: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' } });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (e: NodeJS.ErrnoException) => {
      const hint = e.code === 'ENOENT' ? `; install ${cmd === 'nft' ? 'nftables' : 'iproute2'}` : '';
      reject(new HutchError('ESETUP', `network: cannot run ${cmd}: ${e.code ?? e.message}${hint}`, { step: 'network', errno: e.code, cause: e }));
    });
    child.on('close', (code, signal) => {
      if (code === 0) return resolve({ stdout, stderr });
      const detail = stderr.trim().split('\n').slice(0, 6).join('; ') || `exit ${code ?? signal}`;
      const err = new HutchError('ESETUP', `network: ${what ?? `${cmd} ${args.join(' ')}`} failed: ${detail}`, { step: 'network' });
      (err as HutchError & { stderr?: string; input?: string }).stderr = stderr;
      reject(err);
    });
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
  });
}

/** The stderr of a failed `run`, for callers that tolerate "already gone". */
export function stderrOf(e: unknown): string {
  return (e as { stderr?: string }).stderr ?? (e instanceof Error ? e.message : String(e));
}
