/**
 * A template's zygote: started in the template sandbox, checked (its ready line, its socket
 * taken from the host through a pidfd), and watched until it ends.
 */
import { closeSync, readFileSync } from 'node:fs';
import type { Sandbox } from '../sandbox.js';
import { HutchError, errnoName } from '../errors.js';
import { isFailure, native } from '../native.js';
import type { SandboxProcess } from '../process.js';
import { fdinfoPid, hostPidOf, tn } from './native.js';

/** A running zygote: its process in the template, and the host's end of its socket. */
export interface Zygote {
  proc: SandboxProcess;
  sock: number;
  pidfd: number;
  dead: boolean;
  why: string;
}

/**
 * Starts the zygote (`argv`, with `env`) in the template sandbox and waits for its ready line;
 * HutchError when it does not speak the protocol. `onEnd` is called when it ends.
 */
export async function startZygote(sb: Sandbox, argv: string[], env: Record<string, string>, timeoutMs: number, onEnd: (z: Zygote) => void): Promise<Zygote> {
  if (sb.state === 'destroyed') throw new HutchError('EDESTROYED', 'the template sandbox is gone (its init ended); create a new template');
  const proc = sb.spawn(argv, { env });
  let out = '';
  let err = '';
  proc.stderr.on('data', (d: Buffer) => {
    if (err.length < 4096) err += d.toString('utf8');
  });
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new HutchError('ESETUP', `the zygote ${JSON.stringify(argv)} did not say it was ready within ${timeoutMs} ms (expected the line "hutch-zygote 1 <fd>" on its stdout; docs/templates.md)`, { step: 'zygote' }));
    }, timeoutMs);
    const onData = (d: Buffer): void => {
      out += d.toString('utf8');
      const nl = out.indexOf('\n');
      if (nl >= 0 || out.length > 256) {
        clearTimeout(timer);
        proc.stdout.off('data', onData);
        resolve(nl >= 0 ? out.slice(0, nl) : out);
      }
    };
    proc.stdout.on('data', onData);
    proc.result.then(
      (r) => {
        clearTimeout(timer);
        reject(new HutchError('ESETUP', `the zygote ${JSON.stringify(argv)} ended before it was ready (${r.reason} ${r.exitCode ?? r.signal}): ${err.trim().slice(-1000) || 'no stderr'}`, { step: 'zygote' }));
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
  const m = /^hutch-zygote 1 (\d+)$/.exec(line);
  if (!m) {
    proc.kill('SIGKILL');
    throw new HutchError('ESETUP', `the zygote ${JSON.stringify(argv)} does not speak the zygote protocol: its first line was ${JSON.stringify(line.slice(0, 100))}, expected "hutch-zygote 1 <fd>" (docs/templates.md)`, { step: 'zygote' });
  }
  proc.stdout.resume();
  // /proc/<pid>/task/<tid>/children is read without a lock on the tree: a read that races a
  // process starting or ending elsewhere in the sandbox can miss an entry, so look again.
  let host = hostPidOf(sb.pid, proc.pid);
  for (let i = 0; host === null && i < 20; i++) {
    await new Promise((r) => setTimeout(r, 10));
    host = hostPidOf(sb.pid, proc.pid);
  }
  const pidfd = host === null ? { errno: 3 } : tn().pidfdOpen(host);
  if (isFailure(pidfd)) {
    proc.kill('SIGKILL');
    throw new HutchError('ESETUP', 'cannot find the zygote process from the host', { step: 'zygote', errno: errnoName(pidfd.errno) });
  }
  const sock = tn().pidfdGetfd(pidfd, Number(m[1]));
  if (isFailure(sock)) {
    closeSync(pidfd);
    proc.kill('SIGKILL');
    throw new HutchError('ESETUP', `cannot take the zygote's socket (fd ${m[1]}): ${errnoName(sock.errno)}`, { step: 'zygote', errno: errnoName(sock.errno) });
  }
  const z: Zygote = { proc, sock, pidfd, dead: false, why: '' };
  const hello = native().send(sock, Buffer.from('{"op":"hello"}'));
  if (isFailure(hello)) throw new HutchError('ESETUP', `the zygote's socket: ${errnoName(hello.errno)}`, { step: 'zygote' });
  proc.result.then(
    (r) => {
      z.dead = true;
      z.why = `the zygote ended (${r.reason} ${r.exitCode ?? r.signal})${err ? `: ${err.trim().slice(-500)}` : ''}`;
      onEnd(z);
      closeSync(sock);
      closeSync(pidfd);
    },
    () => undefined,
  );
  return z;
}

/**
 * Whether a zygote has ended. `dead` is set when init reports its end, which can come after a
 * run has already seen its socket close: the kernel is asked too. First its socket: the zygote
 * never writes to it, so a read finds nothing while it lives and EOF from the moment its
 * process closed its files: before it is a zombie, and (the built-in zygotes make it first, so
 * it has the lowest fd number of their sockets) before a run's request socket reaches EOF. A
 * run that saw the zygote die then never takes a fork it left. Then its pidfd (no longer
 * signals once it is reaped) and its state (a zombie's is Z).
 */
export function zygoteGone(z: Zygote): boolean {
  if (z.dead) return true;
  const m = tn().recvFds(z.sock);
  if (m !== undefined && m !== null && !isFailure(m)) for (const fd of m.fds) native().close(fd);
  let gone = m === null || isFailure(m) || !native().pidfdKill(z.pidfd, 0);
  if (!gone) {
    const pid = fdinfoPid(z.pidfd);
    try {
      gone = pid < 0 || readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] === 'Z';
    } catch {
      gone = true;
    }
  }
  if (gone) z.dead = true;
  return gone;
}
