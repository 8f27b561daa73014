// fuzz.test.ts - the KVCache fuzzer (fuzz-core.js) at a small, bounded count inside `npm test`.
// INNERQ_FUZZ_SEED / INNERQ_FUZZ_CASES / INNERQ_FUZZ_SECONDS change the defaults (seed 1, 400 cases, 12 s).
// Long runs: `npm run fuzz -- --cases 100000` (or `--seconds 600`) over dist/.
import * as lib from '../../lib';
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { createFuzzer } = require('./fuzz-core') as {
  createFuzzer: (l: typeof lib, log?: (m: string) => void) => {
    run(o: { seed: number; cases: number; seconds: number; progressEvery: number }): Promise<Record<string, unknown> & { cases: number; violations: number }>;
  };
};

jest.setTimeout(60_000);

test('fuzz: random configurations, inputs and call sequences keep every invariant', async () => {
  const seed = Number(process.env.INNERQ_FUZZ_SEED ?? 1) >>> 0;
  const cases = Number(process.env.INNERQ_FUZZ_CASES ?? 400);
  const seconds = Number(process.env.INNERQ_FUZZ_SECONDS ?? 12);
  const s = await createFuzzer(lib).run({ seed, cases, seconds, progressEvery: 0 });
  // eslint-disable-next-line no-console
  console.log(`fuzz (seed ${seed}): ${JSON.stringify(s)}`);
  expect(s.violations).toBe(0);
  expect(s.cases).toBeGreaterThan(10);
});
