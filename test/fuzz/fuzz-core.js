// fuzz-core.js - seeded random testing of the KVCache boundary (plain CommonJS so that it runs over dist/ with
// `npm run fuzz` and over lib/ inside Jest). One case = random caches, random call sequences and random inputs;
// every case is derived from (seed, index) alone, so `--seed S --from I --cases 1` replays case I.
//
// Invariants checked after every call:
//   * the process never crashes (a crash ends the run; the last "case" line printed names the culprit);
//   * every failure is a TypeError, a RangeError or an Error with an ERR_INNERQ_* code;
//   * a rejected call leaves the cache exactly as it was (lengths and bit-exact attend output of every layer);
//   * attend output is finite whenever the inputs were finite;
//   * save → load reproduces attend bit-exactly; corrupted or truncated saves are rejected with a code.
'use strict';

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function caseRng(seed, index) {
  let h = (seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  return mulberry32(h ^ (h >>> 13));
}

class Violation extends Error {}

const SPECIAL_FINITE = [0, -0, 1e-40, -1e-42, 1.4e-45, 6e-8, -6e-8, 65504, -65504, 65519, 65520, -70000, 1e30, -3e38, 3.4e38, 1e-30];
const NON_FINITE = [NaN, Infinity, -Infinity];
const HALF_SPECIAL = [0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x7bff, 0xfbff, 0x3c00, 0xbc00];
const HALF_NON_FINITE = [0x7c00, 0xfc00, 0x7e00, 0x7c01, 0xffff];

// By name, not instanceof: under Jest the test runs in its own realm while the addon throws the main realm's errors.
function isError(e) {
  return e !== null && typeof e === 'object' && typeof e.message === 'string' && typeof e.name === 'string';
}
function allowedError(e) {
  if (!isError(e)) return false;
  if (e.name === 'TypeError' || e.name === 'RangeError') return true;
  return typeof e.code === 'string' && e.code.startsWith('ERR_INNERQ_');
}

function bitsEqual(a, b) {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length), y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

function allFinite(a) {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return false;
  return true;
}

/** The fuzzer for one library object ({ KVCache }): run(cases|seconds) → stats. */
function createFuzzer(lib, log = () => undefined) {
  const { KVCache } = lib;
  const stats = { cases: 0, calls: 0, rejected: 0, violations: 0, saves: 0, loads: 0, corruptRejected: 0, asyncDisposed: 0, errors: {} };

  function count(e) {
    const k = e.code || e.name;
    stats.errors[k] = (stats.errors[k] || 0) + 1;
  }

  async function runCase(seed, index) {
    const r = caseRng(seed, index);
    const int = (lo, hi) => lo + Math.floor(r() * (hi - lo + 1));
    const pick = (xs) => xs[Math.floor(r() * xs.length)];
    const chance = (p) => r() < p;
    const where = (msg) => `case ${index} (seed ${seed}): ${msg}`;
    const fail = (msg) => {
      stats.violations++;
      throw new Violation(where(msg));
    };

    // ---- values ----
    function floats(n, { finite = true, scale = pick([1, 1, 1, 0.001, 100, 3e4]) } = {}) {
      const a = new Float32Array(n);
      const mode = r();
      for (let i = 0; i < n; i++) {
        if (mode < 0.15 && chance(0.2)) a[i] = pick(SPECIAL_FINITE);
        else if (mode < 0.2) a[i] = 0;  // all-zero groups
        else if (mode < 0.25) a[i] = 1.5;  // constant groups
        else a[i] = (r() * 2 - 1) * scale * (chance(0.02) ? 50 : 1);
      }
      if (!finite) a[int(0, n - 1)] = pick(NON_FINITE);
      return a;
    }
    function halves(n, { finite = true } = {}) {
      const a = new Uint16Array(n);
      for (let i = 0; i < n; i++) {
        if (chance(0.1)) a[i] = pick(HALF_SPECIAL);
        else {
          let h = int(0, 0xffff);
          if ((h & 0x7c00) === 0x7c00) h &= 0xbfff;  // keep finite
          a[i] = chance(0.7) ? (h & 0x83ff) | 0x3800 : h;  // mostly moderate magnitudes
        }
      }
      if (!finite) a[int(0, n - 1)] = pick(HALF_NON_FINITE);
      return a;
    }
    const rows = (n, opts) => (chance(0.3) ? halves(n, opts) : floats(n, opts));
    /** Queries: moderate magnitudes (results must be finite), sometimes special finite values. */
    function query(c) {
      const n = c.options.qHeads * c.options.headDim;
      const q = new Float32Array(n);
      const scale = pick([1, 1, 0.01, 30, 1000]);
      for (let i = 0; i < n; i++) q[i] = chance(0.03) ? pick([0, -0, 1e-40, 65504, -65504]) : (r() * 2 - 1) * scale;
      return q;
    }

    // ---- configurations ----
    function randomOptions() {
      const kvHeads = int(1, 3), ratio = pick([1, 1, 2, 4]);
      const o = { layers: int(1, 3), kvHeads, qHeads: kvHeads * ratio, maxTokens: pick([1, 7, 64, 300, 900, 4096]) };
      const preset = pick(['innerq', 'innerq-4', 'kivi-2', 'kivi-4', 'fp16', undefined]);
      if (preset) o.preset = preset;
      const method = preset === 'fp16' ? 'fp16' : chance(0.3) ? pick(['innerq', 'kivi']) : undefined;
      if (method && method !== 'fp16') o.method = method;
      o.backend = chance(0.2) ? 'sim' : 'cpu';
      const pow2 = (d) => (d & (d - 1)) === 0;  // cuda/sim kernels: head dims 32, 64, 128, 256 only
      if (method === 'fp16') o.headDim = pick([32, 64, 96, 128].filter((d) => o.backend === 'cpu' || pow2(d)));
      else {
        const G = chance(0.4) ? pick([32, 64, 128]) : 32;
        if (G !== 32 || chance(0.2)) o.groupSize = G;
        o.headDim = pick([G, G * 2, G * 3].filter((d) => d <= 256 && (o.backend === 'cpu' || pow2(d))));
        if (chance(0.4)) o.keyBits = pick([2, 3, 4, 8]);
        if (chance(0.4)) o.valueBits = pick([2, 3, 4, 8]);
        if (chance(0.3)) o.keyMode = pick(['sym', 'asym', 'hybrid']);
        if (chance(0.3)) o.valueMode = pick(['sym', 'asym', 'hybrid']);
        if (chance(0.4)) o.sinkTokens = pick([0, 1, 5, 32]);
        if (chance(0.4)) o.recentTokens = pick([0, 1, 8, 96, 130]);
        if (chance(0.2)) o.keyNorm = chance(0.5);
      }
      if (chance(0.3)) o.pageTokens = pick([128, 256, 384]);
      if (o.backend === 'sim' && chance(0.3)) o.simThreadOrder = pick(['forward', 'reversed', 'shuffled']);
      if (o.backend === 'cpu') {
        o.threads = chance(0.8) ? 1 : 2;  // 2-thread pools spin: keep them rare when tests run in parallel
        if (chance(0.3)) o.simd = false;
      }
      return o;
    }
    function invalidOptions() {
      const o = randomOptions();
      const k = pick(['layers', 'qHeads', 'kvHeads', 'headDim', 'maxTokens', 'keyBits', 'groupSize', 'preset', 'backend', 'threads', 'pageTokens', 'sinkTokens', 'bogus', 'keyNorm']);
      o[k] = pick([-1, 0, 1.5, NaN, Infinity, 1e9, 2 ** 31, '4', null, {}, [], true, 3, 5, 100, 'cuda', 'nope', 7, -0]);
      return chance(0.05) ? pick([undefined, null, 42, 'x', [], new Float32Array(2)]) : o;
    }

    // ---- state ----
    const live = [];  // { cache, disposed }
    const pending = [];
    function state(c) {
      const out = [];
      for (let l = 0; l < c.options.layers; l++) {
        const n = c.length(l);
        out.push({ n, o: n ? c.attend(l, stateQuery(c)) : null });
      }
      return out;
    }
    const stateQueries = new WeakMap();
    function stateQuery(c) {
      if (!stateQueries.has(c)) stateQueries.set(c, query(c));
      return stateQueries.get(c);
    }
    function sameState(a, b) {
      return a.length === b.length && a.every((x, i) => x.n === b[i].n && (x.o === null ? b[i].o === null : bitsEqual(x.o, b[i].o)));
    }
    function checkOutput(c, layer, out, what) {
      if (!allFinite(out)) fail(`${what} on layer ${layer} of ${JSON.stringify(c.options)} gave a non-finite output`);
    }

    /** Call fn, which must throw an allowed error and change nothing. */
    function expectRejected(entry, label, fn) {
      const c = entry.cache;
      const before = entry.disposed ? null : state(c);
      let threw = null;
      try {
        fn();
      } catch (e) {
        threw = e;
      }
      stats.calls++;
      if (!threw) fail(`${label} was accepted`);
      if (!allowedError(threw)) fail(`${label} threw ${threw && threw.constructor && threw.constructor.name}: ${threw && threw.message}`);
      stats.rejected++;
      count(threw);
      if (before && !sameState(before, state(c))) fail(`${label} was rejected but changed the cache`);
    }
    /** Call fn; if it throws, the error must be allowed and the cache unchanged. */
    function tolerate(entry, label, fn) {
      const before = state(entry.cache);
      try {
        stats.calls++;
        return fn();
      } catch (e) {
        if (e instanceof Violation) throw e;
        if (!allowedError(e)) fail(`${label} threw ${e && e.constructor && e.constructor.name}: ${e && e.message}`);
        stats.rejected++;
        count(e);
        if (!sameState(before, state(entry.cache))) fail(`${label} failed and changed the cache`);
        return undefined;
      }
    }

    function detached(a) {
      const copy = a.slice();
      structuredClone(copy, { transfer: [copy.buffer] });
      return copy;
    }

    function badCall(entry) {
      const c = entry.cache;
      const o = c.options, row = o.kvHeads * o.headDim, qlen = o.qHeads * o.headDim;
      const layer = int(0, o.layers - 1);
      const kinds = [
        () => expectRejected(entry, 'append wrong length', () => c.append(layer, rows(row + pick([-1, 1, row])), rows(row))),
        () => expectRejected(entry, 'append NaN/Inf', () => c.append(layer, rows(row, { finite: chance(0.5) }), rows(row, { finite: false }))),
        () => expectRejected(entry, 'append detached', () => c.append(layer, detached(rows(row)), rows(row))),
        () => expectRejected(entry, 'append wrong type', () => c.append(layer, pick([new Float64Array(row), Array.from(rows(row)), null, new Int16Array(row), new Uint8Array(row * 2), 'x']), rows(row))),
        () => expectRejected(entry, 'append bad layer', () => c.append(pick([-1, o.layers, 1.5, NaN, '0', null, 2 ** 40]), rows(row), rows(row))),
        () => expectRejected(entry, 'prefill mismatched', () => c.prefill(layer, rows(row * 3), rows(row * 2))),
        () => expectRejected(entry, 'prefill NaN', () => c.prefill(layer, rows(row * 2, { finite: false }), rows(row * 2))),
        () => expectRejected(entry, 'prefill empty', () => c.prefill(layer, new Float32Array(0), new Float32Array(0))),
        () => expectRejected(entry, 'prefill detached', () => c.prefill(layer, detached(rows(row * 2)), rows(row * 2))),
        () => expectRejected(entry, 'prefill too long', () => c.prefill(layer, new Uint16Array(row * (o.maxTokens + 1)), new Uint16Array(row * (o.maxTokens + 1)))),
        () => expectRejected(entry, 'attend wrong query', () => c.attend(layer, pick([new Float32Array(qlen + 1), new Float64Array(qlen), new Uint16Array(qlen), null, detached(query(c))]))),
        () => expectRejected(entry, 'attend NaN query', () => { const q = query(c); q[int(0, qlen - 1)] = pick(NON_FINITE); c.attend(layer, q); }),
        () => expectRejected(entry, 'attend bad out', () => c.attend(layer, query(c), pick([new Float32Array(qlen - 1), new Float64Array(qlen), [], detached(new Float32Array(qlen))]))),
        () => expectRejected(entry, 'reset bad layer', () => c.reset(pick([-1, o.layers, 0.5, undefined]))),
        () => expectRejected(entry, 'load garbage', () => KVCache.load(pick([Buffer.alloc(0), Buffer.from('innerq'), new Float32Array(4), 'abc', null]))),
      ];
      if (c.length(layer) > 0) kinds.push(() => expectRejected(entry, 'prefill non-empty', () => c.prefill(layer, rows(row), rows(row))));
      else kinds.push(() => expectRejected(entry, 'attend empty', () => c.attend(layer, query(c))));
      if (c.length(layer) >= o.maxTokens) kinds.push(() => expectRejected(entry, 'append full', () => c.append(layer, rows(row), rows(row))));
      pick(kinds)();
    }

    function saveLoad(entry) {
      const c = entry.cache;
      const before = state(c);
      const buf = c.save();
      stats.saves++;
      const hd = c.options.headDim;
      const backend = chance(0.7) || (hd & (hd - 1)) !== 0 ? c.backend : pick(['cpu', 'sim']);
      if (chance(0.3)) {
        // Corrupt or truncate: must be rejected with a code.
        const bad = Buffer.from(buf);
        let label;
        if (chance(0.5)) {
          const i = int(0, bad.length - 1);
          bad[i] ^= int(1, 255);
          label = `byte ${i} of ${bad.length} flipped`;
        } else label = 'truncated';
        const data = label === 'truncated' ? bad.subarray(0, int(0, bad.length - 1)) : bad;
        try {
          KVCache.load(data, { backend }).dispose();
          fail(`a corrupted save (${label}) was accepted`);
        } catch (e) {
          if (e instanceof Violation) throw e;
          if (!isError(e) || e.name !== 'RangeError' || !/^ERR_INNERQ_/.test(e.code)) fail(`corrupted save (${label}): ${e.constructor.name} ${e.code} ${e.message}`);
          stats.corruptRejected++;
        }
        return;
      }
      // Same backend: same kernels (simd) and thread count, so the output must match bit for bit.
      const same = { backend, simd: c.options.simd, simThreadOrder: c.options.simThreadOrder, simSeed: c.options.simSeed };
      if (c.options.threads) same.threads = c.options.threads;
      const d = KVCache.load(buf, backend === c.backend ? same : { backend });
      stats.loads++;
      if (!sameState(before, state(c))) fail('save() changed the cache');
      if (backend === c.backend) {
        stateQueries.set(d, stateQuery(c));
        if (!sameState(before, state(d))) fail(`load on ${backend} is not bit-exact`);
      } else {
        for (let l = 0; l < d.options.layers; l++) {
          if (d.length(l) !== c.length(l)) fail('load on another backend changed a length');
          if (d.length(l)) checkOutput(d, l, d.attend(l, stateQuery(c)), `attend after load on ${backend}`);
        }
      }
      if (chance(0.5)) {
        entry.cache.dispose();
        entry.cache = d;
      } else d.dispose();
    }

    function disposeWithAsyncInFlight(entry) {
      const c = entry.cache;
      for (let l = 0; l < c.options.layers; l++) {
        if (!c.length(l)) continue;
        for (let k = int(1, 3); k > 0; k--) {
          const p = c.attendAsync(l, query(c)).then(
            (out) => { if (!allFinite(out)) throw new Violation(where('attendAsync raced with dispose and gave a non-finite output')); },
            (e) => {
              if (isError(e) && e.code === 'ERR_INNERQ_DISPOSED') { stats.asyncDisposed++; return; }
              if (!allowedError(e)) throw new Violation(where(`attendAsync raced with dispose: ${e && e.message}`));
            },
          );
          pending.push(p);
        }
      }
      c.dispose();
      entry.disposed = true;
      c.dispose();  // idempotent
      for (const call of [() => c.attend(0, query(c)), () => c.append(0, new Float32Array(1), new Float32Array(1)), () => c.length(0), () => c.save(), () => c.stats()]) {
        try {
          call();
          fail('a call after dispose() was accepted');
        } catch (e) {
          if (e instanceof Violation) throw e;
          if (e.code !== 'ERR_INNERQ_DISPOSED') fail(`a call after dispose() threw ${e.code} ${e.message}`);
        }
      }
      pending.push(c.attendAsync(0, query(c)).then(() => { throw new Violation(where('attendAsync after dispose resolved')); }, (e) => {
        if (e.code !== 'ERR_INNERQ_DISPOSED') throw new Violation(where(`attendAsync after dispose: ${e.message}`));
      }));
    }

    // ---- the case ----
    if (chance(0.1)) {
      const o = invalidOptions();
      try {
        new KVCache(o).dispose();  // some "invalid" draws are valid after all; that is fine
      } catch (e) {
        if (!allowedError(e)) fail(`constructor ${JSON.stringify(o)} threw ${e.constructor.name}: ${e.message}`);
        count(e);
      }
    }
    const nCaches = chance(0.15) ? int(2, 5) : 1;
    for (let i = 0; i < nCaches; i++) live.push({ cache: new KVCache(randomOptions()), disposed: false });
    const steps = int(5, 30);
    for (let s = 0; s < steps; s++) {
      const entry = pick(live);
      if (entry.disposed) continue;
      const c = entry.cache;
      const o = c.options, row = o.kvHeads * o.headDim;
      const layer = int(0, o.layers - 1);
      const op = r();
      if (op < 0.15) {
        if (c.length(layer) === 0) {
          const n = Math.min(o.maxTokens, int(1, chance(0.2) ? 700 : 200));
          tolerate(entry, 'prefill', () => c.prefill(layer, rows(n * row), rows(n * row)));
          stats.calls++;
        }
      } else if (op < 0.35) {
        const n = chance(0.1) ? int(100, 400) : int(1, 40);
        for (let i = 0; i < n && c.length(layer) < o.maxTokens; i++) {
          c.append(layer, rows(row), rows(row));
          stats.calls++;
        }
      } else if (op < 0.5) {
        if (c.length(layer)) {
          const out = c.attend(layer, query(c), chance(0.3) ? new Float32Array(o.qHeads * o.headDim).fill(NaN) : undefined);
          stats.calls++;
          checkOutput(c, layer, out, 'attend');
        }
      } else if (op < 0.58) {
        if (c.length(layer)) {
          // Later appends may run before the worker does, so only finiteness is checked here.
          pending.push(c.attendAsync(layer, query(c)).then((out) => {
            if (!allFinite(out)) throw new Violation(where('attendAsync gave a non-finite output'));
          }, (e) => { if (!allowedError(e)) throw new Violation(where(`attendAsync: ${e.message}`)); }));
          stats.calls++;
        }
      } else if (op < 0.8) {
        badCall(entry);
      } else if (op < 0.87) {
        saveLoad(entry);
      } else if (op < 0.9) {
        c.reset(layer);
        stats.calls++;
      } else if (op < 0.95) {
        disposeWithAsyncInFlight(entry);
      } else {
        const st = c.stats();
        if (!(st.bytes.held >= 0) || !Number.isFinite(st.bitsPerElement)) fail('stats are not finite');
      }
    }
    const results = await Promise.allSettled(pending);
    for (const x of results) if (x.status === 'rejected') { stats.violations++; throw x.reason; }
    for (const e of live) e.cache.dispose();
    stats.cases++;
  }

  /** Run cases [from, from + cases) or until `seconds` have passed, whichever comes first. */
  async function run({ seed = 1, from = 0, cases = Infinity, seconds = Infinity, progressEvery = 1000 } = {}) {
    const t0 = Date.now();
    let i = from;
    for (; i < from + cases && (Date.now() - t0) / 1000 < seconds; i++) {
      if (progressEvery && (i - from) % progressEvery === 0) log(`case ${i} (seed ${seed}) after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      await runCase(seed, i);
    }
    return { ...stats, seed, from, lastCase: i - 1, seconds: (Date.now() - t0) / 1000 };
  }

  return { run, runCase, stats };
}

module.exports = { createFuzzer, Violation, allowedError };
