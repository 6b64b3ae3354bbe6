"""Time one epoch of a segmentation DataLoaders on source files (reorient + resample every item) against the same data from `preprocess_dataset`'s cache.

    python bench/bench_cache.py [--n 24] [--spacing 2] [--workers 2] [--repeat 3] [--quick] [--json PATH]

Writes N synthetic image/mask pairs as .nii.gz into a temporary folder (`make_segmentation_pair`, not
counted): every source is LPS (half of them also rotated by 15°, i.e. oblique), alternately 1.2 mm isotropic
(160×160×100) and anisotropic 0.9×0.9×3 mm (200×200×40). Both sides use the same `MedDataBlock`
(image + `MedMaskBlock`, `RandomSplitter(0.2, seed=42)`, item tfms `PadOrCrop(96, 96, 64)` + `ZNormalization()`,
bs 2, num_workers 0); an epoch iterates every training and validation batch.
(a) baseline: the block reads the sources with `reorder=True, resample=spacing`, so each item is inflated,
reoriented and resampled (linear for the image, nearest for the mask) in every epoch;
(b) cached: `preprocess_dataset(..., reorder=True, resample=spacing)` once (its build time and the time of a
second, no-op call are printed but not part of the ratio), then the block reads the cached `.nii` files with
`reorder=False, resample=None`.
The first epoch of each side is checked to give the same batches (images within 1e-5, identical masks).
Each side runs `repeat` timed epochs, alternating; the ratio is of the best epochs (median also printed).
The files were just written, so both sides read from the page cache: this measures decompression and
preprocessing, not disk latency. Target (bench/README.md): cached epoch ≥3× faster, i.e. time ratio (b)/(a) ≤ 1/3.
"""
import argparse, json, os, shutil, statistics, sys, tempfile, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore', category=FutureWarning)
import numpy as np
import pandas as pd
import torch
from fastai.data.transforms import ColReader, RandomSplitter
from fastai.vision.data import ImageBlock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import default_threads, machine, peak_rss_mb, ratio_of_rounds, row
from fastmed.cache import preprocess_dataset
from fastmed.core import MedImage
from fastmed.data import MedDataBlock, MedMaskBlock
from fastmed.io import write_nifti
from fastmed.synthetic import make_affine, make_segmentation_pair
from fastmed.transforms import PadOrCrop, ZNormalization

TARGET = 3.0


def source_grid(i: int, quick: bool) -> tuple:
    "(shape, LPS affine) of case `i`: 1.2 mm isotropic or 0.9×0.9×3 mm, every other pair rotated by 15° (oblique)."
    spacing, shape = [((1.2, 1.2, 1.2), (160, 160, 100)), ((0.9, 0.9, 3.), (200, 200, 40))][i % 2]
    if quick: shape = tuple(s // 2 for s in shape)
    aff = make_affine(spacing, 'LPS', shape=shape)
    if (i // 2) % 2:
        c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
        aff = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) @ aff
    return shape, aff


def make_files(folder: Path, n: int, quick: bool) -> pd.DataFrame:
    "Write `n` seeded image/mask pairs as .nii.gz; return a DataFrame with `image` and `mask` columns."
    rows = []
    for i in range(n):
        shape, aff = source_grid(i, quick)
        img, mask = make_segmentation_pair(shape, aff, seed=i)
        rows.append(dict(image=str(write_nifti(folder / f'case_{i:03d}_img.nii.gz', img, aff)),
                         mask=str(write_nifti(folder / f'case_{i:03d}_msk.nii.gz', mask, aff, dtype=np.uint8))))
    return pd.DataFrame(rows)


def dataloaders(df: pd.DataFrame, size, **preprocessing):
    "The benchmark's segmentation DataLoaders on `df` with the given reorder/resample settings."
    dblock = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('image'),
                          get_y=ColReader('mask'), splitter=RandomSplitter(0.2, seed=42),
                          item_tfms=[PadOrCrop(size), ZNormalization()], **preprocessing)
    return dblock.dataloaders(df, bs=2, num_workers=0)


def epoch(dls) -> tuple:
    "Iterate every training and validation batch once; return (seconds, number of batches)."
    t0, n = time.perf_counter(), 0
    for dl in (dls.train, dls.valid):
        for _ in dl: n += 1
    return time.perf_counter() - t0, n


def check_same(dls_a, dls_b):
    "Assert that the two DataLoaders give the same unshuffled batches."
    for dl_a, dl_b in ((dls_a.train.new(shuffle=False), dls_b.train.new(shuffle=False)), (dls_a.valid, dls_b.valid)):
        for (xa, ya), (xb, yb) in zip(dl_a, dl_b):
            assert xa.shape == xb.shape and float((xa - xb).abs().max()) < 1e-5, 'images differ'
            assert torch.equal(ya.as_subclass(torch.Tensor), yb.as_subclass(torch.Tensor)), 'masks differ'


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=24, help='number of image/mask pairs')
    ap.add_argument('--spacing', type=float, default=2., help='target spacing in mm')
    ap.add_argument('--workers', type=int, default=2, help='preprocess_dataset max_workers')
    ap.add_argument('--repeat', type=int, default=3, help='timed epochs of each side')
    ap.add_argument('--quick', action='store_true', help='8 half-size pairs, 2 timed epochs each (smoke test)')
    ap.add_argument('--json', type=Path, help='also write the result to this JSON file')
    args = ap.parse_args(argv)
    if args.quick: args.n, args.repeat = 8, 2
    return args


def measure(args) -> dict:
    "Run the benchmark described by `args`; print the figures and return the result rows and details."
    torch.set_num_threads(default_threads(torch.get_num_threads()))
    torch.manual_seed(0)
    size = (48, 48, 32) if args.quick else (96, 96, 64)
    folder = Path(tempfile.mkdtemp(prefix='fastmed_bench_cache_'))
    try:
        t0 = time.perf_counter()
        df = make_files(folder / 'src', args.n, args.quick)
        mb = sum(os.path.getsize(p) for p in df.image.tolist() + df['mask'].tolist()) / 1e6
        print(f"generated {args.n} LPS/oblique image+mask pairs (1.2 mm iso and 0.9×0.9×3 mm, {mb:.0f} MB .nii.gz) "
              f"in {time.perf_counter() - t0:.1f} s (not counted)")
        os.sync()

        t0 = time.perf_counter()
        cdf, failed = preprocess_dataset(df, 'image', folder / 'cache', mask_cols='mask', reorder=True,
                                         resample=args.spacing, max_workers=args.workers, progress=False)
        t_build = time.perf_counter() - t0
        assert len(cdf) == args.n and len(failed) == 0 and cdf.attrs['cache']['written'] == 2 * args.n
        t0 = time.perf_counter()
        again, _ = preprocess_dataset(df, 'image', folder / 'cache', mask_cols='mask', reorder=True,
                                      resample=args.spacing, max_workers=args.workers, progress=False)
        t_again = time.perf_counter() - t0
        assert again.attrs['cache']['reused'] == 2 * args.n
        cmb = sum(p.stat().st_size for p in (folder / 'cache').iterdir()) / 1e6
        print(f"cache build ({2 * args.n} volumes, {args.workers} threads): {t_build:.2f} s, {cmb:.0f} MB .nii; "
              f"second call (all reused): {t_again:.3f} s (neither is in the ratio)")

        dls_src = dataloaders(df, size, reorder=True, resample=args.spacing)
        dls_cch = dataloaders(cdf, size, reorder=False, resample=None)
        check_same(dls_src, dls_cch)  # also warms up both sides
        times = {'source': [], 'cache': []}
        for _ in range(args.repeat):
            for name, dls in (('source', dls_src), ('cache', dls_cch)):
                t, n_batches = epoch(dls)
                times[name].append(t)
        (a, ma), (b, mb_) = [(min(t), statistics.median(t)) for t in times.values()]
        print(f"epoch = {n_batches} batches of 2 (PadOrCrop{size} + ZNormalization, num_workers 0), spacing {args.spacing} mm")
        print(f"(a) source files, reorder + resample per item: best {a:.3f} s, median {ma:.3f} s")
        print(f"(b) cached files, no preprocessing:             best {b:.3f} s, median {mb_:.3f} s")
        ratio = a / b
        print(f"ratio (a)/(b): {ratio:.1f}x best, {ma / mb_:.1f}x median (target >= {TARGET:.0f}x: "
              f"{'met' if ratio >= TARGET else 'NOT met'})")
        r = ratio_of_rounds(times['cache'], times['source'])
        rows = [row(f"data pipeline epoch: cached vs reorient+resample each item ({args.n} pairs)", mb_, ma, r[0],
                    round(1 / TARGET, 3), peak_rss_mb(), spread=r[1:],
                    note=f"cache build {t_build:.1f} s once (not in the ratio)")]
        result = {'rows': rows, 'details': dict(vars(args), json=None, times_s=times, cache_build_s=t_build,
                                                cache_reuse_s=t_again, machine=machine())}
        if args.json: args.json.write_text(json.dumps(result, indent=1, default=str))
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(quick: bool) -> dict:
    "The benchmark with its default (or `--quick`) settings, for `python -m bench`."
    return measure(parse_args(['--quick'] if quick else []))


if __name__ == '__main__':
    measure(parse_args())
