import type { ChildProcess } from 'node:child_process';

/** Starts `sleep 300` in new user + net namespaces and brings its lo up; the caller kills it. */
export function startFakeSandbox(): Promise<ChildProcess>;
