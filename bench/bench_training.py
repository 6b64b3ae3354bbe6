"""Time a training epoch of fastmed's Learner against a plain PyTorch loop over preloaded tensors (same model, data, loss, optimizer, steps).

    python bench/bench_training.py [--n 24] [--size 64] [--bs 2] [--threads 1] [--workers 2] [--rounds 3]
                                   [--device cpu|cuda] [--quick] [--profile N] [--json PATH]

Writes N seeded image/mask pairs (`make_segmentation_pair`, RAS 1 mm, size³ float32 images and uint8 masks) as
`.nii.gz` into a temporary folder (not counted); the last quarter is the validation set. Every side trains the
same MONAI `UNet(3, 1, 2, (16, 32, 64), (2, 2), num_res_units=1)` (same seeded initial weights, one copy each)
with MONAI's `DiceCELoss(to_onehot_y=True, softmax=True)` and Adam (lr 1e-3, betas (0.9, 0.99), eps 1e-5,
decoupled weight decay 0.01: fastai's default `Adam`, i.e. `torch.optim.AdamW` with those settings in the
plain loop) for one epoch = N_train / bs shuffled training steps (drop_last) + a no-grad validation pass
computing the loss, `torch.set_num_threads(threads)` for all (default 1, or `$FASTMED_BENCH_THREADS`: see
bench/__main__.py for why one thread on a shared 2-core machine):
(a) plain PyTorch: the volumes read once and z-normalised into two tensors (N, 1, S, S, S); a loop that indexes
    a shuffled batch, forward, loss, `zero_grad`, `backward`, `step`; then the validation loss under `no_grad`.
(b) fastai `Learner` over the same preloaded data: a fastai `Datasets` whose items are the in-memory
    `MedImage`/`MedMask` volumes (with their geometry), `dataloaders(bs, num_workers=0)`,
    `Learner(dls, model, loss_func=CustomLoss(DiceCELoss(...)))` and `learn.fit(1)` with fastai's default
    callbacks (Recorder, progress bar: kept, as users have them; its console output is swallowed).
(c) fastmed as a user writes it: `MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), ...,
    item_tfms=[ZNormalization(), RandomFlip(axes=(0, 1, 2))])` reading the NIfTI files in every epoch,
    `dataloaders(df, bs, num_workers=workers)`, the same Learner and `learn.fit(1)`.
Each side warms up with one epoch, then `rounds` rounds run one epoch of each side in a rotating order; the
ratios are medians of the per-round ratios (b)/(a) (compute overhead, target ≤ 1.05×, bench/README.md) and
(c)/(a) (full epoch with data loading, target ≤ 1.3×). `--profile N` prints cProfile's top N functions (own
time) over one epoch of (b) and of (c).
"""
import argparse, contextlib, copy, cProfile, io, json, pstats, shutil, statistics, sys, tempfile, time, warnings
from functools import partial
from pathlib import Path

warnings.filterwarnings('ignore')
import numpy as np
import pandas as pd
import torch
from fastai.data.core import Datasets
from fastai.data.transforms import ColReader, ColSplitter
from fastai.learner import Learner
from fastai.optimizer import Adam
from fastai.vision.data import ImageBlock
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import default_threads, interleaved, machine, peak_rss_mb, ratio_of_rounds, row
from fastmed.core import MedImage, MedMask, VolumeGeometry
from fastmed.data import MedDataBlock, MedMaskBlock
from fastmed.io import write_nifti
from fastmed.losses import CustomLoss
from fastmed.synthetic import make_affine, make_segmentation_pair
from fastmed.transforms import RandomFlip, ZNormalization

TARGET_COMPUTE, TARGET_FULL = 1.05, 1.3
ADAM = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)  # fastai's Adam defaults (decoupled wd)


def make_files(folder: Path, n: int, size: int) -> pd.DataFrame:
    "Write `n` seeded size³ image/mask pairs as .nii.gz; a DataFrame with image, mask and is_val (last quarter)."
    aff, rows = make_affine((1., 1., 1.), 'RAS', shape=(size,) * 3), []
    for i in range(n):
        img, mask = make_segmentation_pair((size,) * 3, aff, seed=i)
        rows.append(dict(image=str(write_nifti(folder / f'case_{i:03d}.nii.gz', img, aff)),
                         mask=str(write_nifti(folder / f'case_{i:03d}_mask.nii.gz', mask, aff, dtype=np.uint8)),
                         is_val=i >= n - n // 4))
    return pd.DataFrame(rows)


def preload(df: pd.DataFrame) -> tuple:
    "(images (N, 1, S, S, S) float32 z-normalised, masks (N, 1, S, S, S) int64) read once from the files."
    imgs = [MedImage.create(p).as_subclass(torch.Tensor) for p in df.image]
    masks = [MedMask.create(p).as_subclass(torch.Tensor) for p in df['mask']]
    return torch.stack([(x - x.mean()) / x.std() for x in imgs]), torch.stack(masks)


def make_model(seed: int = 0) -> torch.nn.Module:
    "The benchmark's small 3D UNet with seeded initial weights."
    torch.manual_seed(seed)
    return UNet(3, 1, 2, (16, 32, 64), (2, 2), num_res_units=1)


def loss_func() -> DiceCELoss: return DiceCELoss(to_onehot_y=True, softmax=True)


class PlainLoop:
    "(a) A plain PyTorch epoch over preloaded tensors: shuffled training steps, then the validation loss."
    def __init__(self, model, images, masks, is_val, bs: int, device):
        self.model, self.bs, self.device = model.to(device), bs, device
        self.opt, self.loss = torch.optim.AdamW(model.parameters(), **ADAM), loss_func()
        val = torch.as_tensor(np.asarray(is_val))
        self.x, self.y = images.to(device), masks.to(device)
        self.train_idx, self.valid_idx = torch.nonzero(~val)[:, 0], torch.nonzero(val)[:, 0]
        self.gen = torch.Generator().manual_seed(0)

    def epoch(self) -> float:
        self.model.train()
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=self.gen)]
        for i in range(0, len(order) - self.bs + 1, self.bs):
            b = order[i:i + self.bs].to(self.device)
            loss = self.loss(self.model(self.x[b]), self.y[b])
            self.opt.zero_grad(); loss.backward(); self.opt.step()
        self.model.eval()
        with torch.no_grad():
            losses = [self.loss(self.model(self.x[b]), self.y[b]) for b in self.valid_idx.split(self.bs)]
        return float(torch.stack(losses).mean())


def memory_learner(model, images, masks, is_val, bs: int, device) -> Learner:
    "(b) A fastai Learner over a `Datasets` of the in-memory `MedImage`/`MedMask` volumes."
    geos = [VolumeGeometry.from_source(np.eye(4), images.shape[2:], f'memory_{i}') for i in range(len(images))]
    xs = [MedImage.from_data(x, g) for x, g in zip(images, geos)]
    ys = [MedMask.from_data(y, g) for y, g in zip(masks, geos)]
    val = np.asarray(is_val)
    def get_x(i: int): return xs[i]
    def get_y(i: int): return ys[i]
    dsets = Datasets(range(len(xs)), tfms=[[get_x], [get_y]],
                     splits=(list(np.nonzero(~val)[0]), list(np.nonzero(val)[0])))
    dls = dsets.dataloaders(bs=bs, num_workers=0, device=device)
    return Learner(dls, model, loss_func=CustomLoss(loss_func()), opt_func=Adam)


def file_learner(model, df: pd.DataFrame, bs: int, workers: int, device) -> Learner:
    "(c) fastmed's MedDataBlock reading the NIfTI files each epoch, z-normalise + random flips, `workers` workers."
    dblock = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('image'),
                          get_y=ColReader('mask'), splitter=ColSplitter('is_val'),
                          item_tfms=[ZNormalization(), RandomFlip(axes=(0, 1, 2))])
    dls = dblock.dataloaders(df, bs=bs, num_workers=workers, device=device)
    return Learner(dls, model, loss_func=CustomLoss(loss_func()), opt_func=Adam)


def fit_one(learn: Learner) -> float:
    "`learn.fit(1)` with its progress-bar output swallowed; returns the validation loss."
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()): learn.fit(1)
    return float(learn.recorder.values[-1][1])


def profile(fn, top: int, title: str):
    "Print the `top` functions by own time of cProfile over one call of `fn`."
    pr = cProfile.Profile(); pr.enable(); fn(); pr.disable()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats('tottime').print_stats(top)
    body = s.getvalue()
    print(f"--- cProfile, {title} (top {top} by own time) ---\n" + body[body.find('   ncalls'):].rstrip())


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=24, help='number of image/mask pairs (a quarter for validation)')
    ap.add_argument('--size', type=int, default=64, help='cubic volume size')
    ap.add_argument('--bs', type=int, default=2, help='batch size')
    ap.add_argument('--threads', type=int, default=default_threads(1), help='torch.set_num_threads for every side')
    ap.add_argument('--workers', type=int, default=2, help='DataLoader workers of side (c)')
    ap.add_argument('--rounds', type=int, default=3, help='timed rounds (one epoch of each side per round)')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--quick', action='store_true', help='20 volumes (7 steps), 3 rounds')
    ap.add_argument('--profile', type=int, default=0, metavar='N', help='print the top N cProfile entries of (b) and (c)')
    ap.add_argument('--json', type=Path, help='also write the result to this JSON file')
    args = ap.parse_args(argv)
    if args.quick: args.n, args.rounds = 20, 3
    return args


def measure(args) -> dict:
    "Run the benchmark described by `args`; print the figures and return the result rows and details."
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    folder = Path(tempfile.mkdtemp(prefix='fastmed_bench_training_'))
    try:
        t0 = time.perf_counter()
        df = make_files(folder, args.n, args.size)
        images, masks = preload(df)
        print(f"generated {args.n} {args.size}³ image/mask pairs (.nii.gz) and preloaded them in "
              f"{time.perf_counter() - t0:.1f} s (not counted)")
        model = make_model()
        plain = PlainLoop(copy.deepcopy(model), images, masks, df.is_val, args.bs, device)
        learn_mem = memory_learner(copy.deepcopy(model), images, masks, df.is_val, args.bs, device)
        learn_file = file_learner(copy.deepcopy(model), df, args.bs, args.workers, device)
        sides = {'plain': plain.epoch, 'learner_memory': lambda: fit_one(learn_mem),
                 'learner_files': lambda: fit_one(learn_file)}
        peaks = {}
        def track(k, f):
            def g():
                if device.type == 'cuda': torch.cuda.reset_peak_memory_stats()
                f()
                if device.type == 'cuda': peaks[k] = max(peaks.get(k, 0), torch.cuda.max_memory_allocated() / 2 ** 20)
            return g
        times = interleaved({k: track(k, f) for k, f in sides.items()}, args.rounds, warmup=1, device=device)
        med = {k: statistics.median(v) for k, v in times.items()}
        compute = ratio_of_rounds(times['learner_memory'], times['plain'])
        full = ratio_of_rounds(times['learner_files'], times['plain'])
        steps = (int((~df.is_val).sum()) // args.bs, int(df.is_val.sum()))
        where = f"{device}" + (f" ({torch.cuda.get_device_name()})" if device.type == 'cuda' else f", {args.threads} torch threads")
        print(f"epoch = {steps[0]} training steps of {args.bs}×1×{args.size}³ + validation of {steps[1]} volumes; UNet "
              f"(16,32,64), DiceCE, Adam; {where}; {args.rounds} rounds after a warm-up epoch")
        labels = {'plain': '(a) plain PyTorch, preloaded tensors', 'learner_memory': '(b) fastai Learner, in-memory items',
                  'learner_files': f'(c) fastmed Learner, NIfTI files, {args.workers} workers'}
        for k, lab in labels.items():
            print(f"{lab:42s}: median {med[k]:.3f} s/epoch, best {min(times[k]):.3f} s")
        for tag, (r, lo, hi), tgt in (('(b)/(a) compute overhead', compute, TARGET_COMPUTE), ('(c)/(a) full epoch', full, TARGET_FULL)):
            print(f"ratio {tag}: {r:.3f}x median of rounds (range {lo:.3f}-{hi:.3f}; target <= {tgt}x: {'met' if r <= tgt else 'NOT met'})")
        if args.profile:
            profile(sides['learner_memory'], args.profile, '(b) learn.fit(1), in-memory items')
            profile(sides['learner_files'], args.profile, '(c) learn.fit(1), NIfTI files')
        peak = peak_rss_mb()
        pk = (lambda k: peaks[k]) if device.type == 'cuda' else (lambda k: peak)
        dev = f"{device.type}, {args.n}×{args.size}³, bs {args.bs}"
        rows = [row(f"training epoch: Learner vs plain loop, preloaded ({dev})", med['learner_memory'], med['plain'],
                    compute[0], TARGET_COMPUTE, pk('learner_memory'), spread=compute[1:]),
                row(f"training epoch: Learner on NIfTI files ({args.workers} workers) vs plain loop ({dev})",
                    med['learner_files'], med['plain'], full[0], TARGET_FULL, pk('learner_files'), spread=full[1:])]
        result = {'rows': rows, 'details': dict(vars(args), json=None, times_s=times, median_s=med, steps=steps,
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
