"""Run every fastmed benchmark and print one table of time ratios, each against a baseline doing the same job.

    python -m bench [--quick] [--only NAME ...] [--json PATH]      (or `make bench`, `make bench ARGS=--quick`)

Each benchmark (bench/bench_*.py, also runnable on its own with more options) runs in its own Python process, so
imports, threads and peak memory do not mix; inside it, both sides are measured in the same run, in interleaved
rounds. The table gives, per row: the fastmed and baseline times (medians over the rounds, seconds), their ratio
fastmed / baseline (median of the per-round ratios: lower is better), the target on that ratio from bench/README.md
(or on fastmed's seconds, marked `s`), whether it is met (`noise`: the median misses it but the per-round
ratios straddle it, so the miss is within this run's noise), and the peak memory (the benchmark process's peak RSS
with its children on the CPU, which covers both sides; `torch.cuda.max_memory_allocated` of fastmed's side on a
GPU). All data are synthetic, generated on the fly with fixed seeds. The rows, the per-benchmark details and
the machine are written as JSON to bench/results/latest.json (or `--json PATH`). `--quick` shrinks every
benchmark (about 2 minutes in all here); the full mode takes about 4 minutes on this 2-core machine.

`--threads` (default 1) fixes `torch.set_num_threads` in every benchmark. One thread, because on a 2-core machine
shared with other work an OpenMP team of 2 collapses whenever one of its threads is descheduled (the other spins
at each barrier): a UNet training step measured 1.1-1.4 µs/voxel with 1 thread and 2-49 µs/voxel with 2 threads
under the same load, which would drown every ratio in noise. Use `--threads 2` (or more) on a dedicated machine.
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

BENCHMARKS = ('scan', 'cache', 'dataloader', 'training', 'sliding_window', 'inference', 'batch_augment')
MARK = '@@bench-result@@'
ROOT = Path(__file__).resolve().parent.parent


def run_one(name: str, quick: bool, threads: int) -> dict:
    "Run `bench/bench_<name>.py`'s `run(quick)` in a fresh process, echo its report, return its result (or the error)."
    code = (f"import json; from bench.bench_{name} import run; r = run({quick}); "
            f"print({MARK!r} + json.dumps(r, default=str))")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, 'PYTHONPATH': str(ROOT), 'MPLBACKEND': 'Agg',
                              'FASTMED_BENCH_THREADS': str(threads)})
    wall = time.perf_counter() - t0
    lines = res.stdout.splitlines()
    for l in lines:
        if not l.startswith(MARK): print('    ' + l)
    found = [l[len(MARK):] for l in lines if l.startswith(MARK)]
    if res.returncode != 0 or not found:
        print(f"    {name} FAILED (exit {res.returncode}):\n" + res.stderr[-3000:])
        return {'name': name, 'error': res.stderr[-3000:], 'wall_s': wall, 'rows': []}
    return {'name': name, 'wall_s': wall, **json.loads(found[-1])}


def fmt_target(r: dict) -> str:
    if r['target'] is None: return '-'
    return f"<= {r['target']:g} s" if r['target_on'] == 'fastmed_s' else f"<= {r['target']:g}x"


def verdict(r: dict) -> str:
    "yes / NO / 'noise' (missed by the median, but some rounds met it: within this run's noise) / - (no target)."
    if r['met'] is None: return '-'
    return 'yes' if r['met'] else ('noise' if r.get('within_noise') else 'NO')


def table(rows: list) -> str:
    "The rows as a fixed-width text table."
    head = ('benchmark', 'fastmed s', 'baseline s', 'ratio', 'target', 'met?', 'peak MB')
    body = [(r['benchmark'], f"{r['fastmed_s']:.3f}", f"{r['baseline_s']:.3f}", f"{r['ratio']:.3f}x", fmt_target(r),
             verdict(r), f"{r['peak_mb']:.0f}") for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    line = lambda cells: '  '.join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return '\n'.join([line(head), line(['-' * w for w in widths])] + [line(b) for b in body])


def write_json(path: Path, data: dict):
    "Write `data` to `path` atomically (temp file in the same folder + os.replace)."
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.tmp')
    with os.fdopen(fd, 'w') as f: json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='small sizes and few rounds (under 3 minutes in all)')
    ap.add_argument('--only', nargs='+', choices=BENCHMARKS, help='run only these benchmarks')
    ap.add_argument('--threads', type=int, default=1,
                    help='torch.set_num_threads in every benchmark (1: stable figures on a shared machine, see the docstring)')
    ap.add_argument('--json', type=Path, default=ROOT / 'bench' / 'results' / 'latest.json', help='where to write the results')
    args = ap.parse_args(argv)
    t0, results = time.perf_counter(), []
    for name in args.only or BENCHMARKS:
        print(f"== {name}", flush=True)
        results.append(run_one(name, args.quick, args.threads))
        print(f"   ({results[-1]['wall_s']:.1f} s)", flush=True)
    rows = [r for res in results for r in res['rows']]
    wall = time.perf_counter() - t0
    print(f"\nfastmed benchmarks ({'quick' if args.quick else 'full'} mode, {wall:.0f} s, {args.threads} torch thread(s); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; ratio = fastmed / baseline time, lower is better)\n")
    print(table(rows))
    failed = [r['name'] for r in results if 'error' in r]
    if failed: print(f"\nFAILED: {', '.join(failed)}")
    write_json(args.json, {'mode': 'quick' if args.quick else 'full', 'wall_s': wall, 'threads': args.threads, 'loadavg': os.getloadavg(),
                           'rows': rows, 'benchmarks': results})
    print(f"\nJSON: {args.json}")
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
