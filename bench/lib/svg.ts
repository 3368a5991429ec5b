/**
 * A hand-written SVG of the latency distributions: one row per peer (and per cost-curve
 * point), on a log time axis. Thin line min..p99, box p25..p75, thick tick at p50, small tick
 * at p90, dot at max.
 */
import type { LatencyRow, RunResults } from './results.js';
import { ms } from './stats.js';

interface Group {
  title: string;
  rows: LatencyRow[];
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function colour(name: string): string {
  if (name === 'spawn') return '#7f7f7f';
  if (name.startsWith('hutch') || name === 'pool-run' || name === 'exec' || /layers|MiB|live/.test(name)) return '#1f77b4';
  if (name === 'bwrap') return '#ff7f0e';
  return '#2ca02c';
}

export function renderSvg(r: RunResults): string {
  const groups: Group[] = [];
  for (const s of r.sections) {
    if (s.kind === 'latency') groups.push({ title: s.title, rows: s.rows.filter((x) => x.summary.n > 0) });
    if (s.kind === 'curve') {
      groups.push({
        title: s.title,
        rows: s.points.flatMap((p) => p.rows.filter((x) => x.summary.n > 0).map((x) => ({ ...x, name: p.rows.length > 1 ? `${p.x}: ${x.name}` : x.name }))),
      });
    }
  }
  const all = groups.flatMap((g) => g.rows);
  const W = 960;
  const left = 190;
  const right = 170;
  const plotW = W - left - right;
  const rowH = 22;
  const headH = 26;
  const top = 48;
  const H = top + groups.length * headH + all.length * rowH + 40;
  if (all.length === 0) return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="60"><text x="10" y="30" font-family="sans-serif">no latency data</text></svg>\n`;
  const lo = Math.min(...all.map((x) => x.summary.min));
  const hi = Math.max(...all.map((x) => x.summary.p99));
  const lmin = Math.floor(Math.log10(Math.max(lo, 0.01)));
  const lmax = Math.ceil(Math.log10(Math.max(hi, lo * 1.01)));
  const X = (v: number) => left + ((Math.log10(Math.max(v, 10 ** lmin)) - lmin) / (lmax - lmin)) * plotW;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="#fff"/>`);
  out.push(`<text x="${left}" y="20" font-size="14" font-weight="bold">${esc(`hutch startup latency, ${r.machine.host}, ${r.startedAt.toISOString().slice(0, 10)}`)}</text>`);
  out.push(`<text x="${left}" y="38" fill="#555">${esc('ms, log scale · line min–p99 · box p25–p75 · thick tick p50 · thin tick p90 · dot max (when off the axis: not drawn)')}</text>`);
  const axisBottom = H - 30;
  for (let e = lmin; e <= lmax; e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v < 10 ** lmin || v > 10 ** lmax) continue;
      const x = X(v);
      out.push(`<line x1="${x.toFixed(1)}" y1="${top}" x2="${x.toFixed(1)}" y2="${axisBottom}" stroke="${m === 1 ? '#ccc' : '#eee'}"/>`);
      out.push(`<text x="${x.toFixed(1)}" y="${axisBottom + 14}" text-anchor="middle" fill="#555">${esc(v >= 1 ? String(v) : v.toString())}</text>`);
    }
  }
  out.push(`<text x="${left + plotW / 2}" y="${axisBottom + 27}" text-anchor="middle" fill="#555">milliseconds</text>`);
  let y = top;
  for (const g of groups) {
    out.push(`<text x="8" y="${y + 17}" font-weight="bold">${esc(g.title)}</text>`);
    y += headH;
    for (const row of g.rows) {
      const s = row.summary;
      const cy = y + rowH / 2;
      const c = colour(row.name);
      out.push(`<text x="${left - 8}" y="${cy + 4}" text-anchor="end">${esc(row.name)}</text>`);
      out.push(`<line x1="${X(s.min).toFixed(1)}" y1="${cy}" x2="${X(s.p99).toFixed(1)}" y2="${cy}" stroke="${c}" stroke-width="1.5"/>`);
      out.push(`<rect x="${X(s.p25).toFixed(1)}" y="${cy - 6}" width="${Math.max(1, X(s.p75) - X(s.p25)).toFixed(1)}" height="12" fill="${c}" fill-opacity="0.35" stroke="${c}"/>`);
      out.push(`<line x1="${X(s.p50).toFixed(1)}" y1="${cy - 8}" x2="${X(s.p50).toFixed(1)}" y2="${cy + 8}" stroke="#000" stroke-width="2.5"/>`);
      out.push(`<line x1="${X(s.p90).toFixed(1)}" y1="${cy - 5}" x2="${X(s.p90).toFixed(1)}" y2="${cy + 5}" stroke="#000" stroke-width="1"/>`);
      if (s.max <= 10 ** lmax) out.push(`<circle cx="${X(s.max).toFixed(1)}" cy="${cy}" r="2" fill="${c}"/>`);
      out.push(`<text x="${left + plotW + 8}" y="${cy + 4}" fill="#333">${esc(`p50 ${ms(s.p50)} · p99 ${ms(s.p99)}`)}</text>`);
      y += rowH;
    }
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}
