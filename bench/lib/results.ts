/** What a run produced, section by section; report.ts renders it. */
import type { Summary } from './stats.js';
import type { Machine } from './machine.js';

export interface LatencyRow {
  name: string;
  what: string;
  summary: Summary;
  errors: string[];
  dropped: boolean;
}

export interface LatencySection {
  kind: 'latency';
  title: string;
  description: string;
  warmup: number;
  rows: LatencyRow[];
  notes: string[];
}

export interface ThroughputRow {
  subject: string;
  concurrency: number;
  completed: number;
  failures: number;
  seconds: number;
  perSecond: number;
  latency: Summary;
}

export interface ThroughputSection {
  kind: 'throughput';
  title: string;
  description: string;
  rows: ThroughputRow[];
  notes: string[];
}

export interface MemorySection {
  kind: 'memory';
  title: string;
  description: string;
  sandboxes: number;
  createSeconds: number;
  destroySeconds: number;
  /** Label -> per-sandbox bytes. */
  perSandbox: { label: string; bytes: number; how: string }[];
  notes: string[];
}

export interface CurvePoint {
  x: string;
  rows: LatencyRow[];
}

export interface CurveSection {
  kind: 'curve';
  title: string;
  description: string;
  xLabel: string;
  points: CurvePoint[];
  notes: string[];
}

/** A template's case against its cold peer (bench/lib/templates.ts). */
export interface TemplateRow {
  name: string;
  /** The cold peer: Sandbox.run or Sandbox.create. */
  peer: string;
  /** 'ms': p50 latencies (lower is better); '/s': runs per second (higher is better). */
  unit: 'ms' | '/s';
  cold: number;
  template: number;
  /** Issue 16's goal for template ÷ cold (at most), or null: reported only. */
  goal: number | null;
}

/** Memory per idle fork beyond the template, MiB per fork (bench/lib/templates.ts). */
export interface ForkMemory {
  zygote: string;
  forks: number;
  addedMiB: number;
  summedPssMiB: number;
  anonMiB: number;
  ussMiB: number;
  pageTablesMiB: number;
  zygoteMiB: number;
}

export interface TemplatesSection {
  kind: 'templates';
  title: string;
  description: string;
  rows: TemplateRow[];
  memory: ForkMemory[];
  notes: string[];
}

export type Section = LatencySection | ThroughputSection | MemorySection | CurveSection | TemplatesSection;

export interface RunResults {
  startedAt: Date;
  finishedAt: Date;
  command: string;
  machine: Machine;
  loadAtEnd: string;
  sections: Section[];
  skipped: string[];
}
