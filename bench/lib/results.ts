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

export type Section = LatencySection | ThroughputSection | MemorySection | CurveSection;

export interface RunResults {
  startedAt: Date;
  finishedAt: Date;
  command: string;
  machine: Machine;
  loadAtEnd: string;
  sections: Section[];
  skipped: string[];
}
