// Loading the addon and the init (lib/native-load.ts) with real bad binaries: a copy of the
// real addon patched to another architecture or to a glibc from the future, truncated or
// zeroed files, a dynamic init, a missing one. Each is refused by the real dynamic loader or
// by the ELF check before it, and must surface as a HutchError naming the file, this platform
// and the fix, never as the loader's raw message.
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { HutchError } from '../../lib/errors.js';
import { elfMismatch, findAddon, findInit, loadAddon } from '../../lib/native-load.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const addon = findAddon(root);
const init = findInit(addon, root);
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A fresh package directory with prebuilds/linux-<arch>/ holding the given files. */
function pkg(files: Record<string, Buffer>): { dir: string; slot: string } {
  const dir = mkdtempSync(join(tmpdir(), 'hutch-native-load-'));
  dirs.push(dir);
  writeFileSync(join(dir, 'package.json'), '{"name":"hutch-load-test"}');
  const slot = join(dir, 'prebuilds', `linux-${process.arch}`);
  mkdirSync(slot, { recursive: true });
  for (const [name, data] of Object.entries(files)) writeFileSync(join(slot, name), data, { mode: 0o755 });
  return { dir, slot };
}

function otherMachine(elf: Buffer): Buffer {
  const b = Buffer.from(elf);
  b.writeUInt16LE(process.arch === 'x64' ? 183 : 62, 18);
  return b;
}

function refusal(fn: () => unknown): HutchError {
  try {
    fn();
  } catch (e) {
    expect(HutchError.is(e)).toBe(true);
    const h = e as HutchError;
    expect(h.code).toBe('EUNSUPPORTED');
    expect(h.message).toContain(`linux-${process.arch}`);
    expect(h.message).toContain('Fix:');
    expect(h.message).not.toMatch(/^Error: /);
    return h;
  }
  throw new Error('expected a HutchError, got none');
}

describe('loading the addon', () => {
  it('the real addon and init load and pass the checks', () => {
    expect(elfMismatch(addon, 'addon')).toBeUndefined();
    expect(elfMismatch(init, 'init')).toBeUndefined();
    const mod = loadAddon<{ setInit: unknown }>(addon, root);
    expect(typeof mod.setInit).toBe('function');
  });

  it('a package with no binary for this platform names the platform and where it looked', () => {
    const { dir } = pkg({});
    const e = refusal(() => findAddon(dir));
    expect(e.message).toContain('no hutch binary for this platform');
    expect(e.message).toContain(join(dir, 'prebuilds'));
    expect(e.message).toContain('npm rebuild hutch --build-from-source');
  });

  it('an addon of another architecture is refused before dlopen, naming both machines', () => {
    const { slot } = pkg({ 'hutch.glibc.node': otherMachine(readFileSync(addon)) });
    const file = findAddon(dirname(dirname(slot)));
    expect(file).toBe(join(slot, 'hutch.glibc.node'));
    const e = refusal(() => loadAddon(file, root));
    expect(e.path).toBe(file);
    expect(e.message).toContain(file);
    expect(e.message).toMatch(/built for (aarch64|x86-64), and this machine is (x86-64|aarch64)/);
  });

  it('an addon needing a newer glibc is refused by the real loader and says which glibc', () => {
    const elf = readFileSync(addon);
    // A two-digit version the addon requires (e.g. GLIBC_2.34), rewritten in place to GLIBC_2.99:
    // the loader checks each required version by name and hash, so it is not found.
    const m = /GLIBC_2\.\d\d\0/.exec(elf.toString('latin1'));
    expect(m).not.toBeNull();
    const patched = Buffer.from(elf);
    patched.write('GLIBC_2.99', m!.index, 'latin1');
    const { slot } = pkg({ 'hutch.glibc.node': patched });
    const file = join(slot, 'hutch.glibc.node');
    const e = refusal(() => loadAddon(file, root));
    expect(e.message).toContain('needs glibc 2.99 or newer');
    expect(String((e.cause as Error).message)).toContain('GLIBC_2.99');
  });

  it('a truncated or corrupt addon is refused with what is wrong with it', () => {
    const elf = readFileSync(addon);
    const zeroed = Buffer.alloc(elf.length);
    elf.copy(zeroed, 0, 0, 64); // a valid ELF header over nothing
    const { slot } = pkg({ 'short.node': elf.subarray(0, 10), 'zeroed.node': zeroed, 'text.node': Buffer.from('<html>Not Found</html>'.repeat(8)) });
    expect(refusal(() => loadAddon(join(slot, 'short.node'), root)).message).toContain('only 10 bytes');
    expect(refusal(() => loadAddon(join(slot, 'text.node'), root)).message).toContain('no ELF magic');
    const z = refusal(() => loadAddon(join(slot, 'zeroed.node'), root));
    expect(z.message).toContain('the dynamic loader refused it');
    expect(z.cause).toBeInstanceOf(Error);
  });
});

describe('finding the init', () => {
  it('a missing init next to the addon is named', () => {
    const { slot } = pkg({ 'hutch.glibc.node': readFileSync(addon) });
    const e = refusal(() => findInit(join(slot, 'hutch.glibc.node'), root));
    expect(e.path).toBe(join(slot, 'hutch-init'));
    expect(e.message).toContain('it is missing');
  });

  it('an init of another architecture, a dynamic one and a truncated one are refused', () => {
    const wrong = pkg({ 'hutch-init': otherMachine(readFileSync(init)) });
    expect(refusal(() => findInit(join(wrong.slot, 'x.node'), root)).message).toMatch(/built for (aarch64|x86-64)/);
    const dyn = pkg({});
    copyFileSync('/bin/true', join(dyn.slot, 'hutch-init'));
    expect(refusal(() => findInit(join(dyn.slot, 'x.node'), root)).message).toContain('dynamically linked');
    const short = pkg({ 'hutch-init': readFileSync(init).subarray(0, 40) });
    expect(refusal(() => findInit(join(short.slot, 'x.node'), root)).message).toContain('only 40 bytes');
  });
});
