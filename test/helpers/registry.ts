/**
 * Debian's docker-registry on a loopback port, storing under a directory the test made: the
 * one way the tests start a real registry (pull, push, tampered blobs, a full store).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

export interface Registry {
  port: number;
  /** `127.0.0.1:<port>`, the prefix of the image references it serves. */
  host: string;
  /** Where the registry keeps a blob's bytes on disk (for tests that tamper with them). */
  blobPath(hex: string): string;
  /** Stops the registry and waits for it to exit. */
  stop(): Promise<void>;
}

/** Starts a registry storing under `dir/registry` and waits until it answers `/v2/`. */
export async function startRegistry(dir: string, port?: number): Promise<Registry> {
  const p = port ?? (await freePort());
  const config = join(dir, 'registry.yml');
  const storage = join(dir, 'registry');
  writeFileSync(config, `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${storage}\nhttp:\n  addr: 127.0.0.1:${p}\n`);
  const child: ChildProcess = spawn('docker-registry', ['serve', config], { stdio: 'ignore' });
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  };
  for (let i = 0; ; i++) {
    if (await fetch(`http://127.0.0.1:${p}/v2/`).then((r) => r.ok, () => false)) break;
    if (i > 200 || child.exitCode !== null) {
      await stop();
      throw new Error(`docker-registry did not start on 127.0.0.1:${p}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port: p,
    host: `127.0.0.1:${p}`,
    blobPath: (hex) => join(storage, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data'),
    stop,
  };
}
