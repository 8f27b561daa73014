// common.ts - shared pieces of the innerq CLI: the usage error, option parsers, progress, machine description,
// aligned text tables and markdown tables.
import * as fs from 'fs';
import * as os from 'os';
import { backends, BackendsInfo } from '../backends';
import { PRESET_NAMES, PresetName } from '../options';

/** A usage or input error: printed as one line on stderr, exit code 2. */
export class CliError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode = 2) {
    super(message);
    this.name = 'CliError';
    this.exitCode = exitCode;
  }
}

export function positiveInt(name: string, max = Number.MAX_SAFE_INTEGER) {
  return (raw: string): number => {
    const n = Number(raw);
    if (!/^\s*\d+\s*$/.test(raw) || !Number.isSafeInteger(n) || n < 1 || n > max) {
      throw new CliError(`innerq: ${name} must be an integer between 1 and ${max}, got '${raw}'`);
    }
    return n;
  };
}

export function nonNegativeNumber(name: string) {
  return (raw: string): number => {
    const n = Number(raw);
    if (raw.trim() === '' || !Number.isFinite(n) || n < 0) throw new CliError(`innerq: ${name} must be a finite number >= 0, got '${raw}'`);
    return n;
  };
}

export function intList(name: string, max = 1 << 22) {
  return (raw: string): number[] => {
    const parts = raw.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
    if (parts.length === 0) throw new CliError(`innerq: ${name} must be a comma-separated list of positive integers, got '${raw}'`);
    return parts.map((p) => positiveInt(name, max)(p));
  };
}

export function presetList(raw: string): PresetName[] {
  const parts = raw.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
  if (parts.length === 0) throw new CliError(`innerq: --presets must list at least one of ${PRESET_NAMES.join(', ')}`);
  for (const p of parts) {
    if (!(PRESET_NAMES as readonly string[]).includes(p)) {
      throw new CliError(`innerq: unknown preset '${p}' in --presets (expected a comma-separated list of ${PRESET_NAMES.join(', ')})`);
    }
  }
  return [...new Set(parts)] as PresetName[];
}

export type BackendChoice = 'auto' | 'cpu' | 'cuda' | 'sim';
export function backendList(raw: string): BackendChoice[] {
  const allowed = ['auto', 'cpu', 'cuda', 'sim'];
  const parts = raw.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
  if (parts.length === 0) throw new CliError(`innerq: --backend must be one of ${allowed.join(', ')}`);
  for (const p of parts) if (!allowed.includes(p)) throw new CliError(`innerq: unknown backend '${p}' in --backend (expected ${allowed.join(', ')}, or a comma-separated list)`);
  return [...new Set(parts)] as BackendChoice[];
}

/** Progress lines on stderr, only when stderr is a terminal and --quiet was not given. */
export class Progress {
  private readonly on: boolean;
  private readonly started = Date.now();
  constructor(quiet: boolean, force = false) {
    this.on = !quiet && (force || process.stderr.isTTY === true);
  }
  say(msg: string): void {
    if (this.on) process.stderr.write(`[${((Date.now() - this.started) / 1000).toFixed(1).padStart(6)} s] ${msg}\n`);
  }
}

export interface MachineInfo {
  cpuModel: string;
  /** vendor, family and model numbers from /proc/cpuinfo (Linux x86), or null elsewhere; see cpuIdentity */
  cpuId: CpuIdentity | null;
  cores: number;
  totalMemoryBytes: number;
  freeMemoryBytes: number;
  loadAverage: number[];
  platform: string;
  arch: string;
  osRelease: string;
  node: string;
  /** last-level cache size in bytes from sysfs (Linux), or null where it cannot be read */
  l3Bytes: number | null;
  backends: BackendsInfo;
  date: string;
}

/**
 * Which core design a CPU is. Cloud VMs often report only "AMD EPYC" as the model name, yet the core behind it
 * changes what the kernels can do (AVX-512 issue rules, memory system), so results recorded on two such machines
 * must not be confused. The microarchitecture is named where the vendor's family/model numbering says it
 * unambiguously (AMD: family 23 = Zen 1/Zen+/Zen 2, 25 = Zen 3/Zen 4 by model range, 26 = Zen 5); otherwise null.
 */
export interface CpuIdentity {
  vendor: string;
  family: number;
  model: number;
  microarchitecture: string | null;
}

/** AMD family 25 (19h) model ranges of Zen 4 parts (Genoa, Raphael, Phoenix, Bergamo/Siena); the rest are Zen 3. */
const ZEN4_MODEL_RANGES: Array<[number, number]> = [
  [0x10, 0x1f],
  [0x60, 0x7f],
  [0xa0, 0xaf],
];

export function microarchitectureOf(vendor: string, family: number, model: number): string | null {
  if (vendor !== 'AuthenticAMD') return null;
  if (family === 23) return model >= 0x30 ? 'zen2' : 'zen1';
  if (family === 25) return ZEN4_MODEL_RANGES.some(([lo, hi]) => model >= lo && model <= hi) ? 'zen4' : 'zen3';
  if (family === 26) return 'zen5';
  return null;
}

/** Parses the first processor block of /proc/cpuinfo text; null when a field is missing. */
export function parseCpuInfo(text: string): CpuIdentity | null {
  const field = (name: string): string | null => {
    const m = new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm').exec(text);
    return m ? m[1].trim() : null;
  };
  const vendor = field('vendor_id');
  const family = Number(field('cpu family'));
  const model = Number(field('model'));
  if (vendor === null || !Number.isInteger(family) || !Number.isInteger(model)) return null;
  return { vendor, family, model, microarchitecture: microarchitectureOf(vendor, family, model) };
}

function cpuIdentity(): CpuIdentity | null {
  try {
    return parseCpuInfo(fs.readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return null;
  }
}

/** The largest cache level sysfs reports for cpu0 ("48M", "32768K"), or null. */
function lastLevelCacheBytes(): number | null {
  let best: number | null = null;
  for (let i = 0; i < 8; i++) {
    try {
      const text = fs.readFileSync(`/sys/devices/system/cpu/cpu0/cache/index${i}/size`, 'utf8').trim();
      const m = /^(\d+)([KMG]?)$/.exec(text);
      if (!m) continue;
      const bytes = Number(m[1]) * ({ '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 } as Record<string, number>)[m[2]];
      if (best === null || bytes > best) best = bytes;
    } catch {
      break;
    }
  }
  return best;
}

export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  return {
    cpuModel: cpus[0]?.model?.trim() ?? 'unknown',
    cpuId: cpuIdentity(),
    cores: cpus.length,
    totalMemoryBytes: os.totalmem(),
    freeMemoryBytes: os.freemem(),
    loadAverage: os.loadavg().map((x) => Math.round(x * 100) / 100),
    platform: process.platform,
    arch: process.arch,
    osRelease: os.release(),
    node: process.version,
    l3Bytes: lastLevelCacheBytes(),
    backends: backends(),
    date: new Date().toISOString(),
  };
}

export function describeMachine(m: MachineInfo): string {
  const id = m.cpuId
    ? ` (${m.cpuId.vendor} family ${m.cpuId.family} model ${m.cpuId.model}${m.cpuId.microarchitecture ? `, ${m.cpuId.microarchitecture}` : ''})`
    : '';
  return `${m.cpuModel}${id}, ${m.cores} cores, ${(m.totalMemoryBytes / 2 ** 30).toFixed(1)} GiB RAM, node ${m.node}, ${m.platform}/${m.arch}, load average ${m.loadAverage.join(' ')}`;
}

export interface Column<R> {
  header: string;
  get: (r: R) => string | number | null | undefined;
  /** numbers are right-aligned by default */
  align?: 'left' | 'right';
}

function cell<R>(c: Column<R>, r: R): string {
  const v = c.get(r);
  if (v === null || v === undefined) return '';
  return String(v);
}

/** An aligned plain-text table. */
export function textTable<R>(rows: R[], cols: Column<R>[]): string {
  const cells = rows.map((r) => cols.map((c) => cell(c, r)));
  const widths = cols.map((c, i) => Math.max(c.header.length, ...cells.map((row) => row[i].length)));
  const pad = (s: string, i: number): string => (cols[i].align === 'left' ? s.padEnd(widths[i]) : s.padStart(widths[i]));
  const lines = [cols.map((c, i) => pad(c.header, i)).join('  ').replace(/\s+$/, ''), widths.map((w) => '-'.repeat(w)).join('  ')];
  for (const row of cells) lines.push(row.map((s, i) => pad(s, i)).join('  ').replace(/\s+$/, ''));
  return lines.join('\n');
}

/** A GitHub-flavoured markdown table. */
export function markdownTable<R>(rows: R[], cols: Column<R>[]): string {
  const esc = (s: string): string => s.replace(/\|/g, '\\|');
  const lines = [
    `| ${cols.map((c) => esc(c.header)).join(' | ')} |`,
    `|${cols.map((c) => (c.align === 'left' ? ':---' : '---:')).join('|')}|`,
  ];
  for (const r of rows) lines.push(`| ${cols.map((c) => esc(cell(c, r))).join(' | ')} |`);
  return lines.join('\n');
}

export function fixed(x: number | null | undefined, digits: number): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '';
  return x.toFixed(digits);
}

/** 3 significant digits, plain notation for ordinary magnitudes and exponent notation for tiny ones. */
export function sig(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '';
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a < 1e-3 || a >= 1e6) return x.toExponential(2);
  return x.toPrecision(3);
}

export function mib(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(1);
}

export function humanBytes(bytes: number): string {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Linear-interpolated quantile of a list (q in [0, 1]). */
export function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos),
    hi = Math.ceil(pos);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}
