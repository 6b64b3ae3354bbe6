"""Time `MedDataset`'s header-only scan against reading every volume's voxels with nibabel.

    python bench/bench_scan.py [--n 300] [--workers 4] [--repeat 3] [--quick] [--json PATH]

Writes N synthetic 64×64×48 float32 .nii.gz files into a temporary folder (timed separately, not counted),
then times (a) `MedDataset(folder, max_workers=workers)` and (b) a sequential loop of
`np.asarray(nib.load(p).dataobj)` over the same files, `repeat` times each (alternating), and prints the best
and median time of each and the ratio of the best times. The files were just written, so both run from the
page cache: this measures parsing/decompression, not disk or network latency (which would favour the scan more).
Target (bench/README.md): the scan ≥10× faster than reading the voxels, i.e. time ratio (a)/(b) ≤ 0.1.
`--quick`: 150 files.
"""
import argparse, json, os, shutil, statistics, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch
import nibabel as nib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import default_threads, machine, peak_rss_mb, ratio_of_rounds, row
from fastmed.dataset import MedDataset
from fastmed.io import write_nifti
from fastmed.synthetic import make_affine


def make_files(folder: Path, n: int, shape=(64, 64, 48), seed=0) -> list:
    "Write `n` smooth-plus-noise float32 volumes (RAS/LPS/oblique, 3 spacings) as .nii.gz; return their paths."
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing='ij')
    base = 100 * np.exp(-(x ** 2 + y ** 2 + z ** 2) * 3)
    paths = []
    for i in range(n):
        vol = base + rng.normal(0, 5, shape).astype(np.float32)
        aff = make_affine([(1., 1., 1.), (0.9, 0.9, 2.), (1.2, 1.2, 1.2)][i % 3], ['RAS', 'LPS', 'oblique'][i % 3], shape=shape)
        paths.append(write_nifti(folder / f'case_{i:04d}.nii.gz', vol, aff))
    return paths


TARGET = 0.1


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=300, help='number of files')
    ap.add_argument('--workers', type=int, default=4, help='MedDataset max_workers')
    ap.add_argument('--repeat', type=int, default=3, help='timed runs of each method')
    ap.add_argument('--quick', action='store_true', help='150 files')
    ap.add_argument('--json', type=Path, help='also write the result to this JSON file')
    args = ap.parse_args(argv)
    if args.quick: args.n = 150
    return args


def measure(args) -> dict:
    "Run the benchmark described by `args`; print the figures and return the result rows and details."
    torch.set_num_threads(default_threads(torch.get_num_threads()))
    folder = Path(tempfile.mkdtemp(prefix='fastmed_bench_scan_'))
    try:
        t0 = time.perf_counter()
        paths = make_files(folder, args.n)
        t_gen = time.perf_counter() - t0
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"generated {args.n} files ({mb:.0f} MB on disk, 64×64×48 float32 .nii.gz) in {t_gen:.1f} s (not counted)")

        os.sync()  # flush the written files now rather than during the timings

        def scan():
            ds = MedDataset(folder, max_workers=args.workers)
            assert len(ds.df) == args.n and len(ds.failed) == 0, ds

        def read_all():
            total = sum(np.asarray(nib.load(p).dataobj).size for p in paths)
            assert total == args.n * 64 * 64 * 48

        times = {scan: [], read_all: []}
        for _ in range(args.repeat):
            for f in times:
                t0 = time.perf_counter(); f(); times[f].append(time.perf_counter() - t0)
        (a, ta), (b, tb) = [(min(t), statistics.median(t)) for t in times.values()]
        print(f"(a) MedDataset header-only scan, {args.workers} threads: best {a:.3f} s, median {ta:.3f} s ({1e3 * a / args.n:.2f} ms/file)")
        print(f"(b) nibabel full read, sequential:          best {b:.3f} s, median {tb:.3f} s ({1e3 * b / args.n:.2f} ms/file)")
        print(f"ratio (b)/(a): {b / a:.1f}x best, {tb / ta:.1f}x median")
        r = ratio_of_rounds(times[scan], times[read_all])
        rows = [row(f"dataset scan: MedDataset header-only vs nibabel voxels ({args.n} files)", ta, tb, r[0], TARGET,
                    peak_rss_mb(), spread=r[1:])]
        result = {'rows': rows, 'details': dict(vars(args), json=None, scan_s=times[scan], read_s=times[read_all],
                                                machine=machine())}
        if args.json: args.json.write_text(json.dumps(result, indent=1, default=str))
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(quick: bool) -> dict:
    "The benchmark with its default (or `--quick`) settings, for `python -m bench`."
    return measure(parse_args(['--quick'] if quick else []))


if __name__ == '__main__':
    measure(parse_args())
