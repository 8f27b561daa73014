// native.test.ts - builds and runs the native C++ harnesses so that `npm test` covers them:
//   test/native/cpu (build.sh -> build-cpu/test_cpu): every format × every kernel table of this CPU vs fp64 (~1-2 min with the build);
//   test/native/sim (scripts/sim-tests.sh -> build-sim/sim-tests): the CUDA kernels on the SIMT emulator (~1 min).
// INNERQ_NATIVE_TESTS=0 skips them (e.g. when only the TypeScript changed); g++ must be installed.
import { spawnSync } from 'child_process';
import * as path from 'path';
import { backends } from '../lib';

const root = path.resolve(__dirname, '..');
const skip = process.env.INNERQ_NATIVE_TESTS === '0';
jest.setTimeout(900_000);

function run(cmd: string, args: string[], timeoutS: number): { status: number | null; out: string; seconds: number } {
  const t0 = Date.now();
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', timeout: timeoutS * 1000, maxBuffer: 64 << 20 });
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}`, seconds: (Date.now() - t0) / 1000 };
}

function tail(s: string): string {
  return s.split('\n').slice(-30).join('\n');
}

(skip ? describe.skip : describe)('native C++ harnesses', () => {
  it('cpu backend: build.sh + test_cpu pass (0 failures)', () => {
    const b = run('bash', ['test/native/cpu/build.sh'], 600);
    if (b.status !== 0) throw new Error(`test/native/cpu/build.sh failed:\n${tail(b.out)}`);
    const r = run(path.join(root, 'build-cpu', 'test_cpu'), ['12345'], 600);
    // eslint-disable-next-line no-console
    console.log(`test_cpu: build ${b.seconds.toFixed(0)} s, run ${r.seconds.toFixed(0)} s\n${tail(r.out).split('\n').slice(-3).join('\n')}`);
    if (r.status !== 0) throw new Error(`test_cpu failed (exit ${r.status}):\n${tail(r.out)}`);
    const m = /configs x (\d+) kernel tables, \d+ checks, 0 failures/.exec(r.out);
    expect(m).not.toBeNull();
    // every table this CPU can run: avx512vnni (when present), avx2, portable
    const tables = { avx512vnni: 3, avx2: 2, portable: 1 }[backends().cpu.kernels];
    expect(Number(m![1])).toBe(Math.max(tables, 2));
  });

  it('sim backend: scripts/sim-tests.sh passes (0 failures)', () => {
    const r = run('bash', ['scripts/sim-tests.sh'], 600);
    // eslint-disable-next-line no-console
    console.log(`sim-tests: ${r.seconds.toFixed(0)} s (build + run)\n${tail(r.out).split('\n').slice(-4).join('\n')}`);
    if (r.status !== 0) throw new Error(`sim-tests failed (exit ${r.status}):\n${tail(r.out)}`);
    expect(r.out).toMatch(/^PASSED: \d+ checks, 0 failures/m);
  });
});
