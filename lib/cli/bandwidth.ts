// bandwidth.ts - this machine's DRAM read bandwidth, measured in the same run as the benchmark.
//
// What it measures: Buffer.compare() of two equal, fully written buffers far larger than the L3 cache. Node
// implements it with memcmp(), which glibc vectorises (AVX2 here), and equal buffers make it read every byte of
// both. So it is a single-threaded streaming read of 2 × N bytes. The two-thread figure runs the same loop in
// worker threads, each over its own buffers: every repetition starts behind a barrier (a shared counter the
// workers spin on), and all the bytes read are divided by the repetition's wall window, from the first worker's
// start to the last worker's end, so that workers which happen not to overlap cannot be counted as concurrent
// (dividing by the slowest worker's own time would credit them with twice a single thread's bandwidth). The best of
// several repetitions is kept (the sustainable peak, not an average disturbed by others). On the shared 2-vCPU VM
// of bench/results/cpu-amd-epyc-zen4-2c.* the two-thread figure itself varies with the neighbours: 36-37 GB/s most of
// the time, 55-63 GB/s in other minutes, with every repetition overlapping (checked from the workers' spans).
import { Worker } from 'worker_threads';

export interface BandwidthResult {
  method: string;
  /** bytes read per repetition, per thread */
  bytesPerThread: number;
  /** GB/s (1e9 bytes) by thread count: { "1": 15.2, "2": 28.9 } */
  gbps: Record<string, number>;
}

// Posts [start, end] of every repetition as process.hrtime.bigint() values (one monotonic clock for all threads).
const WORKER_SOURCE = `
const { parentPort, workerData } = require('worker_threads');
const half = workerData.bytes / 2;
const a = Buffer.allocUnsafeSlow(half), b = Buffer.allocUnsafeSlow(half);
a.fill(0x5a); b.fill(0x5a);
Buffer.compare(a, b);
const arrived = new Int32Array(workerData.barrier);
parentPort.on('message', () => {
  const spans = [];
  for (let r = 0; r < workerData.reps; r++) {
    Atomics.add(arrived, 0, 1);
    while (Atomics.load(arrived, 0) < workerData.threads * (r + 1)) {}
    const t0 = process.hrtime.bigint();
    if (Buffer.compare(a, b) !== 0) throw new Error('buffers differ');
    spans.push([t0, process.hrtime.bigint()]);
  }
  parentPort.postMessage(spans);
});
parentPort.postMessage('ready');
`;

async function probeThreads(threads: number, bytesPerThread: number, reps: number): Promise<number> {
  const barrier = new SharedArrayBuffer(4);
  const workers = Array.from(
    { length: threads },
    () => new Worker(WORKER_SOURCE, { eval: true, workerData: { bytes: bytesPerThread, reps, threads, barrier } }),
  );
  try {
    await Promise.all(workers.map((w) => new Promise<void>((resolve, reject) => {
      w.once('message', () => resolve());
      w.once('error', reject);
    })));
    const results = await Promise.all(workers.map((w) => new Promise<bigint[][]>((resolve, reject) => {
      w.once('message', (m: bigint[][]) => resolve(m));
      w.once('error', reject);
      w.postMessage('go');
    })));
    // repetition r: all bytes / (last end - first start) over the workers
    let best = 0;
    for (let r = 0; r < reps; r++) {
      const start = results.reduce((m, t) => (t[r][0] < m ? t[r][0] : m), results[0][r][0]);
      const end = results.reduce((m, t) => (t[r][1] > m ? t[r][1] : m), results[0][r][1]);
      best = Math.max(best, (threads * bytesPerThread) / (Number(end - start) / 1e9) / 1e9);
    }
    return best;
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

/** Measures read bandwidth with 1 thread and with `maxThreads` threads (when > 1). */
export async function measureBandwidth(maxThreads: number, quick: boolean): Promise<BandwidthResult> {
  const bytesPerThread = (quick ? 256 : 512) * 2 ** 20;
  const reps = quick ? 4 : 8;
  const gbps: Record<string, number> = {};
  gbps['1'] = await probeThreads(1, bytesPerThread, reps);
  if (maxThreads > 1) gbps[String(maxThreads)] = await probeThreads(maxThreads, bytesPerThread / maxThreads, reps);
  return {
    method: `Buffer.compare (glibc memcmp) of two equal ${bytesPerThread / 2 ** 21} MiB buffers per thread, best of ${reps}`,
    bytesPerThread,
    gbps,
  };
}
