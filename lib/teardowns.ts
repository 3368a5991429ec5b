/**
 * Teardowns this process runs in the background: `Sandbox.run` returns once the command has
 * ended and its sandbox is killed, and frees the rest (cgroup, writable layer, id range, the
 * store's record of the sandbox, network link) just after. Whatever depends on that being done
 * in this process — removing an image the sandbox used, pruning, `Sandbox.settle()` — waits here.
 */
const pending = new Set<Promise<void>>();
/** Failures nobody has seen yet, for the next `takeFailures()`. */
let failures: unknown[] = [];

/** Runs `teardown` in the background; a failure is kept for `takeFailures()`. */
export function inBackground(teardown: Promise<void>): void {
  const p: Promise<void> = teardown.then(
    () => void pending.delete(p),
    (e: unknown) => {
      pending.delete(p);
      failures.push(e);
    },
  );
  pending.add(p);
}

/** Resolves when every background teardown started so far (and any they start) has ended. */
export async function teardownsDone(): Promise<void> {
  while (pending.size > 0) await Promise.all([...pending]);
}

/** The failures kept so far, forgotten once taken. */
export function takeFailures(): unknown[] {
  const f = failures;
  failures = [];
  return f;
}
