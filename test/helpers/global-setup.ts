import { leftovers } from './leaks.js';

export async function teardown(): Promise<void> {
  const left = await leftovers();
  if (left.length > 0) {
    throw new Error(`hutch left these behind after the suite:\n  ${left.join('\n  ')}`);
  }
}
