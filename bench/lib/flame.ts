/**
 * Flame graphs from `perf script` output: fold the sampled stacks (root first, one line per
 * distinct stack with its count, the format of Brendan Gregg's stackcollapse) and draw them as
 * a self-contained SVG (no script, a <title> per frame for its name and share). Neither the
 * FlameGraph scripts nor inferno is packaged for this machine (Debian or npm), and the npm
 * flame graph tools (0x, clinic) sample only JavaScript, so this file does the two small steps.
 */

/** One folded stack: frames from the root (the command name) to the leaf. */
export type Folded = Map<string, number>;

/** Frame name: the symbol without its offset; an unresolved one named by its object file. */
function frameName(line: string): string | null {
  const m = /^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$/.exec(line);
  if (!m) return null;
  let sym = m[1]!.replace(/\+0x[0-9a-f]+$/, '');
  const dso = m[2]!;
  if (sym === '[unknown]' || /^0x[0-9a-f]+$/.test(sym)) {
    const base = dso.slice(dso.lastIndexOf('/') + 1);
    sym = `[${base === '[unknown]' ? 'unknown' : base}]`;
  }
  return sym.replaceAll(';', ':');
}

/** Folds `perf script` text (with call graphs, -g). `group` renames a sample's root (e.g. by comm). */
export function foldPerfScript(text: string, group: (comm: string) => string = (c) => c): Folded {
  const out: Folded = new Map();
  let comm: string | null = null;
  let frames: string[] = [];
  const flush = () => {
    if (comm !== null) {
      const key = [group(comm), ...frames.reverse()].join(';');
      out.set(key, (out.get(key) ?? 0) + 1);
    }
    comm = null;
    frames = [];
  };
  for (const line of text.split('\n')) {
    if (line.trim() === '') {
      flush();
      continue;
    }
    if (!line.startsWith('\t') && !line.startsWith(' ')) {
      flush();
      // "<comm> <pid>[/<tid>] [cpu] <time>: <period> <event>:" — comm may hold spaces.
      const m = /^(.*?)\s+\d+(?:\/\d+)?\s+(?:\[\d+\]\s+)?\d+\.\d+:/.exec(line);
      comm = m ? m[1]!.trim() : line.trim().split(/\s+/)[0]!;
      continue;
    }
    const f = frameName(line);
    if (f !== null) frames.push(f);
  }
  flush();
  return out;
}

/** The folded stacks as text, one `a;b;c count` line each. */
export function foldedText(f: Folded): string {
  return [...f].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([k, v]) => `${k} ${v}`).join('\n') + '\n';
}

interface Node {
  name: string;
  value: number;
  children: Map<string, Node>;
}

function tree(f: Folded): Node {
  const root: Node = { name: 'all', value: 0, children: new Map() };
  for (const [stack, count] of f) {
    root.value += count;
    let n = root;
    for (const name of stack.split(';')) {
      let c = n.children.get(name);
      if (!c) n.children.set(name, (c = { name, value: 0, children: new Map() }));
      c.value += count;
      n = c;
    }
  }
  return root;
}

function esc(s: string): string {
  return s.replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c]!);
}

/** A warm colour per name (stable across graphs), kernel frames orange, JS frames green. */
function colour(name: string): string {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
  const v = (h % 1000) / 1000;
  if (name.startsWith('JS:')) return `rgb(${Math.round(80 + 60 * v)},${Math.round(180 + 50 * v)},${Math.round(80 + 40 * v)})`;
  if (/^[a-z_0-9.]+$/.test(name) && !name.startsWith('0x')) return `rgb(${Math.round(220 + 30 * v)},${Math.round(120 + 60 * v)},${Math.round(40 + 30 * v)})`;
  return `rgb(${Math.round(225 + 30 * v)},${Math.round(80 + 110 * v)},${Math.round(50 + 40 * v)})`;
}

/** Draws a flame graph (root at the bottom) of `f`; frames narrower than `minPx` are left out. */
export function flameSvg(f: Folded, title: string, subtitle = '', width = 1200, minPx = 1): string {
  const root = tree(f);
  const rowH = 16;
  let depth = 0;
  const walk = (n: Node, d: number) => {
    depth = Math.max(depth, d);
    for (const c of n.children.values()) if ((c.value / root.value) * width >= minPx) walk(c, d + 1);
  };
  walk(root, 0);
  const top = 44;
  const height = top + (depth + 1) * rowH + 10;
  const px = width / Math.max(1, root.value);
  const rects: string[] = [];
  const draw = (n: Node, x: number, d: number) => {
    const w = n.value * px;
    if (w < minPx) return;
    const y = height - 10 - (d + 1) * rowH;
    const pct = ((100 * n.value) / root.value).toFixed(2);
    const chars = Math.floor((w - 4) / 6.5);
    const label = chars >= 3 ? (n.name.length > chars ? n.name.slice(0, chars - 2) + '..' : n.name) : '';
    rects.push(
      `<g><title>${esc(n.name)} (${n.value} samples, ${pct}%)</title><rect x="${x.toFixed(2)}" y="${y}" width="${w.toFixed(2)}" height="${rowH - 1}" fill="${d === 0 ? '#ddd' : colour(n.name)}" rx="2"/>` +
        (label ? `<text x="${(x + 3).toFixed(2)}" y="${y + 11.5}">${esc(label)}</text>` : '') +
        '</g>',
    );
    let cx = x;
    for (const c of [...n.children.values()].sort((a, b) => (a.name < b.name ? -1 : 1))) {
      draw(c, cx, d + 1);
      cx += c.value * px;
    }
  };
  draw(root, 0, 0);
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="monospace" font-size="11">\n` +
    `<rect width="100%" height="100%" fill="#fff"/>\n` +
    `<text x="${width / 2}" y="18" text-anchor="middle" font-size="15">${esc(title)}</text>\n` +
    `<text x="${width / 2}" y="36" text-anchor="middle" fill="#555">${esc(subtitle)}</text>\n` +
    rects.join('\n') +
    '\n</svg>\n'
  );
}

/**
 * Shares of the samples by phase: the first pattern (tested against the whole folded stack)
 * that matches names a sample's phase; the rest is `other`.
 */
export function phaseShares(f: Folded, phases: readonly { name: string; test: RegExp }[]): { name: string; samples: number; share: number }[] {
  const counts = new Map<string, number>(phases.map((p) => [p.name, 0]));
  counts.set('other', 0);
  let total = 0;
  for (const [stack, n] of f) {
    total += n;
    const p = phases.find((ph) => ph.test.test(stack));
    const k = p ? p.name : 'other';
    counts.set(k, counts.get(k)! + n);
  }
  return [...counts].map(([name, samples]) => ({ name, samples, share: total ? samples / total : 0 }));
}
