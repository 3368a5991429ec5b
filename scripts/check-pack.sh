#!/bin/sh
# The package as a user gets it: `npm pack`, then `npm install <tarball>` into a fresh project
# on a host without any compiler, make or python (a private mount namespace with a failing stub
# bind-mounted over each of them), then a sandbox from JavaScript, from strict TypeScript
# (compiled against the shipped .d.ts; a wrong option type must be a compile error) and from
# the CLI (hutch doctor, hutch run). Also: the tarball holds what users need and nothing else,
# and with no matching prebuild (LIBC=musl) the install fails naming the missing tools.
# Prints the tarball size, the installed size and the install time. Needs root (unshare -m,
# sandboxes) and the prebuilds (npm run prebuild).
# Usage: scripts/check-pack.sh   (HUTCH_ROOT: the store the check's sandboxes use)
set -eu
cd "$(dirname "$0")/.."
repo=$(pwd)
tmp=$(mktemp -d /tmp/hutch-check-pack.XXXXXX)
export HUTCH_ROOT="${HUTCH_ROOT:-$tmp/store}"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "check-pack: FAIL: $*" >&2; exit 1; }
start=$(date +%s%N)
since() { echo "   ($(( ($(date +%s%N) - start) / 1000000 )) ms since the start)"; }

echo "== npm pack"
# What prepack checks (prebuilds there and current), and dist/ current, without prepack's full
# tsc run (CI compiled just before; a stale dist/ fails here instead).
sh scripts/prebuild.sh --check
stale=$(find lib bin -name '*.ts' -newer dist/lib/index.js | head -1)
[ -z "$stale" ] || fail "dist/ is older than $stale: run npx tsc -p tsconfig.json"
tarball=$(npm pack --ignore-scripts --pack-destination "$tmp" --silent 2>/dev/null | tail -1)
tarball=$tmp/$tarball
[ -f "$tarball" ] || fail "npm pack made no tarball"
tar -tzf "$tarball" | sort >"$tmp/contents"
for f in prebuilds/linux-x64/hutch.glibc.node prebuilds/linux-x64/hutch-init prebuilds/linux-arm64/hutch.glibc.node \
  prebuilds/linux-arm64/hutch-init prebuilds/linux-x64/templates/hutch_template.node prebuilds/linux-x64/templates/libhutch-zygote.so \
  prebuilds/linux-arm64/templates/hutch_template.node prebuilds/linux-arm64/templates/libhutch-zygote.so prebuilds/linux-x64/templates/hutch_zygote_node.node \
  prebuilds/linux-arm64/templates/hutch_zygote_node.node addon/zygote/zygote.py addon/zygote/zygote.cjs dist/lib/index.js dist/lib/index.d.ts dist/bin/hutch.js binding.gyp addon/addon.cc \
  addon/init/init.c scripts/install.mjs scripts/build-init.sh README.md docs/getting-started.md; do
  grep -qx "package/$f" "$tmp/contents" || fail "the tarball lacks $f"
done
# No tests, TypeScript sources, source maps, examples, CI or dev tooling; tsconfig.json's absence
# is also how scripts/install.mjs tells an installed package from a checkout.
extra=$(grep -E '^package/(test/|lib/|bin/|bench/|examples/|\.ci/|dist/test|dist/examples|tsconfig|vitest|typedoc|scripts/(prebuild|check-|gen-))|\.map$|\.ts$' "$tmp/contents" | grep -v '\.d\.ts$' || true)
[ -z "$extra" ] || fail "the tarball holds files users do not need: $extra"
echo "   $(wc -l <"$tmp/contents") files, $(du -k "$tarball" | cut -f1) KiB tarball"; since

# A stub for every compiler, linker driver, make and python: what runs it fails loudly.
printf '#!/bin/sh\necho "check-pack: $0 is hidden (no toolchain on this host)" >&2\nexit 127\n' >"$tmp/hidden"
chmod +x "$tmp/hidden"
hide=""
for d in $(echo "$PATH:/usr/bin:/usr/local/bin" | tr ':' ' '); do
  for f in "$d"/cc "$d"/c++ "$d"/gcc* "$d"/g++* "$d"/cpp* "$d"/*-gcc* "$d"/*-g++* "$d"/clang* "$d"/musl-gcc "$d"/make \
    "$d"/gmake "$d"/python "$d"/python3* "$d"/ld "$d"/ld.bfd "$d"/ld.gold "$d"/*-ld "$d"/as "$d"/*-as; do
    [ -e "$f" ] && [ ! -d "$f" ] && hide="$hide $f"
  done
done
# Runs "$@" with all of them hidden, in a private mount namespace (the host keeps its tools).
hidden() {
  unshare -m -- sh -c 'mount --make-rprivate / && for f in $HIDE; do mount --bind "$STUB" "$f" || exit 1; done && exec "$@"' \
    sh "$@"
}
export HIDE="$hide" STUB="$tmp/hidden"
for t in cc c++ gcc g++ make python3; do
  hidden sh -c "$t --version" 2>&1 | grep -q 'is hidden' || fail "$t still runs with the toolchain hidden"
done

app=$tmp/app
mkdir -p "$app"
printf '{ "name": "hutch-pack-check", "private": true, "type": "module" }\n' >"$app/package.json"
echo "== npm install <tarball>, toolchain hidden"
t0=$(date +%s%N)
hidden sh -c "cd '$app' && npm install --no-audit --no-fund --prefer-offline '$tarball'" >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log"; fail "npm install of the tarball failed with the toolchain hidden"; }
t1=$(date +%s%N)
! grep -q 'is hidden' "$tmp/install.log" || { cat "$tmp/install.log"; fail "the install ran a compiler, make or python"; }
[ ! -e "$app/node_modules/hutch/build" ] || fail "the install built from source"
for p in node-gyp node-addon-api typescript prebuildify; do
  [ ! -e "$app/node_modules/$p" ] || fail "a consumer's install pulled $p"
done
echo "   $(( (t1 - t0) / 1000000 )) ms; node_modules $(du -sk "$app/node_modules" | cut -f1) KiB, of which hutch $(du -sk "$app/node_modules/hutch" | cut -f1) KiB; packages: $(ls "$app/node_modules" | grep -v '^\.' | tr '\n' ' ')"

echo "== a sandbox from JavaScript"
cat >"$app/run.mjs" <<'EOF'
import { Sandbox, HutchError } from 'hutch';
const r = await Sandbox.run({ command: ['sh', '-c', 'echo js-ok; id -u'], encoding: 'utf8', limits: { pids: 16, timeoutMs: 10000 } });
if (r.exitCode !== 0 || !r.stdout.startsWith('js-ok\n')) throw new Error(`unexpected result: ${JSON.stringify(r)}`);
if (typeof HutchError.is !== 'function') throw new Error('HutchError.is missing');
console.log('   js: ok');
EOF
hidden sh -c "cd '$app' && node run.mjs" || fail "the JavaScript sandbox failed"
since

echo "== a template from the installed package (its binaries from prebuilds/; python3 from the host image)"
cat >"$app/template.mjs" <<'EOF'
import { Sandbox } from 'hutch';
const t = await Sandbox.template({ zygote: 'python', preload: ['json'], limits: { pids: 16, timeoutMs: 10000 } });
try {
  const r = await t.run(['python3', '-c', 'import json; print(json.dumps("tpl-ok"))'], { encoding: 'utf8' });
  if (r.exitCode !== 0 || r.stdout !== '"tpl-ok"\n') throw new Error(`unexpected result: ${JSON.stringify(r)}`);
} finally {
  await t.close();
}
console.log('   template: ok');
EOF
(cd "$app" && node template.mjs) || fail "a template from the installed package failed"
since

echo "== a sandbox from strict TypeScript (compiled against the shipped .d.ts)"
cat >"$app/tsconfig.json" <<EOF
{ "compilerOptions": { "target": "ES2022", "module": "NodeNext", "moduleResolution": "NodeNext", "strict": true,
  "skipLibCheck": false, "typeRoots": ["$repo/node_modules/@types"], "types": ["node"],
  "lib": ["ES2022", "ESNext.Disposable"] }, "files": ["good.ts", "bad.ts", "bad2.ts"] }
EOF
cat >"$app/good.ts" <<'EOF'
import { Sandbox, HutchError, type SandboxOptions, type ExecResult } from 'hutch';
const options: SandboxOptions = { image: 'host', limits: { memory: '64MiB', pids: 16, timeoutMs: 10000 } };
const r: ExecResult = await Sandbox.run({ ...options, command: ['echo', 'ts-ok'], encoding: 'utf8' });
const out: string = typeof r.stdout === 'string' ? r.stdout : r.stdout.toString();
if (r.exitCode !== 0 || out !== 'ts-ok\n') throw new HutchError('EINVAL', `unexpected result ${JSON.stringify(r)}`);
console.log('   ts: ok');
EOF
cat >"$app/bad.ts" <<'EOF'
import { Sandbox } from 'hutch';
export async function wrong(): Promise<void> {
  // A wrong option type must not compile: were it accepted, this directive would be unused (an error).
  // @ts-expect-error limits.pids is a number
  await Sandbox.run({ command: ['true'], limits: { pids: 'many' } });
  // @ts-expect-error no such option
  await Sandbox.run({ command: ['true'], nosuchoption: 1 });
}
EOF
# bad2.ts is bad.ts without the directives: each wrong option is then a compile error. One tsc
# run checks all three files with skipLibCheck off, so hutch's own .d.ts files are checked too.
# (tar's dependency minizlib names zlib's zstd classes, which @types/node before 22 lacks: those
# errors are tar's, not hutch's, and are set aside; consumers' usual skipLibCheck hides them.)
sed '/@ts-expect-error/d' "$app/bad.ts" >"$app/bad2.ts"
hidden sh -c "cd '$app' && node '$repo/node_modules/typescript/bin/tsc' -p tsconfig.json" >"$tmp/tsc.log" 2>&1 || true
grep 'error TS' "$tmp/tsc.log" | grep -v 'node_modules/minizlib/' >"$tmp/tsc-errors" || true
if grep -v '^bad2\.ts' "$tmp/tsc-errors" | grep -q . || [ "$(grep -c '^bad2\.ts' "$tmp/tsc-errors")" != 2 ]; then
  cat "$tmp/tsc.log"; fail "the strict consumer: expected exactly the 2 errors of bad2.ts (wrong option types), no other"
fi
[ -f "$app/good.js" ] || fail "tsc emitted no good.js"
hidden sh -c "cd '$app' && node good.js" || fail "the TypeScript sandbox failed"
since

echo "== the CLI: npx hutch doctor, npx hutch run"
hidden sh -c "cd '$app' && npx hutch doctor" >"$tmp/doctor.log" 2>&1 || { cat "$tmp/doctor.log"; fail "hutch doctor failed"; }
grep -q 'this host can run hutch sandboxes' "$tmp/doctor.log" || fail "hutch doctor did not say the host can run sandboxes"
out=$(hidden sh -c "cd '$app' && npx hutch run -- echo cli-ok") || fail "hutch run failed"
[ "$out" = cli-ok ] || fail "hutch run printed '$out'"
echo "   cli: ok"; since

echo "== installed with --ignore-scripts (as npm may do for unapproved install scripts): still runs"
mkdir -p "$tmp/app3"
cp "$app/package.json" "$app/run.mjs" "$tmp/app3/"
hidden sh -c "cd '$tmp/app3' && npm install --no-audit --no-fund --prefer-offline --ignore-scripts '$tarball' >/dev/null 2>&1 && node run.mjs" ||
  fail "the package does not run when installed with --ignore-scripts"

echo "== no matching prebuild (LIBC=musl) and no toolchain: the install says what is missing"
mkdir -p "$tmp/app2"
printf '{ "name": "hutch-pack-check2", "private": true }\n' >"$tmp/app2/package.json"
if hidden sh -c "cd '$tmp/app2' && LIBC=musl npm install --no-audit --no-fund --prefer-offline --foreground-scripts '$tarball'" >"$tmp/install2.log" 2>&1; then
  fail "the install succeeded with no prebuild and no toolchain"
fi
for want in 'no prebuilt binary for linux-' 'C++17 compiler' 'make' 'python3' 'node-addon-api' 'apt-get install'; do
  grep -q "$want" "$tmp/install2.log" || { cat "$tmp/install2.log"; fail "the failed install's message does not name: $want"; }
done
echo "   fallback message: ok"; since
echo "check-pack: ok"
