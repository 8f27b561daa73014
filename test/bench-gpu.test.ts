// bench-gpu.test.ts - `npm run bench:gpu` runs end to end without a GPU (on sim, tiny shape, timings labelled
// meaningless), so the command needs no edits on a CUDA runner.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { backends } from '../lib';

test('bench:gpu pipeline runs on this machine and writes its result file', () => {
  const root = path.resolve(__dirname, '..');
  const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'bench-gpu.js'), '--no-build', '--no-test'], { cwd: root, encoding: 'utf8' });
  expect(r.status).toBe(0);
  const device = backends().cuda.devices > 0 ? null : 'sim';
  if (device === null) {
    console.log('a CUDA device is present: bench:gpu timed the cuda backend');
    return;
  }
  const out = path.join(root, 'bench', 'results', 'gpu-sim.json');
  const j = JSON.parse(fs.readFileSync(out, 'utf8'));
  expect(j.note).toMatch(/MEANINGLESS/);
  expect(JSON.stringify(j)).toContain('innerq');
  expect(JSON.stringify(j)).toContain('kivi-2');
}, 300000);
