import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

function walk(dir: string, depth: number, out: string[]): void {
  if (depth < 0) return;
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    const p = `${dir}/${e.name}`;
    if (/hutch/.test(e.name)) {
      // The subtree root itself may stay (empty); sandbox cgroups below it must not.
      let kids: string[] = [];
      try {
        kids = readdirSync(p, { withFileTypes: true }).filter((k) => k.isDirectory()).map((k) => k.name);
      } catch {}
      for (const k of kids) out.push(`cgroup ${p}/${k}`);
      continue;
    }
    walk(p, depth - 1, out);
  }
}

/** Everything hutch may have left on the host: cgroups, mounts, links, processes. */
export async function leftovers(): Promise<string[]> {
  const out: string[] = [];
  walk('/sys/fs/cgroup', 5, out);
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    if (/hutch/.test(line)) out.push(`mount ${line}`);
  }
  try {
    const links = execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' });
    for (const l of links.split('\n')) if (/hutch|hx[0-9a-f]/.test(l)) out.push(`link ${l}`);
  } catch {}
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const exe = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (exe.startsWith('hutch-init') || exe.includes('memfd:hutch-init')) out.push(`process ${pid} ${exe}`);
    } catch {}
  }
  if (existsSync('/run/netns')) {
    for (const n of readdirSync('/run/netns')) if (/hutch/.test(n)) out.push(`netns ${n}`);
  }
  return out;
}
