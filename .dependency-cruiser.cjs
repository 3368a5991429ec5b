/**
 * The layers of lib/ and the direction of their imports (issue 14, docs/architecture.md):
 *
 *   base (errors, units, conventions, random names, the Limits type) → native → concerns (cgroup | network |
 *   seccomp | idmap | disk | image core: the ImageStore and its parts, commit) → options → plan →
 *   runtime (start, sandbox, process, warm, pool) → image build (which runs sandboxes; it
 *   registers itself on the store's hooks), index, CLI
 *
 * A module may import from its own layer or any layer to its left, never to its right, and
 * no import cycle is allowed, type-only imports included (`tsPreCompilationDeps`). Checked by
 * `npm run check:deps` in CI (.ci/run).
 */
const LAYERS = [
  ['base', ['^lib/(errors|units|conventions|validators|trace|teardowns|protocol|limit-types|random)\\.ts$']],
  ['native', ['^lib/(native|native-load|setup-errors|child-setup)\\.ts$']],
  ['concerns', [
    '^lib/cgroup/', '^lib/network/', '^lib/seccomp/', '^lib/host/', '^lib/(idrange|identity|disk|capabilities|host)\\.ts$',
    // image core: the ImageStore (store.ts) and the parts it passes a StoreContext (context.ts);
    // commit needs nothing above; build (top) reaches the store only through hooks.ts
    '^lib/image/(layout|blob|builtin|import|lock|oci|owner|registry|sparse|tar|tarwriter|types|view|hooks|dockerfile|store|context|records|spares|gc|operations|background|commit|build-options)\\.ts$',
  ]],
  ['options', ['^lib/(options|limits)\\.ts$']],
  ['plan', ['^lib/plan\\.ts$', '^lib/plan/']],
  ['runtime', ['^lib/(start|sandbox|process|process-types|warm|pool|pause)\\.ts$', '^lib/runtime/']],
  ['top', ['^lib/image/build\\.ts$', '^lib/image/build/', '^lib/(prune|index)\\.ts$', '^lib/template/', '^bin/']],
];

const anyOf = (res) => `(${res.join('|')})`;
const forbidden = [
  {
    name: 'no-circular',
    comment: 'No import cycle, type-only imports included: layers point one way (issue 14).',
    severity: 'error',
    from: {},
    to: { circular: true },
  },
  {
    name: 'no-unlayered',
    comment: 'Every module of lib/ belongs to a layer: add a new one to LAYERS in .dependency-cruiser.cjs.',
    severity: 'error',
    from: { path: '^lib/', pathNot: anyOf(LAYERS.flatMap(([, res]) => res)) },
    to: {},
  },
];
LAYERS.forEach(([name, from], i) => {
  const above = LAYERS.slice(i + 1).flatMap(([, res]) => res);
  if (above.length === 0) return;
  forbidden.push({
    name: `layer-${name}`,
    comment: `${name} imports only from its own layer or the ones below (${LAYERS.slice(0, i + 1).map(([n]) => n).join(', ')}).`,
    severity: 'error',
    from: { path: anyOf(from) },
    to: { path: anyOf(above) },
  });
});

module.exports = {
  forbidden,
  options: {
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(node_modules|dist|build)/' },
    detectJSDocImports: false,
  },
};
