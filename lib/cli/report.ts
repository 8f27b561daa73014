// report.ts - renders bench and eval results as aligned text, markdown and SVG charts (plain SVG text).
import type { BenchResult, BenchRow, BoundnessRow } from './bench';
import type { EvalResult, EvalRow } from './eval';
import { Column, describeMachine, fixed, markdownTable, mib, sig, textTable } from './common';

const KIND_LABEL: Record<BenchRow['kind'], string> = {
  step: 'decode step',
  'key-gemv': 'key GEMV',
  'value-gemv': 'value GEMV',
  'step-1thread': 'step, 1 thread',
  'resident-step': 'step, cache-resident',
  'resident-key': 'key GEMV, resident',
  'resident-value': 'value GEMV, resident',
};

const ratio = (x: number | null): string => (x === null ? '' : `${x.toFixed(2)}×`);

export const benchColumns: Column<BenchRow>[] = [
  { header: 'preset', get: (r) => r.preset, align: 'left' },
  { header: 'backend', get: (r) => `${r.backend}/${r.kernels}`, align: 'left' },
  { header: 'what', get: (r) => KIND_LABEL[r.kind], align: 'left' },
  { header: 'thr', get: (r) => r.threads },
  { header: 'context', get: (r) => r.context },
  { header: 'ms/step', get: (r) => fixed(r.msPerStep, 2) },
  { header: 'p10–p90', get: (r) => `${sig(r.p10)}–${sig(r.p90)}` },
  { header: 'ms/layer', get: (r) => fixed(r.msPerLayer, 3) },
  { header: 'cache MiB', get: (r) => (r.kind.startsWith('resident') ? mib(r.bytesPerLayer) : mib(r.cacheBytes)) },
  { header: 'bits/el', get: (r) => fixed(r.bitsPerElement, 2) },
  { header: 'GB/s', get: (r) => fixed(r.gbps, 1) },
  { header: '% BW', get: (r) => (r.fractionOfBandwidth === null ? '' : (r.fractionOfBandwidth * 100).toFixed(0)) },
  { header: '×fp16', get: (r) => ratio(r.speedupVsFp16) },
  { header: '×kivi-2', get: (r) => ratio(r.speedupVsKivi2) },
  { header: 'bound', get: (r) => r.bound ?? '', align: 'left' },
];

/** Extra columns when a row carries device (CUDA event) timing: the kernels alone, without host copies and syncs. */
export const deviceColumns: Column<BenchRow>[] = [
  { header: 'dev ms/step', get: (r) => fixed(r.deviceMsPerStep, 3) },
  { header: 'dev GB/s', get: (r) => (r.deviceMsPerStep ? fixed(r.bytesReadPerStep / (r.deviceMsPerStep / 1000) / 1e9, 0) : '') },
  { header: 'dev ×fp16', get: (r) => ratio(r.deviceSpeedupVsFp16) },
  { header: 'dev ×kivi-2', get: (r) => ratio(r.deviceSpeedupVsKivi2) },
];
const columnsFor = (rows: BenchRow[]): Column<BenchRow>[] => (rows.some((r) => r.deviceMsPerStep !== null && r.deviceMsPerStep !== undefined) ? [...benchColumns, ...deviceColumns] : benchColumns);

export const boundColumns: Column<BoundnessRow>[] = [
  { header: 'preset', get: (r) => r.preset, align: 'left' },
  { header: 'kernel', get: (r) => r.kind, align: 'left' },
  { header: 'context', get: (r) => r.context },
  { header: 'DRAM GB/s', get: (r) => fixed(r.dramGBs, 1) },
  { header: 'resident GB/s', get: (r) => fixed(r.residentGBs, 1) },
  { header: 'resident/DRAM', get: (r) => fixed(r.residentOverDram, 2) },
  { header: '1T/2T time', get: (r) => fixed(r.threadScaling, 2) },
  { header: '% BW', get: (r) => (r.fractionOfBandwidth === null ? '' : (r.fractionOfBandwidth * 100).toFixed(0)) },
  { header: 'bound', get: (r) => r.bound, align: 'left' },
  { header: 'why', get: (r) => r.why, align: 'left' },
];

export const evalColumns: Column<EvalRow>[] = [
  { header: 'config', get: (r) => r.name, align: 'left' },
  { header: 'bits/el (quant.)', get: (r) => fixed(r.nominalBits, 2) },
  { header: 'bits/el (held)', get: (r) => fixed(r.heldBits, 2) },
  { header: 'mean rel err', get: (r) => sig(r.meanRelErr) },
  { header: 'median', get: (r) => sig(r.medianRelErr) },
  { header: 'max rel err', get: (r) => sig(r.maxRelErr) },
  { header: 'max abs err', get: (r) => sig(r.maxAbsErr) },
  { header: 'mean cos', get: (r) => fixed(r.meanCosine, 6) },
  { header: 'min cos', get: (r) => fixed(r.minCosine, 6) },
  { header: 'backend vs fp64 ref', get: (r) => sig(r.backendVsReference) },
];

function benchHeader(r: BenchResult): string[] {
  const p = r.parameters;
  const lines = [
    `innerq bench — ${describeMachine(r.machine)}`,
    `shape: ${p.layers} layers × ${p.qHeads} q heads / ${p.kvHeads} kv heads × d ${p.headDim}; contexts ${p.contexts.join(', ')}; ` +
      (p.allLayers ? 'every layer filled' : `a step attends all ${p.layers} layers, rotating over distinct layers (working-set target ${p.workingSetMiB} MiB per preset)`),
  ];
  const steps = r.rows.filter((x) => x.kind === 'step' && x.distinctLayers < p.layers);
  if (steps.length) {
    const held = steps.map((x) => x.bytesPerLayer * x.distinctLayers);
    lines.push(`distinct cache memory per preset and context: ${mib(Math.min(...held))}–${mib(Math.max(...held))} MiB (last-level cache ${r.machine.l3Bytes ? `${mib(r.machine.l3Bytes)} MiB` : "size unknown"}), ${Math.min(...steps.map((x) => x.distinctLayers))}–${Math.max(...steps.map((x) => x.distinctLayers))} distinct layers`);
  }
  if (r.bandwidth) {
    lines.push(`read bandwidth: ${Object.entries(r.bandwidth.gbps).map(([t, g]) => `${t} thread${t === '1' ? '' : 's'} ${g.toFixed(1)} GB/s`).join(', ')} (${r.bandwidth.method})`);
  }
  return lines;
}

function benchNotes(): string {
  return [
    'ms/step: median time of one decode step (attention over all layers); p10–p90 spread of the samples.',
    'GB/s: bytes the operation reads (stats().bytes.held of the layers; for a GEMV, an estimate of its matrix share) per second.',
    '% BW: fraction of the measured read bandwidth at the same thread count. ×fp16 / ×kivi-2: speedup, same run, same kind and context.',
    'bound: memory if the kernel runs at ≥ 70% of bandwidth or ≥ 1.5× faster per byte when cache-resident; otherwise compute.',
    'dev columns (cuda/sim only): mean device time of the attention kernels per step from CUDA events, without the host copies and synchronization in ms/step.',
  ].join('\n');
}

export function benchText(r: BenchResult): string {
  const main = r.rows.filter((x) => !x.kind.startsWith('resident'));
  const resident = r.rows.filter((x) => x.kind.startsWith('resident'));
  const parts = [...benchHeader(r), '', textTable(main, columnsFor(main))];
  if (resident.length) parts.push('', 'cache-resident (1 layer attended repeatedly):', textTable(resident, benchColumns));
  if (r.boundness.length) parts.push('', 'memory- or compute-bound:', textTable(r.boundness, boundColumns));
  if (r.targets.length) parts.push('', 'targets (issue 4):', ...r.targets.map((t) => `  ${t.text}`));
  parts.push('', benchNotes(), `(${r.seconds.toFixed(0)} s; load average at the end ${(r.loadAverageAfter ?? []).join(' ')})`);
  return parts.join('\n');
}

export function benchMarkdown(r: BenchResult): string {
  const main = r.rows.filter((x) => !x.kind.startsWith('resident'));
  const resident = r.rows.filter((x) => x.kind.startsWith('resident'));
  const parts = ['## innerq bench', '', ...benchHeader(r).map((l) => `${l}  `), '', markdownTable(main, columnsFor(main))];
  if (resident.length) parts.push('', 'Cache-resident (1 layer attended repeatedly):', '', markdownTable(resident, benchColumns));
  if (r.boundness.length) parts.push('', 'Memory- or compute-bound:', '', markdownTable(r.boundness, boundColumns));
  if (r.targets.length) parts.push('', 'Targets (issue 4):', '', ...r.targets.map((t) => `- ${t.text}`));
  parts.push('', ...benchNotes().split('\n').map((l) => `${l}  `), `Run time ${r.seconds.toFixed(0)} s; load average at the end ${(r.loadAverageAfter ?? []).join(' ')}.`);
  return parts.join('\n') + '\n';
}

function evalHeader(r: EvalResult): string[] {
  const c = r.cases[0];
  const p = r.parameters;
  const src = p.source === 'synthetic'
    ? `synthetic generator, seeds ${p.seed}..${p.seed + p.seeds - 1}: ${c.tokens} tokens, ${c.kvHeads} kv heads, ${c.qHeads} q heads, d ${c.headDim}, ${c.queries} queries per seed`
    : `dump ${p.kv}${p.values ? ` + ${p.values}` : ''}: ${r.cases.length} layer(s), ${c.tokens} tokens, ${c.kvHeads} kv heads, ${c.qHeads} q heads, d ${c.headDim}, ${c.queries} queries per layer`;
  return [`innerq eval — backend ${r.backend}; ${src}`, 'error of the backend\'s attention output vs fp64 attention over the unquantized inputs (per query-head output row)'];
}

export function evalText(r: EvalResult): string {
  return [...evalHeader(r), '', textTable(r.rows, evalColumns), '', `(${r.seconds.toFixed(1)} s)`].join('\n');
}

export function evalMarkdown(r: EvalResult): string {
  return ['## innerq eval', '', ...evalHeader(r).map((l) => `${l}  `), '', markdownTable(r.rows, evalColumns)].join('\n') + '\n';
}

// ---- SVG -----------------------------------------------------------------------------------------------------

const COLORS: Record<string, string> = { fp16: '#444444', 'kivi-2': '#d62728', 'kivi-4': '#ff9896', innerq: '#1f77b4', 'innerq-4': '#9ecae1' };
const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

interface Series { name: string; color: string; points: Array<[number, number]>; labels?: string[] }
interface Panel { title: string; xLabel: string; yLabel: string; series: Series[]; logX?: boolean; logY?: boolean; lines: boolean }

function niceTicks(lo: number, hi: number, log: boolean): number[] {
  if (log) {
    const out: number[] = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
    }
    return out.length >= 2 ? out : [lo, hi];
  }
  const span = hi - lo || 1;
  const step = 10 ** Math.floor(Math.log10(span / 5));
  const s = [1, 2, 5, 10].map((m) => m * step).find((x) => span / x <= 6) ?? step * 10;
  const out: number[] = [];
  for (let v = Math.ceil(lo / s) * s; v <= hi + 1e-9; v += s) out.push(Math.round(v * 1e6) / 1e6);
  return out;
}

function panelSvg(p: Panel, x0: number, y0: number, w: number, h: number): string {
  const m = { l: 64, r: 270, t: 28, b: 44 };
  const pts = p.series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!p.logY || y > 0) && (!p.logX || x > 0));
  if (pts.length === 0) return '';
  let [xl, xh] = [Math.min(...pts.map((q) => q[0])), Math.max(...pts.map((q) => q[0]))];
  let [yl, yh] = [Math.min(...pts.map((q) => q[1])), Math.max(...pts.map((q) => q[1]))];
  if (p.logX) { xl /= 1.2; xh *= 1.2; } else { const d = (xh - xl || 1) * 0.08; xl -= d; xh += d; }
  if (p.logY) { yl /= 1.5; yh *= 1.5; } else { yl = Math.min(0, yl); yh *= 1.1; }
  const fx = (x: number): number => x0 + m.l + (p.logX ? Math.log(x / xl) / Math.log(xh / xl) : (x - xl) / (xh - xl)) * (w - m.l - m.r);
  const fy = (y: number): number => y0 + h - m.b - (p.logY ? Math.log(y / yl) / Math.log(yh / yl) : (y - yl) / (yh - yl)) * (h - m.t - m.b);
  const o: string[] = [];
  o.push(`<text x="${x0 + w / 2 - m.r / 2}" y="${y0 + 18}" text-anchor="middle" font-size="14" font-weight="bold">${esc(p.title)}</text>`);
  o.push(`<rect x="${x0 + m.l}" y="${y0 + m.t}" width="${w - m.l - m.r}" height="${h - m.t - m.b}" fill="none" stroke="#999"/>`);
  for (const t of niceTicks(xl, xh, !!p.logX)) {
    const x = fx(t);
    o.push(`<line x1="${x.toFixed(1)}" y1="${y0 + m.t}" x2="${x.toFixed(1)}" y2="${y0 + h - m.b}" stroke="#eee"/>`);
    o.push(`<text x="${x.toFixed(1)}" y="${y0 + h - m.b + 16}" text-anchor="middle" font-size="11">${t}</text>`);
  }
  for (const t of niceTicks(yl, yh, !!p.logY)) {
    const y = fy(t);
    o.push(`<line x1="${x0 + m.l}" y1="${y.toFixed(1)}" x2="${x0 + w - m.r}" y2="${y.toFixed(1)}" stroke="#eee"/>`);
    o.push(`<text x="${x0 + m.l - 6}" y="${(y + 4).toFixed(1)}" text-anchor="end" font-size="11">${Number(t.toPrecision(3))}</text>`);
  }
  o.push(`<text x="${x0 + (w - m.r + m.l) / 2}" y="${y0 + h - 8}" text-anchor="middle" font-size="12">${esc(p.xLabel)}</text>`);
  o.push(`<text transform="translate(${x0 + 16},${y0 + (h - m.b + m.t) / 2}) rotate(-90)" text-anchor="middle" font-size="12">${esc(p.yLabel)}</text>`);
  p.series.forEach((s, i) => {
    const ok = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!p.logY || y > 0));
    if (p.lines && ok.length > 1) o.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${ok.map(([x, y]) => `${fx(x).toFixed(1)},${fy(y).toFixed(1)}`).join(' ')}"/>`);
    ok.forEach(([x, y], k) => {
      o.push(`<circle cx="${fx(x).toFixed(1)}" cy="${fy(y).toFixed(1)}" r="4" fill="${s.color}"><title>${esc(s.labels?.[k] ?? s.name)}: ${sig(x)}, ${sig(y)}</title></circle>`);
    });
    const ly = y0 + m.t + 8 + i * 16;
    o.push(`<rect x="${x0 + w - m.r + 10}" y="${ly - 8}" width="10" height="10" fill="${s.color}"/>`);
    o.push(`<text x="${x0 + w - m.r + 24}" y="${ly + 1}" font-size="11">${esc(s.name)}</text>`);
  });
  return o.join('\n');
}

const PALETTE = ['#2ca02c', '#9467bd', '#8c564b', '#e377c2', '#bcbd22', '#17becf', '#7f7f7f'];

export function latencyPanel(r: BenchResult): Panel {
  const series: Series[] = [];
  const steps = r.rows.filter((x) => x.kind === 'step');
  const keys = [...new Set(steps.map((x) => `${x.preset}|${x.backend}`))];
  const multiBackend = new Set(steps.map((x) => x.backend)).size > 1;
  keys.forEach((k, i) => {
    const [preset, backend] = k.split('|');
    const pts = steps.filter((x) => x.preset === preset && x.backend === backend).sort((a, b) => a.context - b.context);
    series.push({ name: multiBackend ? `${preset} (${backend})` : preset, color: COLORS[preset] ?? PALETTE[i % PALETTE.length], points: pts.map((x) => [x.context, x.msPerStep]) });
  });
  const p = r.parameters;
  return { title: `Decode step latency (${p.layers} layers, ${p.qHeads}q/${p.kvHeads}kv × ${p.headDim})`, xLabel: 'context (tokens)', yLabel: 'ms per decode step', series, logX: true, logY: true, lines: true };
}

export function errorPanel(r: EvalResult): Panel {
  const series: Series[] = r.rows.map((row, i) => ({
    name: `${row.name} (${row.nominalBits.toFixed(2)} b)`,
    color: row.role === 'preset' ? COLORS[row.preset] ?? PALETTE[i % PALETTE.length] : PALETTE[i % PALETTE.length],
    points: [[row.nominalBits, row.meanRelErr]],
  }));
  return { title: 'Attention-output error vs bits per element', xLabel: 'bits per element (quantized part)', yLabel: 'mean relative error vs fp64', series, logY: true, lines: false };
}

export function svgDocument(panels: Panel[]): string {
  const w = 960, h = 400;
  const body = panels.map((p, i) => panelSvg(p, 0, i * h, w, h)).join('\n');
  return `<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h * panels.length}" viewBox="0 0 ${w} ${h * panels.length}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${body}\n</svg>\n`;
}
