import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/** Debian's python3, which reads xattrs (Node cannot); undefined when it is missing. */
export const PY = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : undefined;

/** The value of `name` on `path` (never followed), null when it has none. Needs PY. */
export function xattr(path: string, name: string): string | null {
  const out = execFileSync(PY!, ['-c', `import os,sys\ntry:\n print(os.getxattr(sys.argv[1], sys.argv[2], follow_symlinks=False).decode())\nexcept OSError:\n print('<none>')`, path, name], { encoding: 'utf8' }).trim();
  return out === '<none>' ? null : out;
}
