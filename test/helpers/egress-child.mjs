// A second hutch process for test/network/egress-queue.test.ts (run by CrashChild): makes one
// sandbox with the network options of argv[2] (JSON), runs the commands of argv[3] (JSON:
// [{ cmd, background? }]) in it with sh, reports each as a JSON line (first the sandbox's address and this process's queue), then a 'mark', and stays
// until its stdin ends (then destroys the sandbox) or it is killed.
import { Sandbox } from '../../dist/lib/index.js';
import { queueNumber } from '../../dist/lib/network/nfqueue.js';

const out = (e) => process.stdout.write(JSON.stringify(e) + '\n');
try {
  const sb = await Sandbox.create({ network: JSON.parse(process.argv[2]) });
  sb.on('violation', (v) => out({ ev: 'violation', v }));
  out({ ev: 'sandbox', address: sb.network.address, queue: queueNumber() });
  for (const c of JSON.parse(process.argv[3])) {
    if (c.background) {
      sb.spawn(['sh', '-c', c.cmd]).result.catch(() => undefined);
      continue;
    }
    const r = await sb.exec(['sh', '-c', c.cmd], { encoding: 'utf8', timeoutMs: 30_000 });
    out({ ev: 'exec', stdout: r.stdout, stderr: r.stderr, code: r.exitCode });
  }
  out({ ev: 'mark', n: 1 });
  process.stdin.on('end', () => void sb.destroy().finally(() => process.exit(0)));
  process.stdin.resume();
} catch (e) {
  process.stderr.write(`egress-child: ${e?.stack ?? e}\n`);
  process.exit(1);
}
