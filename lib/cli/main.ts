#!/usr/bin/env node
// main.ts - the `innerq` command line: bench (decode-attention timing), eval (fidelity), info (backends).
// Every usage or input error prints one line on stderr and exits with code 2; never a stack trace
// (INNERQ_DEBUG=1 prints it for unexpected errors).
import * as fs from 'fs';
import * as path from 'path';
import { Command, CommanderError } from 'commander';
import { PRESET_NAMES } from '../options';
import { backends } from '../backends';
import { CliError, Progress, backendList, describeMachine, intList, machineInfo, nonNegativeNumber, positiveInt, presetList } from './common';
import { BenchParams, runBench } from './bench';
import { EvalParams, runEval } from './eval';
import { benchMarkdown, benchText, errorPanel, evalMarkdown, evalText, latencyPanel, svgDocument } from './report';

function writeFile(file: string, text: string, what: string): void {
  try {
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    fs.writeFileSync(file, text);
  } catch (e) {
    throw new CliError(`innerq: cannot write the ${what} file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

interface OutputOptions { json?: string; markdown?: string | boolean; svg?: string; quiet?: boolean; progress?: boolean }

function addOutputOptions(c: Command): Command {
  return c
    .option('--json <file>', 'write the machine description, all parameters and all rows as JSON')
    .option('--markdown [file]', 'print markdown tables instead of the aligned table (or write them to <file>)')
    .option('--svg <file>', 'write the chart as an SVG file')
    .option('-q, --quiet', 'no progress on stderr (progress is only shown when stderr is a terminal)')
    .option('--progress', 'show progress on stderr even when it is not a terminal (for logs of long runs)');
}

function emit(o: OutputOptions, text: string, markdown: string, json: unknown, svg: () => string): void {
  if (o.json) writeFile(o.json, JSON.stringify(json, null, 2) + '\n', 'JSON');
  if (typeof o.markdown === 'string') writeFile(o.markdown, markdown, 'markdown');
  if (o.svg) writeFile(o.svg, svg(), 'SVG');
  process.stdout.write((o.markdown === true ? markdown : text) + '\n');
}

function numberPair(name: string) {
  return (raw: string): [number, number] => {
    const parts = raw.split(',').map((s) => Number(s.trim()));
    if (parts.length !== 2 || !parts.every((x) => Number.isFinite(x) && x > 0) || parts[0] > parts[1]) {
      throw new CliError(`innerq: ${name} must be two positive numbers lo,hi with lo <= hi, got '${raw}'`);
    }
    return [parts[0], parts[1]];
  };
}

function benchCommand(): Command {
  const c = new Command('bench')
    .description('time decode-step attention per preset, backend and context length (tinybench; medians and spread)')
    .option('--presets <list>', `comma-separated presets (default: ${PRESET_NAMES.join(',')})`, presetList)
    .option('--backend <list>', 'cpu, cuda, sim or auto (auto = cuda when a device is present, else cpu); a comma-separated list runs several', backendList)
    .option('--context <list>', 'context lengths in tokens (default 4096,16384,32768; --quick: 4096)', intList('--context'))
    .option('--layers <n>', 'layers attended per decode step (default 32)', positiveInt('--layers', 1024))
    .option('--q-heads <n>', 'query heads (default 32)', positiveInt('--q-heads', 1024))
    .option('--kv-heads <n>', 'key/value heads (default 8)', positiveInt('--kv-heads', 256))
    .option('--head-dim <n>', 'head dimension (default 128)', positiveInt('--head-dim', 256))
    .option('--threads <n>', 'cpu worker threads for the main rows (default: all cores)', positiveInt('--threads', 256))
    .option('--kernels <table>', "cpu kernel table: best (AVX-512 VNNI when the CPU has it, else AVX2), avx2 (what a CPU without AVX-512 runs) or portable (default best)", (raw: string) => {
      if (raw === 'best' || raw === 'avx2' || raw === 'portable') return raw;
      throw new CliError(`innerq: --kernels must be best, avx2 or portable, got '${raw}'`);
    })
    .option('--quick', 'a short run: context 4096, 64 MiB working set, 300 ms per task')
    .option('--working-set <MiB>', 'distinct cache memory per preset that a step rotates over (default 96; --quick 64)', positiveInt('--working-set', 1 << 20))
    .option('--all-layers', 'fill every layer with its own memory (the full model cache; slow to fill, needs the memory)')
    .option('--bound-context <n>', 'context of the 1-thread rows (default 16384 if swept, else the largest context)', positiveInt('--bound-context', 1 << 22))
    .option('--resident-context <n>', 'context of the cache-resident 1-layer rows (default 2048)', positiveInt('--resident-context', 1 << 22))
    .option('--time <ms>', 'tinybench time budget per task (default 1000; --quick 300)', positiveInt('--time', 600000))
    .option('--min-iterations <n>', 'tinybench minimum iterations per task (default 5; --quick 3)', positiveInt('--min-iterations', 100000))
    .option('--rounds <n>', 'interleaved timing rounds; each task gets --time / n per round (default 4; --quick 1)', positiveInt('--rounds', 100))
    .option('--no-gemv', 'skip the key-GEMV and value-GEMV rows')
    .option('--seed <n>', 'seed of the fill data and query (default 1)', positiveInt('--seed'));
  addOutputOptions(c);
  c.action(async (o) => {
    const quick = !!o.quick;
    const contexts: number[] = o.context ?? (quick ? [4096] : [4096, 16384, 32768]);
    const boundContext: number = o.boundContext ?? (contexts.includes(16384) ? 16384 : Math.max(...contexts));
    if (!contexts.includes(boundContext)) throw new CliError(`innerq: --bound-context ${boundContext} must be one of the --context values (${contexts.join(',')})`);
    const p: BenchParams = {
      presets: o.presets ?? [...PRESET_NAMES],
      backends: o.backend ?? ['auto'],
      contexts,
      layers: o.layers ?? 32,
      qHeads: o.qHeads ?? 32,
      kvHeads: o.kvHeads ?? 8,
      headDim: o.headDim ?? 128,
      threads: o.threads ?? 0,
      kernels: o.kernels ?? 'best',
      quick,
      workingSetMiB: o.workingSet ?? (quick ? 64 : 96),
      allLayers: !!o.allLayers,
      boundContext,
      residentContext: o.residentContext ?? 2048,
      timeMs: o.time ?? (quick ? 300 : 1000),
      minIterations: o.minIterations ?? (quick ? 3 : 5),
      rounds: o.rounds ?? (quick ? 1 : 4),
      gemv: o.gemv !== false,
      seed: o.seed ?? 1,
    };
    const r = await runBench(p, new Progress(!!o.quiet, !!o.progress));
    emit(o, benchText(r), benchMarkdown(r), r, () => svgDocument([latencyPanel(r)]));
  });
  return c;
}

function evalCommand(): Command {
  const c = new Command('eval')
    .description('fidelity: attention-output error vs fp64 exact attention per preset (and InnerQ ablations), on the synthetic generator or a KV dump')
    .option('--presets <list>', `comma-separated presets (default: ${PRESET_NAMES.join(',')})`, presetList)
    .option('--no-ablations', 'skip the InnerQ ablation rows (keyNorm off, sinkTokens 0, values sym, recentTokens 0)')
    .option('--backend <name>', 'backend that runs the caches: cpu, cuda, sim or auto (default cpu)', (raw: string) => {
      const b = backendList(raw);
      if (b.length !== 1) throw new CliError('innerq: eval takes one --backend');
      return b[0];
    })
    .option('--no-oracle', 'skip the check of the backend against the fp64 reference over the dequantized cache')
    .option('--kv <file>', 'a KV dump: keys.npy (with --values) or a .safetensors file with layers.N.keys / layers.N.values [tokens][kvHeads][headDim], f32 or f16')
    .option('--values <file>', 'values .npy for a --kv .npy dump')
    .option('--queries-file <file>', 'queries .npy [n][qHeads][headDim] for a dump (default: a proxy built from the dump\'s keys)')
    .option('--seed <n>', 'first seed of the synthetic generator (default 1)', positiveInt('--seed'))
    .option('--seeds <n>', 'synthetic cases, seeds seed .. seed+n-1 (default 3)', positiveInt('--seeds', 1000))
    .option('--tokens <n>', 'synthetic: tokens (default 2048)', positiveInt('--tokens', 1 << 20))
    .option('--kv-heads <n>', 'synthetic: kv heads (default 2)', positiveInt('--kv-heads', 256))
    .option('--q-heads <n>', 'query heads (synthetic default 4 × kv heads; for a dump without queries, default 4 × its kv heads)', positiveInt('--q-heads', 1024))
    .option('--head-dim <n>', 'synthetic: head dimension, even (default 128)', positiveInt('--head-dim', 256))
    .option('--queries <n>', 'decode queries per case (default 4)', positiveInt('--queries', 10000))
    .option('--outliers <n>', 'synthetic: outlier key channel pairs per kv head (default 4)', (raw: string) => Math.floor(nonNegativeNumber('--outliers')(raw)))
    .option('--outlier-scale <lo,hi>', 'synthetic: outlier channel magnitude range (default 10,50)', numberPair('--outlier-scale'))
    .option('--sinks <n>', 'synthetic: attention-sink tokens generated (default 4)', (raw: string) => Math.floor(nonNegativeNumber('--sinks')(raw)))
    .option('--sink-boost <x>', 'synthetic: logit boost of sink tokens (default ln(tokens)+2; 0 disables sinks)', nonNegativeNumber('--sink-boost'))
    .option('--value-dof <x>', 'synthetic: Student-t degrees of freedom of value noise (default 3; lower = heavier tails)', nonNegativeNumber('--value-dof'))
    .option('--value-scale <x>', 'synthetic: value scale (default 1)', nonNegativeNumber('--value-scale'))
    .option('--value-mean <x>', 'synthetic: scale of per-channel value means (default 0.5)', nonNegativeNumber('--value-mean'))
    .option('--key-mean <x>', 'synthetic: scale of the per-head mean key (default 1)', nonNegativeNumber('--key-mean'))
    .option('--key-noise <x>', 'synthetic: per-token key noise (default 1)', nonNegativeNumber('--key-noise'))
    .option('--qk-corr <x>', 'synthetic: query/key correlation in [0,1] (default 0.5)', nonNegativeNumber('--qk-corr'))
    .option('--query-scale <x>', 'synthetic: query scale, a softmax temperature (default 1)', nonNegativeNumber('--query-scale'))
    .option('--rope-base <x>', 'synthetic: RoPE base (default 10000)', nonNegativeNumber('--rope-base'))
    .option('--no-rope', 'synthetic: no RoPE rotation of keys and queries');
  addOutputOptions(c);
  c.action((o) => {
    if (o.values && !o.kv) throw new CliError('innerq: --values needs --kv <keys.npy>');
    if (o.queriesFile && !o.kv) throw new CliError('innerq: --queries-file needs --kv');
    if (o.qkCorr !== undefined && o.qkCorr > 1) throw new CliError(`innerq: --qk-corr must be between 0 and 1, got ${o.qkCorr}`);
    const kvHeads = o.kvHeads ?? 2;
    const qHeads = o.qHeads ?? kvHeads * 4;
    const headDim = o.headDim ?? 128;
    if (!o.kv) {
      if (qHeads % kvHeads !== 0) throw new CliError(`innerq: --q-heads ${qHeads} must be a multiple of --kv-heads ${kvHeads}`);
      if (headDim % 2 !== 0) throw new CliError(`innerq: --head-dim ${headDim} must be even (RoPE pairs)`);
    }
    const p: EvalParams = {
      source: o.kv ? 'dump' : 'synthetic',
      presets: o.presets ?? [...PRESET_NAMES],
      ablations: o.ablations !== false,
      backend: o.backend ?? 'cpu',
      oracle: o.oracle !== false,
      seed: o.seed ?? 1,
      seeds: o.kv ? 1 : o.seeds ?? 3,
      synthetic: {
        tokens: o.tokens ?? 2048, kvHeads, qHeads, headDim, queries: o.queries ?? 4,
        outlierChannels: o.outliers, outlierScale: o.outlierScale, sinkTokens: o.sinks, sinkLogitBoost: o.sinkBoost,
        valueDof: o.valueDof === 0 ? Infinity : o.valueDof, valueScale: o.valueScale, valueMean: o.valueMean, keyMean: o.keyMean, keyNoise: o.keyNoise,
        queryKeyCorrelation: o.qkCorr, queryScale: o.queryScale, ropeBase: o.ropeBase, rope: o.rope !== false,
      },
      kv: o.kv,
      values: o.values,
      queriesFile: o.queriesFile,
      queries: o.queries ?? 4,
      qHeads: o.qHeads,
    };
    const r = runEval(p, new Progress(!!o.quiet, !!o.progress));
    emit(o, evalText(r), evalMarkdown(r), r, () => svgDocument([errorPanel(r)]));
  });
  return c;
}

function infoCommand(): Command {
  return new Command('info')
    .description('backends, CPU features, CUDA devices (or why there are none), build flags, machine')
    .option('--json <file>', 'write the same as JSON')
    .action((o) => {
      const m = machineInfo();
      const b = backends();
      const yes = (x: boolean): string => (x ? 'yes' : 'no');
      const lines = [
        `innerq ${version()}`,
        `machine:   ${describeMachine(m)}`,
        `cpu:       available; avx2 ${yes(b.cpu.avx2)}, fma ${yes(b.cpu.fma)}, f16c ${yes(b.cpu.f16c)}, avx512vnni ${yes(b.cpu.avx512vnni)}; ${b.cpu.threads} threads; kernels ${b.cpu.kernels}`,
        `cuda:      ${b.cuda.compiled ? 'compiled' : 'not compiled'}; ${b.cuda.devices} device(s)${b.cuda.deviceNames.length ? ` (${b.cuda.deviceNames.join(', ')})` : ''}${b.cuda.error ? `; ${b.cuda.error}` : ''}`,
        `sim:       ${b.sim.compiled ? 'compiled (the CUDA kernels run on the CPU)' : 'not compiled'}`,
        `auto:      ${b.cuda.devices > 0 ? 'cuda' : 'cpu'}`,
        `build:     ${b.buildFlags}`,
      ];
      if (o.json) writeFile(o.json, JSON.stringify({ tool: 'innerq info', version: version(), machine: m }, null, 2) + '\n', 'JSON');
      process.stdout.write(lines.join('\n') + '\n');
    });
}

function version(): string {
  try {
    return JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')).version;
  } catch {
    return 'unknown';
  }
}

export async function main(argv: string[]): Promise<number> {
  const program = new Command('innerq');
  program
    .description('KV-cache quantization for LLM decoding: benchmark and evaluate fp16, KIVI-style and InnerQ caches')
    .version(version())
    .exitOverride()
    .showSuggestionAfterError()
    .configureOutput({ outputError: (s, write) => write(s.startsWith('error: ') ? `innerq: ${s.slice(7)}` : s) });
  program.addCommand(benchCommand());
  program.addCommand(evalCommand());
  program.addCommand(infoCommand());
  // subcommands get the same error handling
  for (const c of program.commands) {
    c.exitOverride().showSuggestionAfterError().configureOutput({ outputError: (s, write) => write(s.startsWith('error: ') ? `innerq: ${s.slice(7)}` : s) });
    c.allowExcessArguments(false);
  }
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // commander already printed its message (help and version exit 0)
      return e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.exitCode === 0 ? 0 : 2;
    }
    if (e instanceof CliError) {
      process.stderr.write(e.message + '\n');
      return e.exitCode;
    }
    if (e instanceof TypeError || e instanceof RangeError || (e as { code?: string })?.code?.startsWith?.('ERR_INNERQ')) {
      // the facade's validation messages are already clear
      process.stderr.write(`innerq: ${(e as Error).message}\n`);
      if (process.env.INNERQ_DEBUG === '1') process.stderr.write(`${(e as Error).stack}\n`);
      return 2;
    }
    process.stderr.write(`innerq: unexpected error: ${(e as Error)?.message ?? String(e)} (set INNERQ_DEBUG=1 for the stack)\n`);
    if (process.env.INNERQ_DEBUG === '1') process.stderr.write(`${(e as Error)?.stack}\n`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv).then((code) => {
    process.exitCode = code;
  });
}

