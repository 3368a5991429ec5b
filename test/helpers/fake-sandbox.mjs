// A stand-in for a sandbox: a process in new user + net namespaces, lo up. Plain JavaScript,
// so that the children run by plain node (net-fwd-child.mjs) share it with netns.ts.
import { execFileSync, spawn } from 'node:child_process';
import { readlinkSync } from 'node:fs';

/** Starts `sleep 300` in new user + net namespaces and brings its lo up; the caller kills it. */
export async function startFakeSandbox() {
  const child = spawn('unshare', ['--user', '--map-root-user', '--net', 'sleep', '300'], { stdio: 'ignore' });
  const pid = child.pid;
  const own = readlinkSync('/proc/self/ns/net');
  for (let i = 0; i < 200; i++) {
    try {
      if (readlinkSync(`/proc/${pid}/ns/net`) !== own) break;
    } catch {}
    await new Promise((r) => setTimeout(r, 5));
  }
  execFileSync('nsenter', [`--net=/proc/${pid}/ns/net`, 'ip', 'link', 'set', 'lo', 'up']);
  return child;
}
