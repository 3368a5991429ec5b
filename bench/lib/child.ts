/**
 * Child processes for the peers: spawned from this Node process, exactly as hutch spawns its
 * sandboxes, with stdio ignored, timed from the spawn call to the 'exit' event.
 */
import { spawn, execFileSync, type SpawnOptions } from 'node:child_process';
import { accessSync, constants } from 'node:fs';

export interface ChildResult {
  ms: number;
  code: number | null;
  signal: NodeJS.Signals | null;
}

const TIMEOUT_MS = 60_000;

/** Runs argv to its end; resolves with the wall time in milliseconds. */
export function timeChild(argv: readonly string[], opts: SpawnOptions = {}): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore', ...opts });
    const timer = setTimeout(() => child.kill('SIGKILL'), TIMEOUT_MS);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('exit', (code, signal) => {
      const ms = performance.now() - t0;
      clearTimeout(timer);
      resolve({ ms, code, signal });
    });
  });
}

/** Runs argv once with stderr captured, for the message of a failed peer. */
export function explainFailure(argv: readonly string[], opts: { cwd?: string } = {}): string {
  try {
    execFileSync(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], timeout: TIMEOUT_MS, ...opts });
    return 'succeeded when run again';
  } catch (e) {
    const err = e as { stderr?: Buffer; message: string };
    const text = err.stderr?.toString().trim();
    return text ? text.split('\n').slice(-3).join(' / ') : err.message;
  }
}

/** First line of `cmd --version`, or null when the command is missing. */
export function version(cmd: string, args = ['--version']): string | null {
  try {
    const out = execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000, encoding: 'utf8' });
    return out.split('\n').find((l) => l.trim() !== '')?.trim() ?? '';
  } catch {
    return null;
  }
}

/** Whether an executable is on PATH. */
export function which(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    try {
      accessSync(`${dir}/${cmd}`, constants.X_OK);
      return `${dir}/${cmd}`;
    } catch {
      /* not here */
    }
  }
  return null;
}
