/**
 * The demo: runs a few untrusted snippets in fresh sandboxes and prints what each got.
 * Run it with `npm run demo` (as root, after `npm install`).
 */
import { Sandbox } from '../lib/index.js';

const snippets: { title: string; image: 'host' | 'busybox'; command: string[] | string }[] = [
  { title: 'a normal program (node, from the host image)', image: 'host', command: ['node', '-e', 'console.log("2 + 2 =", 2 + 2, "on", process.version)'] },
  { title: 'an attempt to read a host file (/etc/shadow)', image: 'host', command: 'cat /etc/shadow; echo "exit: $?"' },
  { title: 'an attempt to see host processes', image: 'busybox', command: 'ps; echo "processes visible: $(ls /proc | grep -c "^[0-9]")"' },
  { title: 'who am I, really? (uid_map)', image: 'busybox', command: 'id; cat /proc/self/uid_map' },
  { title: 'a fork bomb, held by a pids limit of 32', image: 'busybox', command: '(i=0; while [ $i -lt 100 ]; do sleep 5 </dev/null >/dev/null 2>&1 & i=$((i+1)); done) 2>/dev/null; set -- /proc/[0-9]*; echo "tried 100 forks; processes in the sandbox: $#"' },
  { title: 'an attempt to mount (refused by seccomp and capabilities)', image: 'busybox', command: 'mount -t tmpfs none /mnt; echo "exit: $?"' },
];

for (const s of snippets) {
  const t0 = performance.now();
  const r = await Sandbox.run({ image: s.image, command: s.command, encoding: 'utf8', limits: { pids: 32, memory: '256MiB', timeoutMs: 5000 } });
  const ms = (performance.now() - t0).toFixed(1);
  process.stdout.write(`\n== ${s.title}  [${r.reason}${r.exitCode !== null ? ` ${r.exitCode}` : ''}, ${ms} ms]\n`);
  const out = `${r.stdout as string}${r.stderr as string}`.trim();
  process.stdout.write(out.split('\n').map((l) => `   ${l}`).join('\n') + '\n');
}
