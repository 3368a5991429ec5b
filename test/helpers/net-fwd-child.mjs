// A hutch user run by test/network/host.test.ts inside a network namespace the test made
// (`ip netns exec <ns> node net-fwd-child.mjs <mode> <range>`), so forwarding flags and the
// nftables table it reads and changes are that namespace's, not the machine's. HUTCH_NET_DIR
// names a state dir of the test's. Prints one JSON line per event on stdout.
// Uses the compiled library (dist/, `npx tsc -p tsconfig.json`).
//
//   life   a nat sandbox reaches the test's "world" while the host's own forwarding stays as
//          it was: prints flags before, during (with two connection attempts) and after
//   many   four nat sandboxes attached and released at once: all reach the world, and the
//          flags are back as before once the last is gone
//   hold   attaches a nat sandbox, prints {"ev":"attached"} and waits to be SIGKILLed
//   prune  pruneNetwork(), prints its result and the flags
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { startFakeSandbox } from './fake-sandbox.mjs';
import { attachNetwork, releaseNetwork, resolveNetwork, pruneNetwork, settleNetwork } from '../../dist/lib/network/index.js';

const [mode, range, worldNs, worldAddr, peerAddr] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

function flags() {
  const f = { ip_forward: readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim() };
  for (const d of readdirSync('/proc/sys/net/ipv4/conf')) f[d] = readFileSync(`/proc/sys/net/ipv4/conf/${d}/forwarding`, 'utf8').trim();
  return f;
}

function nft(args) {
  try {
    return execFileSync('nft', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return null;
  }
}

const fakeSandbox = startFakeSandbox;

/** A TCP connection from a netns (sandbox pid or named netns): 'ok <reply>', an error code or 'timeout'. */
function connect(target, host, port, timeoutMs = 1500) {
  const script = `const s=require('net').connect(${port},'${host}');let d='';const t=setTimeout(()=>{console.log('timeout');process.exit(0)},${timeoutMs});
s.on('data',x=>d+=x);s.on('end',()=>{clearTimeout(t);console.log('ok '+d);process.exit(0)});s.on('error',e=>{clearTimeout(t);console.log(e.code);process.exit(0)});`;
  const pre = typeof target === 'number' ? ['nsenter', `--net=/proc/${target}/ns/net`] : ['ip', 'netns', 'exec', target];
  return execFileSync(pre[0], [...pre.slice(1), process.execPath, '-e', script], { encoding: 'utf8' }).trim();
}

const plan = () => resolveNetwork({ mode: 'bridge', outbound: 'nat', range });

try {
  if (mode === 'life') {
    out({ ev: 'before', flags: flags() });
    const sb = await fakeSandbox();
    const a = await attachNetwork(plan(), 'fwd-life', sb.pid);
    out({
      ev: 'during',
      flags: flags(),
      host: a.hostInterface,
      guard: nft(['list', 'set', 'inet', 'hutch', 'fwd_guard']),
      records: readdirSync(process.env.HUTCH_NET_DIR).filter((n) => n.startsWith('forwarding.')),
      sandboxToWorld: connect(sb.pid, worldAddr, 7100),
      worldToPeer: connect(worldNs, peerAddr, 7200),
    });
    await releaseNetwork(a, { wait: true });
    await settleNetwork();
    out({
      ev: 'after',
      flags: flags(),
      guard: nft(['list', 'set', 'inet', 'hutch', 'fwd_guard']),
      records: readdirSync(process.env.HUTCH_NET_DIR).filter((n) => n.startsWith('forwarding.')),
      worldToPeer: connect(worldNs, peerAddr, 7200),
    });
    sb.kill('SIGKILL');
    await pruneNetwork();
    out({ ev: 'done' });
    process.exit(0);
  } else if (mode === 'many') {
    const before = flags();
    const sbs = await Promise.all([0, 1, 2, 3].map(() => fakeSandbox()));
    const links = await Promise.all(sbs.map((sb, i) => attachNetwork(plan(), `fwd-many-${i}`, sb.pid)));
    const reached = sbs.map((sb) => connect(sb.pid, worldAddr, 7100));
    await Promise.all(links.map((a) => releaseNetwork(a, { wait: true })));
    await settleNetwork();
    out({ ev: 'many', before, reached, after: flags(), records: readdirSync(process.env.HUTCH_NET_DIR).filter((n) => n.startsWith('forwarding')) });
    for (const sb of sbs) sb.kill('SIGKILL');
    await pruneNetwork();
    process.exit(0);
  } else if (mode === 'hold') {
    const sb = await fakeSandbox();
    const a = await attachNetwork(plan(), 'fwd-hold', sb.pid);
    out({ ev: 'attached', sandboxPid: sb.pid, slot: a.slot, host: a.hostInterface, flags: flags(), sandboxToWorld: connect(sb.pid, worldAddr, 7100) });
    setInterval(() => {}, 60_000);
  } else if (mode === 'prune') {
    const r = await pruneNetwork();
    out({
      ev: 'pruned',
      removed: r.removed,
      restoredForwarding: r.restoredForwarding,
      flags: flags(),
      table: nft(['list', 'table', 'inet', 'hutch']) !== null,
      files: readdirSync(process.env.HUTCH_NET_DIR),
    });
    process.exit(0);
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} catch (e) {
  process.stderr.write(`net-fwd-child ${mode}: ${e?.stack ?? e}\n`);
  process.exit(1);
}
