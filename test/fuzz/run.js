#!/usr/bin/env node
// npm run fuzz -- [--cases N] [--seconds S] [--seed X] [--from I] [--lib PATH]
// Runs the KVCache fuzzer (fuzz-core.js) over the compiled library (dist/ by default; `npm run build:ts` first).
// Exit code 0: no invariant violation; 1: a violation (the message names the case to replay with --from I --cases 1).
// A native crash kills the process: the last progress line on stderr and --from/--cases bisect it.
'use strict';
const path = require('path');
const { createFuzzer } = require('./fuzz-core');

function parse(argv) {
  const o = { cases: undefined, seconds: undefined, seed: 1, from: 0, lib: path.join(__dirname, '..', '..', 'dist'), progress: 1000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], next = () => argv[++i];
    if (a === '--cases') o.cases = Number(next());
    else if (a === '--seconds') o.seconds = Number(next());
    else if (a === '--seed') o.seed = Number(next()) >>> 0;
    else if (a === '--from') o.from = Number(next());
    else if (a === '--lib') o.lib = path.resolve(next());
    else if (a === '--progress') o.progress = Number(next());
    else throw new Error(`unknown argument ${a}; usage: run.js [--cases N] [--seconds S] [--seed X] [--from I] [--lib PATH]`);
  }
  if (o.cases === undefined && o.seconds === undefined) o.cases = 1000;
  return o;
}

async function main() {
  const o = parse(process.argv.slice(2));
  const lib = require(o.lib);
  const fuzz = createFuzzer(lib, (m) => process.stderr.write(`${m}\n`));
  const startRss = process.memoryUsage().rss;
  try {
    const s = await fuzz.run({ seed: o.seed, from: o.from, cases: o.cases ?? Infinity, seconds: o.seconds ?? Infinity, progressEvery: o.progress });
    s.rssMiB = { start: +(startRss / 2 ** 20).toFixed(1), end: +(process.memoryUsage().rss / 2 ** 20).toFixed(1) };
    console.log(JSON.stringify(s));
    console.log(`fuzz: ${s.cases} cases in ${s.seconds.toFixed(1)} s, ${s.calls} calls, ${s.rejected} rejected as expected, 0 violations`);
  } catch (e) {
    console.error(`fuzz: VIOLATION: ${e && e.stack}`);
    console.log(JSON.stringify(fuzz.stats));
    process.exit(1);
  }
}
main();
