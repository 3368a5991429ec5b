/** The phases of a start, as patterns over a folded perf stack (bench/lib/flame.ts phaseShares). */
export const START_PHASES: readonly { name: string; test: RegExp }[] = [];
