// Dockerfile builds: the parser and word processing (pure), then real builds on busybox with
// RUN in sandboxes, the cache, and refusals that name the Dockerfile line.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HutchError, ImageStore, Sandbox } from '../../lib/index.js';
import { buildCounters } from '../../lib/image/build.js';
import { parseDockerfile, processWord, processWords, keyValues } from '../../lib/image/dockerfile.js';
import type { Progress } from '../../lib/image/types.js';
import { removeStore } from '../helpers/store.js';

const work = mkdtempSync('/tmp/hutch-test-build-');
// The store root is its own temp dir: the sandbox's root must be able to pass through it.
const storeRoot = mkdtempSync('/tmp/hutch-test-build-store-');
afterAll(async () => {
  await Sandbox.settle(); // background teardowns of Sandbox.run still use the store
  removeStore(work);
  removeStore(storeRoot);
});

describe('Dockerfile parsing', () => {
  it('continuations, comments, directives, flags, case', () => {
    const df = parseDockerfile(
      ['# syntax=docker/dockerfile:1', '# escape=`', '', 'from busybox', '# a comment', 'RUN echo a `', '  # inside', '', '  && echo b', 'COPY --chown=1:2 --chmod=644 a b /x/', 'env A=1'].join('\n'),
    );
    expect(df.escape).toBe('`');
    expect(df.instructions.map((i) => [i.line, i.keyword])).toEqual([[4, 'FROM'], [6, 'RUN'], [10, 'COPY'], [11, 'ENV']]);
    expect(df.instructions[1]!.args).toBe('echo a   && echo b');
    expect(df.instructions[2]!.flags).toEqual([{ name: 'chown', value: '1:2' }, { name: 'chmod', value: '644' }]);
    expect(df.instructions[2]!.args).toBe('a b /x/');
  });

  it('substitution where Docker does it', () => {
    const vars = new Map([['A', 'one'], ['E', ''], ['P', '/usr/bin']]);
    const w = (s: string) => processWord(s, vars, '\\');
    expect(w('$A ${A}x')).toBe('one onex');
    expect(w('${B:-dflt} ${E:-empty} ${E-unset} ${A:+set} ${B:+x}')).toBe('dflt empty  set ');
    expect(w("'$A' \"$A\" \\$A")).toBe('$A one $A');
    expect(w('${P}:/bin')).toBe('/usr/bin:/bin');
    expect(w('${B:-${A}}')).toBe('one');
    expect(() => w('${B:?must be set}')).toThrow(/must be set/);
    expect(() => w('"open')).toThrow(/unterminated/);
    expect(processWords('a "b c" $A', vars, '\\', true)).toEqual(['a', 'b c', 'one']);
    const env = parseDockerfile('ENV X=$A Y="two words" Z=${A}z\nENV K v w\nLABEL "l 1"=v').instructions;
    expect(keyValues(env[0]!, vars, '\\', true)).toEqual([['X', 'one'], ['Y', 'two words'], ['Z', 'onez']]);
    expect(keyValues(env[1]!, vars, '\\', true)).toEqual([['K', 'v w']]);
    expect(keyValues(env[2]!, vars, '\\', false)).toEqual([['l 1', 'v']]);
  });

  it('unknown instructions name their line', () => {
    expect(() => parseDockerfile('FROM busybox\n\nFOO bar')).toThrow(/Dockerfile line 3: unknown instruction "FOO"/);
  });
});

// Builds run sandboxes as root or not (docs/rootless.md): nothing to skip for.

describe('build', () => {
  const store = new ImageStore({ root: storeRoot });
  const ctx = join(work, 'ctx');
  mkdirSync(join(ctx, 'tree/sub'), { recursive: true });
  writeFileSync(join(ctx, 'hello.txt'), 'hello from the context\n');
  writeFileSync(join(ctx, 'tree/sub/x'), 'x\n');
  writeFileSync(join(ctx, 'tree/run.sh'), '#!/bin/sh\necho script\n', { mode: 0o755 });
  symlinkSync('sub/x', join(ctx, 'tree/link'));
  // At most three layers in all (busybox + 2): images of four or more do not mount yet, see
  // the last test of this file.
  const dockerfile = [
    'FROM busybox',
    'ARG GREETING=hi',
    'ENV APP=/app \\',
    '    MODE=test',
    'COPY hello.txt tree $APP/',
    'WORKDIR $APP',
    'RUN cat hello.txt > built && ./run.sh >> built && echo "$GREETING from RUN" > /before \\',
    '  && echo app:x:1000:1000::/home/app:/bin/sh >> /etc/passwd && echo app:x:1000: >> /etc/group && chown app /app',
    'USER app',
    'EXPOSE 8080 53/udp',
    'LABEL org.example.name="the app"',
    'CMD ["sh", "-c", "id -u; pwd; cat built; echo $MODE; cat /before; readlink link; touch mine && ls -n mine"]',
  ].join('\n');

  it('FROM busybox + ARG ENV COPY WORKDIR RUN USER EXPOSE LABEL CMD, then runs it', { timeout: 120_000 }, async () => {
    const before = { ...buildCounters };
    const steps: Progress[] = [];
    const t0 = performance.now();
    const img = await store.build({ dockerfile, context: ctx, tag: 'app:1', onProgress: (p) => steps.push(p) });
    console.log(`cold build: ${(performance.now() - t0).toFixed(0)} ms`);
    expect(steps.filter((p) => p.phase === 'step').map((p) => p.current)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(steps.every((p) => p.total === 10)).toBe(true);
    expect(buildCounters.sandboxes - before.sandboxes).toBe(1);
    expect(img.tags).toEqual(['app:1']);
    expect(img.config).toMatchObject({ user: 'app', workingDir: '/app', exposedPorts: [53, 8080], cmd: ['sh', '-c', expect.stringContaining('id -u')] });
    expect(img.config.env).toEqual(expect.arrayContaining(['APP=/app', 'MODE=test']));
    const base = await store.get('busybox');
    expect(img.layers.slice(0, base.layers.length)).toEqual(base.layers);
    expect(img.layers).toHaveLength(base.layers.length + 2); // COPY, RUN (WORKDIR /app exists by then)
    const cfg = JSON.parse(execFileSync('cat', [store.path('blobs', 'sha256', img.id.slice(7))], { encoding: 'utf8' }));
    expect(cfg.config.Labels).toEqual({ 'org.example.name': 'the app' });
    expect(cfg.history.filter((h: { empty_layer?: boolean }) => !h.empty_layer)).toHaveLength(img.layers.length);
    expect(cfg.rootfs.diff_ids).toEqual(img.layers);

    const r = await Sandbox.run({ image: 'app:1', store, encoding: 'utf8' } as Parameters<typeof Sandbox.run>[0]);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^1000\n\/app\nhello from the context\nscript\ntest\nhi from RUN\nsub\/x\n-rw-r--r-- +1 1000 +1000 .* mine\n$/);
  });

  it('an unchanged rebuild does no work; a changed context file busts the cache from its COPY on', { timeout: 120_000 }, async () => {
    const first = await store.get('app:1');
    let before = { ...buildCounters };
    const phases: string[] = [];
    const t0 = performance.now();
    const again = await store.build({ dockerfile, context: ctx, tag: 'app:1', onProgress: (p) => phases.push(p.phase) });
    console.log(`cached build: ${(performance.now() - t0).toFixed(0)} ms`);
    expect(again.id).toBe(first.id);
    expect(buildCounters.sandboxes - before.sandboxes).toBe(0);
    expect(buildCounters.layers - before.layers).toBe(0);
    expect(buildCounters.cacheHits - before.cacheHits).toBe(8); // all but FROM and ARG
    expect(phases.filter((p) => p === 'cached')).toHaveLength(8);

    // A build arg changes what RUN sees: RUN and everything after it rebuild.
    before = { ...buildCounters };
    const other = await store.build({ dockerfile, context: ctx, buildArgs: { GREETING: 'hey' } });
    expect(other.id).not.toBe(first.id);
    expect(buildCounters.cacheHits - before.cacheHits).toBe(3); // ENV, COPY, WORKDIR
    expect(buildCounters.sandboxes - before.sandboxes).toBe(1);

    writeFileSync(join(ctx, 'hello.txt'), 'changed\n');
    before = { ...buildCounters };
    const changed = await store.build({ dockerfile, context: ctx, tag: 'app:2' });
    expect(buildCounters.cacheHits - before.cacheHits).toBe(1); // ENV; COPY misses and so does all after it
    expect(buildCounters.sandboxes - before.sandboxes).toBe(1);
    expect(changed.layers.slice(0, -2)).toEqual(first.layers.slice(0, -2));
    expect(changed.layers.at(-2)).not.toBe(first.layers.at(-2));
    const r = await Sandbox.run({ image: 'app:2', store, command: 'cat built', encoding: 'utf8' });
    expect(r.stdout).toBe('changed\nscript\n');
  });

  it('ADD extracts a local tar; --chown; ENTRYPOINT drops the inherited CMD', { timeout: 60_000 }, async () => {
    const actx = join(work, 'actx');
    mkdirSync(join(actx, 'src/d'), { recursive: true });
    writeFileSync(join(actx, 'src/d/f'), 'from the tar\n');
    execFileSync('tar', ['-C', join(actx, 'src'), '-czf', join(actx, 'a.tar.gz'), 'd']);
    const img = await store.build({
      dockerfile: 'FROM busybox\nADD a.tar.gz /opt/\nADD --chown=1000:1001 --chmod=600 src/d/f /plain\nENTRYPOINT ["cat"]',
      context: actx,
    });
    expect(img.config.entrypoint).toEqual(['cat']);
    expect(img.config.cmd).toBeUndefined();
    const r = await Sandbox.run({ image: img.id, store, command: 'cat /opt/d/f /plain; ls -n /plain', encoding: 'utf8' });
    expect(r.stdout).toMatch(/^from the tar\nfrom the tar\n-rw------- +1 1000 +1001 .*\/plain\n$/);
  });

  it('globs, .dockerignore, several sources into a dest reached through an image symlink', { timeout: 60_000 }, async () => {
    const g = join(work, 'globctx');
    mkdirSync(join(g, 'dir'), { recursive: true });
    for (const f of ['a.txt', 'b.txt', 'skip.log', 'dir/keep', 'dir/drop.log']) writeFileSync(join(g, f), `${f}\n`);
    writeFileSync(join(g, '.dockerignore'), '# logs stay out\n**/*.log\n');
    const df = 'FROM busybox\nRUN mkdir /real && ln -s /real /lnk\nCOPY *.txt dir /lnk/';
    const img = await store.build({ dockerfile: df, context: g });
    const r = await Sandbox.run({ image: img.id, store, command: 'ls -A /real; test -L /lnk && echo link', encoding: 'utf8' });
    expect(r.stdout).toBe('a.txt\nb.txt\nkeep\nlink\n');
    // An ignored file changing does not bust the cache.
    writeFileSync(join(g, 'dir/drop.log'), 'changed\n');
    const before = { ...buildCounters };
    expect((await store.build({ dockerfile: df, context: g })).id).toBe(img.id);
    expect(buildCounters.cacheHits - before.cacheHits).toBe(2);
    const e = await store.build({ dockerfile: 'FROM busybox\nCOPY a.txt b.txt /x', context: g }).catch((x: unknown) => x);
    expect((e as Error).message).toMatch(/line 2 \(COPY\): with more than one source the destination must be a directory/);
    const e2 = await store.build({ dockerfile: 'FROM busybox\nCOPY skip.log /x', context: g }).catch((x: unknown) => x);
    expect((e2 as Error).message).toMatch(/line 2 \(COPY\): "skip.log" is excluded by .dockerignore/);
  });

  it('a failing RUN is EBUILD with the line, the exit code and the stderr tail', async () => {
    const e = await store.build({ dockerfile: 'FROM busybox\nENV A=1\n\nRUN echo oops >&2; exit 3' }).catch((x: unknown) => x);
    expect(HutchError.is(e)).toBe(true);
    expect((e as HutchError).code).toBe('EBUILD');
    expect((e as HutchError).message).toMatch(/^Dockerfile line 4 \(RUN\): .*exited with code 3:\noops$/);
  });

  it('bad Dockerfiles name the line', async () => {
    const cases: [string, RegExp][] = [
      ['RUN true', /line 1: no FROM/],
      ['ARG V=1\nENV A=$V\nFROM busybox', /line 2 \(ENV\): the first instruction must be FROM/],
      ['', /no FROM/],
      ['FROM busybox\nHEALTHCHECK CMD true', /line 2 \(HEALTHCHECK\): HEALTHCHECK is not supported/],
      ['FROM busybox\nVOLUME /data', /line 2 \(VOLUME\)/],
      ['FROM busybox\nONBUILD RUN true', /line 2 \(ONBUILD\)/],
      ['FROM busybox AS a\nFROM busybox\nCOPY --from=a / /', /line 2 \(FROM\): multi-stage/],
      ['FROM busybox\nCOPY --from=x /a /b', /line 2 \(COPY\): --from is not supported/],
      ['FROM busybox\nRUN cat <<EOF\nhello\nEOF', /line 2: heredocs/],
      ['FROM busybox\nADD https://example.com/x /x', /line 2 \(ADD\): .*remote sources/],
      ['FROM busybox\nENV A=${B:?needs B}', /line 2 \(ENV\): B: needs B/],
      ['FROM busybox\nEXPOSE http', /line 2 \(EXPOSE\)/],
      ['FROM nosuchimage', /line 1 \(FROM\): no image "nosuchimage"/],
      ['FROM busybox\nRUN --mount=type=cache,target=/x true', /line 2 \(RUN\): the flag --mount/],
      ['FROM busybox\nCOPY x /x', /line 2 \(COPY\): COPY needs a build context/],
      ['FROM scratch\nRUN true', /line 2 \(RUN\): RUN needs a base image/],
    ];
    for (const [text, re] of cases) {
      const e = await store.build({ dockerfile: text }).catch((x: unknown) => x);
      expect(HutchError.is(e) && e.code, text).toBe('EBUILD');
      expect((e as Error).message, text).toMatch(re);
    }
    await expect(store.build({ dockerfile: 'FROM busybox', tag: 'host' })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(store.build({ dockerfile: 'FROM busybox', context: join(work, 'nope') })).rejects.toMatchObject({ code: 'EINVAL' });
  });

  it('COPY stays inside the context: no .., no symlink leading out', async () => {
    const c = join(work, 'confined');
    mkdirSync(join(c, 'inside'), { recursive: true });
    writeFileSync(join(work, 'secret'), 'secret\n');
    writeFileSync(join(c, 'inside/ok'), 'ok\n');
    symlinkSync('../secret', join(c, 'out'));
    symlinkSync('/etc', join(c, 'etc'));
    symlinkSync('inside', join(c, 'in'));
    for (const [src, re] of [
      ['../secret', /outside the build context/],
      ['inside/../../secret', /outside the build context/],
      ['out', /leads out of the build context/],
      ['etc/passwd', /leads out of the build context/],
      ['o*', /leads out of the build context/],
    ] as const) {
      const e = await store.build({ dockerfile: `FROM busybox\nCOPY ${src} /x`, context: c }).catch((x: unknown) => x);
      expect(HutchError.is(e) && e.code, src).toBe('EBUILD');
      expect((e as Error).message, src).toMatch(new RegExp(`^Dockerfile line 2 \\(COPY\\): .*${re.source}`));
    }
    // A symlink that stays inside is followed; /x is the file.
    const img = await store.build({ dockerfile: 'FROM busybox\nCOPY in/ok /x', context: c });
    expect((await Sandbox.run({ image: img.id, store, command: 'cat /x', encoding: 'utf8' })).stdout).toBe('ok\n');
  });

  // A single fsconfig string holds 256 bytes (four layer names): layers go one by one.
  it('an image of five layers built FROM a built image runs', { timeout: 60_000 }, async () => {
    const img = await store.build({ dockerfile: 'FROM app:1\nUSER root\nWORKDIR /new\nRUN echo deep > /new/f', context: ctx });
    expect(img.layers).toHaveLength(5);
    const r = await Sandbox.run({ image: img.id, store, command: 'cat /new/f /app/built', encoding: 'utf8' });
    expect(r.stdout).toBe('deep\nhello from the context\nscript\n');
  });
});
