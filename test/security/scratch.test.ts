import { it } from 'vitest';
import { Sandbox } from '../../lib/index.js';
it('scratch', async () => {
  const sb = await Sandbox.create({ image: 'busybox' });
  const r = await sb.exec('grep -E "Cap|NoNew|Seccomp|Uid|Gid" /proc/self/status; cat /proc/self/uid_map; ls -l /proc/self/fd/; ls -la /proc/1/fd/ 2>&1; ls -l /proc/1/exe; id; cat /proc/1/environ; echo; ulimit -n; mount | head -40', { encoding: 'utf8' });
  console.log(r.stdout, r.stderr);
  await sb.destroy();
});
