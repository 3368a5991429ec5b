/**
 * Everything the benchmark creates (sandboxes, pools, temp stores, OCI state dirs, a mount
 * namespace) registers its undo here; undos run last-first at the end, on SIGINT/SIGTERM and
 * after an uncaught error, so an interrupted run leaves no process, mount or cgroup behind.
 */

type Undo = () => Promise<unknown> | unknown;

const undos: { name: string; fn: Undo }[] = [];
let running: Promise<void> | null = null;

/** Registers an undo; returns a function that runs it now (once) and unregisters it. */
export function defer(name: string, fn: Undo): () => Promise<void> {
  const entry = { name, fn };
  undos.push(entry);
  return async () => {
    const i = undos.indexOf(entry);
    if (i < 0) return;
    undos.splice(i, 1);
    await runOne(entry);
  };
}

async function runOne(e: { name: string; fn: Undo }): Promise<void> {
  try {
    await e.fn();
  } catch (err) {
    process.stderr.write(`bench: cleanup of ${e.name} failed: ${(err as Error).message ?? String(err)}\n`);
  }
}

/** A mark in the undo stack: unwindTo(mark) runs only what was registered after it. */
export function undoMark(): number {
  return undos.length;
}

/** Runs the undos registered since `mark`, newest first (a scenario's own resources). */
export async function unwindTo(mark: number): Promise<void> {
  while (undos.length > mark) await runOne(undos.pop()!);
}

/** Runs every registered undo, newest first. Safe to call more than once. */
export function cleanupAll(): Promise<void> {
  running ??= (async () => {
    while (undos.length > 0) await runOne(undos.pop()!);
  })().finally(() => (running = null));
  return running;
}

/** Installs the signal and crash handlers once. */
export function installCleanupHandlers(): void {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      process.stderr.write(`\nbench: ${sig}: cleaning up...\n`);
      void cleanupAll().finally(() => process.exit(130));
    });
  }
  process.once('uncaughtException', (e) => {
    process.stderr.write(`bench: uncaught: ${e.stack ?? String(e)}\n`);
    void cleanupAll().finally(() => process.exit(1));
  });
}
