"""Time one data-loading epoch of fastmed's DataLoaders against a plain torch DataLoader over the same TorchIO transforms.

    python bench/bench_dataloader.py [--n 24] [--size 64] [--bs 2] [--workers 2] [--rounds 3] [--quick] [--json PATH]

Writes N seeded image/mask pairs (`make_segmentation_pair`, RAS 1 mm, size³ float32 images and uint8 masks) as
`.nii.gz` (not counted); the last quarter is the validation set. Both sides read every file in every epoch,
z-normalise the image and flip image and mask together along each axis with probability 0.5 (training set
only), batch `bs` items with `workers` worker processes and iterate every training and validation batch:
(a) plain PyTorch + TorchIO: `tio.SubjectsDataset` of `Subject(image=ScalarImage(path), mask=LabelMap(path))` with
    `tio.Compose([tio.ZNormalization(), tio.RandomFlip(axes=(0, 1, 2))])` (validation: `ZNormalization` only),
    `torch.utils.data.DataLoader(shuffle=True, drop_last=True, num_workers=workers)` and a collate function that
    stacks the image and mask tensors (int64 masks);
(b) fastmed: `MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), ..., item_tfms=[ZNormalization(),
    RandomFlip(axes=(0, 1, 2))]).dataloaders(df, bs, num_workers=workers)` (geometry kept on every item).
One warm-up epoch each, then `rounds` rounds of one epoch of each side, alternating; the ratio (b)/(a) is the
median of the per-round ratios. Target (bench/README.md): ≤ 1.1× (the wrapper should cost little).
"""
import argparse, json, shutil, statistics, sys, tempfile, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore')
import torch
import torchio as tio
from fastai.data.transforms import ColReader, ColSplitter
from fastai.vision.data import ImageBlock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_training import make_files
from bench.common import default_threads, interleaved, machine, peak_rss_mb, ratio_of_rounds, row
from fastmed.core import MedImage
from fastmed.data import MedDataBlock, MedMaskBlock
from fastmed.transforms import RandomFlip, ZNormalization

TARGET = 1.1


def collate(subjects: list) -> tuple:
    "(images (B, 1, X, Y, Z) float32, masks (B, 1, X, Y, Z) int64) from TorchIO subjects."
    return (torch.stack([s['image'].data.float() for s in subjects]),
            torch.stack([s['mask'].data.long() for s in subjects]))


def torch_loaders(df, bs: int, workers: int) -> tuple:
    "(train, valid) plain torch DataLoaders over TorchIO `SubjectsDataset`s of the files."
    def subjects(rows): return [tio.Subject(image=tio.ScalarImage(r.image), mask=tio.LabelMap(r.mask)) for r in rows.itertuples()]
    train = tio.SubjectsDataset(subjects(df[~df.is_val]), transform=tio.Compose([tio.ZNormalization(), tio.RandomFlip(axes=(0, 1, 2))]))
    valid = tio.SubjectsDataset(subjects(df[df.is_val]), transform=tio.ZNormalization())
    kw = dict(batch_size=bs, num_workers=workers, collate_fn=collate)
    return (torch.utils.data.DataLoader(train, shuffle=True, drop_last=True, **kw),
            torch.utils.data.DataLoader(valid, shuffle=False, **kw))


def fastmed_loaders(df, bs: int, workers: int):
    "fastmed's DataLoaders over the same files and transforms."
    dblock = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('image'),
                          get_y=ColReader('mask'), splitter=ColSplitter('is_val'),
                          item_tfms=[ZNormalization(), RandomFlip(axes=(0, 1, 2))])
    return dblock.dataloaders(df, bs=bs, num_workers=workers, device='cpu')


def epoch(loaders) -> int:
    "Iterate every batch of each loader once; return the number of batches."
    n = 0
    for dl in loaders:
        for x, y in dl: n += 1
    return n


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=24, help='number of image/mask pairs (a quarter for validation)')
    ap.add_argument('--size', type=int, default=64, help='cubic volume size')
    ap.add_argument('--bs', type=int, default=2, help='batch size')
    ap.add_argument('--workers', type=int, default=2, help='DataLoader workers on both sides')
    ap.add_argument('--rounds', type=int, default=3, help='timed rounds (one epoch of each side per round)')
    ap.add_argument('--quick', action='store_true', help='12 volumes of 48³, 2 rounds')
    ap.add_argument('--json', type=Path, help='also write the result to this JSON file')
    args = ap.parse_args(argv)
    if args.quick: args.n, args.size, args.rounds = 12, 48, 2
    return args


def measure(args) -> dict:
    "Run the benchmark described by `args`; print the figures and return the result rows and details."
    torch.set_num_threads(default_threads(torch.get_num_threads()))
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix='fastmed_bench_dataloader_'))
    try:
        df = make_files(folder, args.n, args.size)
        plain, dls = torch_loaders(df, args.bs, args.workers), fastmed_loaders(df, args.bs, args.workers)
        fm = (dls.train, dls.valid)
        xa, ya = next(iter(plain[1])); xb, yb = next(iter(dls.valid))  # same validation batch on both sides
        assert torch.allclose(xa, xb.as_subclass(torch.Tensor).cpu(), atol=1e-5) and torch.equal(ya, yb.as_subclass(torch.Tensor).cpu())
        counts = {}
        sides = {'torch': lambda: counts.__setitem__('torch', epoch(plain)), 'fastmed': lambda: counts.__setitem__('fastmed', epoch(fm))}
        times = interleaved(sides, args.rounds, warmup=1)
        assert counts['torch'] == counts['fastmed'], counts
        med = {k: statistics.median(v) for k, v in times.items()}
        r = ratio_of_rounds(times['fastmed'], times['torch'])
        print(f"epoch = {counts['fastmed']} batches of {args.bs}×1×{args.size}³ (.nii.gz read, z-normalise, random flips), "
              f"{args.workers} workers; {args.rounds} rounds after a warm-up")
        print(f"(a) torch DataLoader + TorchIO: median {med['torch']:.3f} s, best {min(times['torch']):.3f} s")
        print(f"(b) fastmed MedDataBlock:       median {med['fastmed']:.3f} s, best {min(times['fastmed']):.3f} s")
        print(f"ratio (b)/(a): {r[0]:.3f}x median of rounds (range {r[1]:.3f}-{r[2]:.3f}; target <= {TARGET}x: "
              f"{'met' if r[0] <= TARGET else 'NOT met'})")
        rows = [row(f"data pipeline epoch: fastmed DataLoaders vs torch DataLoader + TorchIO ({args.n}×{args.size}³, "
                    f"{args.workers} workers)", med['fastmed'], med['torch'], r[0], TARGET, peak_rss_mb(), spread=r[1:])]
        result = {'rows': rows, 'details': dict(vars(args), json=None, times_s=times, machine=machine())}
        if args.json: args.json.write_text(json.dumps(result, indent=1, default=str))
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(quick: bool) -> dict:
    "The benchmark with its default (or `--quick`) settings, for `python -m bench`."
    return measure(parse_args(['--quick'] if quick else []))


if __name__ == '__main__':
    measure(parse_args())
