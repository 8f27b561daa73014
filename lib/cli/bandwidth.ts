// bandwidth.ts - this machine's DRAM read bandwidth, measured in the same run as the benchmark.
//
// What it measures: Buffer.compare() of two equal, fully written buffers far larger than the L3 cache. Node
// implements it with memcmp(), which glibc vectorises (AVX2 here), and equal buffers make it read every byte of
// both. So it is a single-threaded streaming read of 2 × N bytes. The two-thread figure runs the same loop in
// worker threads at once, each over its own buffers, and divides all the bytes read by the slowest worker's
// time. The best of several repetitions is kept (the sustainable peak, not an average disturbed by others).
import { Worker } from 'worker_threads';

export interface BandwidthResult {
  method: string;
  /** bytes read per repetition, per thread */
  bytesPerThread: number;
  /** GB/s (1e9 bytes) by thread count: { "1": 15.2, "2": 28.9 } */
  gbps: Record<string, number>;
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require('worker_threads');
const half = workerData.bytes / 2;
const a = Buffer.allocUnsafeSlow(half), b = Buffer.allocUnsafeSlow(half);
a.fill(0x5a); b.fill(0x5a);
Buffer.compare(a, b);
parentPort.on('message', () => {
  const times = [];
  for (let r = 0; r < workerData.reps; r++) {
    const t0 = process.hrtime.bigint();
    if (Buffer.compare(a, b) !== 0) throw new Error('buffers differ');
    times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  parentPort.postMessage(times);
});
parentPort.postMessage('ready');
`;

async function probeThreads(threads: number, bytesPerThread: number, reps: number): Promise<number> {
  const workers = Array.from({ length: threads }, () => new Worker(WORKER_SOURCE, { eval: true, workerData: { bytes: bytesPerThread, reps } }));
  try {
    await Promise.all(workers.map((w) => new Promise<void>((resolve, reject) => {
      w.once('message', () => resolve());
      w.once('error', reject);
    })));
    const results = await Promise.all(workers.map((w) => new Promise<number[]>((resolve, reject) => {
      w.once('message', (m: number[]) => resolve(m));
      w.once('error', reject);
      w.postMessage('go');
    })));
    // repetition r of every worker ran at about the same time; aggregate = all bytes / slowest worker
    let best = 0;
    for (let r = 0; r < reps; r++) {
      const slowest = Math.max(...results.map((t) => t[r]));
      best = Math.max(best, (threads * bytesPerThread) / slowest / 1e9);
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
