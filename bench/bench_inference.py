"""Time whole-volume inference to native space with `fastmed.inference.inference` against a hand-written nibabel + TorchIO pipeline.

    python bench/bench_inference.py [--shape 192 192 120] [--spacing 1.5] [--threads 2] [--repeat 7]
                                    [--profile 25] [--quick] [--json PATH]

Writes one seeded 192×192×120 float32 `.nii.gz` (`make_segmentation_pair` content) with an oblique, LPS-flipped
affine of 1×1×1.5 mm spacing (not counted), and a tiny training set (4 small image/mask pairs) for the Learner.
The model is a small MONAI `UNet(3, 1, 1, (8, 16, 32), (2, 2), num_res_units=1)` with seeded random weights
(no training: only the time matters) on the CPU; both sides use this very model, `torch.set_num_threads(threads)`.
(a) fastmed, as a user does it: `MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), reorder=True,
    resample=spacing, item_tfms=[PadOrCrop(size), ZNormalization()])`, `Learner(dls, unet,
    loss_func=CustomLoss(DiceLoss(sigmoid=True)))`, then `inference(learn, fn=path, save_path=outdir)` per volume:
    read, reorient + resample + pad + z-normalise like training, forward, sigmoid, map the probabilities back to
    the source grid, threshold, write `<name>_pred.nii.gz` (int16, atomically).
(b) baseline, by hand: `nib.load` → `tio.ToCanonical` → `tio.Resample(spacing)` → `tio.CropOrPad(size)` →
    `(x - mean) / std` → forward under `no_grad` → sigmoid → `tio.Resample((source shape, source affine))`
    → `> 0.5` → `nib.save` of an int16 `.nii.gz` with the source affine.
`size` is the resampled shape rounded up to a multiple of 16 (128³ at 1.5 mm), identical on both sides.
The two masks are checked to agree (same shape and affine, ≥ 99.9 % equal voxels). Both sides are warmed up,
then `repeat` rounds run each once in alternating order; the figures are medians, the ratio fastmed / baseline
is the median of the per-round ratios. The fastmed stage breakdown (read, preprocess, forward, map back, write)
calls fastmed's stage functions one after another in `repeat` further rounds. `--profile N` prints the top N
functions (by own time) of cProfile over one call of each side. Target (bench/README.md): whole-volume inference
to native space ≤ 0.4 s per 192×192×120 volume on the CPU here. The source file was just written, so it is
read from the page cache. Other processes on this machine inflate and scatter the absolute times; the
interleaved ratio is the robust figure.
"""
import argparse, cProfile, io, json, math, os, pstats, shutil, statistics, sys, tempfile, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore', category=FutureWarning)
warnings.filterwarnings('ignore', category=UserWarning)
import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torchio as tio
from fastai.data.transforms import ColReader, RandomSplitter
from fastai.learner import Learner
from fastai.vision.data import ImageBlock
from monai.losses import DiceLoss
from monai.networks.nets import UNet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import default_threads, machine, peak_rss_mb, row
from fastmed.core import (MedImage, MedMask, VolumeGeometry, reorient_to_ras, resample_to_spacing, save_medical,
                          to_source_grid)
from fastmed.data import MedDataBlock, MedMaskBlock
from fastmed.inference import LearnerPredictor, decode_probabilities, inference, preprocess_like_training
from fastmed.io import read_volume, write_nifti
from fastmed.losses import CustomLoss
from fastmed.synthetic import make_affine, make_segmentation_pair
from fastmed.transforms import PadOrCrop, ZNormalization

TARGET_S = 0.4


def source_affine(shape, spacing=(1., 1., 1.5)) -> np.ndarray:
    "Oblique (15° about z, 5° about x) and LPS-flipped affine of `spacing`, centred on the volume."
    return np.diag([-1., -1., 1., 1.]) @ make_affine(spacing, 'oblique', shape=shape)


def make_files(folder: Path, shape) -> tuple:
    "(path of the test volume, DataFrame of 4 small training image/mask pairs), all seeded .nii.gz files."
    aff = source_affine(shape)
    img, _ = make_segmentation_pair(shape, aff, seed=0)
    test = write_nifti(folder / 'case_000.nii.gz', img, aff)
    rows = []
    for i in range(4):  # tiny LPS pairs: only there to build the Learner (never trained on)
        s = (48, 48, 32); a = make_affine((4., 4., 6.), 'LPS', shape=s)
        im, mk = make_segmentation_pair(s, a, seed=i + 1)
        rows.append(dict(image=str(write_nifti(folder / f'train_{i}.nii.gz', im, a)),
                         mask=str(write_nifti(folder / f'train_{i}_mask.nii.gz', mk, a, dtype=np.uint8))))
    return test, pd.DataFrame(rows)


def pad_size(path, spacing: float) -> tuple:
    "The shape of `path` reoriented and resampled to `spacing`, each axis rounded up to a multiple of 16."
    img = tio.Resample(spacing)(tio.ToCanonical()(tio.ScalarImage(path)))
    return tuple(16 * math.ceil(s / 16) for s in img.spatial_shape)


def make_learner(df: pd.DataFrame, spacing: float, size, model) -> Learner:
    "A segmentation Learner built the way a user builds one (no training)."
    dblock = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('image'),
                          get_y=ColReader('mask'), splitter=RandomSplitter(0.25, seed=0),
                          item_tfms=[PadOrCrop(size), ZNormalization()], reorder=True, resample=spacing)
    dls = dblock.dataloaders(df, bs=1, num_workers=0, device='cpu')
    return Learner(dls, model, loss_func=CustomLoss(DiceLoss(sigmoid=True)))


def baseline(model, spacing: float, size, path: Path, out_dir: Path) -> Path:
    "Hand-written nibabel + TorchIO + torch inference to native space; returns the written mask path."
    src = nib.load(path)
    data = torch.from_numpy(np.asarray(src.dataobj, dtype=np.float32))[None]
    img = tio.ScalarImage(tensor=data, affine=src.affine)
    img = tio.CropOrPad(size)(tio.Resample(spacing)(tio.ToCanonical()(img)))
    x = img.data
    x = (x - x.mean()) / x.std()
    with torch.no_grad(): probs = torch.sigmoid(model(x[None]))[0]
    back = tio.Resample((data.shape[1:], src.affine))(tio.ScalarImage(tensor=probs, affine=img.affine))
    mask = (back.data[0] > 0.5).numpy().astype(np.int16)
    out = out_dir / path.name.replace('.nii.gz', '_pred.nii.gz')
    nib.save(nib.Nifti1Image(mask, src.affine), out)
    return out


def fastmed_stages(learn, spacing: float, path: Path, out_dir: Path) -> dict:
    "Run fastmed's inference stage by stage with its own functions; return seconds per stage."
    t = {}; t0 = time.perf_counter()
    data, affine = read_volume(path)
    t['read'] = time.perf_counter() - t0; t0 = time.perf_counter()
    geometry = VolumeGeometry.from_source(affine, data.shape[1:], str(path))
    d, g = reorient_to_ras(data, geometry)
    d, g = resample_to_spacing(d, g, spacing)
    item = learn.dls.valid.after_item((MedImage.from_data(d, g),))[0]
    batch = learn.dls.valid.after_batch((item[None],))[0]
    t['preprocess'] = time.perf_counter() - t0; t0 = time.perf_counter()
    predictor = LearnerPredictor(learn)
    model = predictor.network.eval()
    with torch.no_grad(): probs = predictor.activation(model(batch.as_subclass(torch.Tensor))).float()[0]
    t['forward'] = time.perf_counter() - t0; t0 = time.perf_counter()
    native = to_source_grid(probs, batch.geometry, 'linear')
    mask = MedMask.from_data(decode_probabilities(native), VolumeGeometry.from_source(affine, data.shape[1:], str(path)))
    t['map back'] = time.perf_counter() - t0; t0 = time.perf_counter()
    save_medical(mask, out_dir / 'stages_pred.nii.gz')
    t['write'] = time.perf_counter() - t0
    return t


def profile(fn, top: int, title: str):
    "Print the `top` functions by own time of cProfile over one call of `fn`."
    pr = cProfile.Profile(); pr.enable(); fn(); pr.disable()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats('tottime').print_stats(top)
    body = s.getvalue()
    print(f"--- cProfile, {title} (top {top} by own time) ---\n" + body[body.find('   ncalls'):].rstrip())


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--shape', type=int, nargs=3, default=(192, 192, 120), help='shape of the test volume')
    ap.add_argument('--spacing', type=float, default=1.5, help='training (resample) spacing in mm')
    ap.add_argument('--threads', type=int, default=default_threads(2), help='torch.set_num_threads for both sides')
    ap.add_argument('--repeat', type=int, default=7, help='timed rounds (each runs both sides once)')
    ap.add_argument('--profile', type=int, default=0, metavar='N', help='print the top N cProfile entries of each side')
    ap.add_argument('--quick', action='store_true', help='3 rounds instead of 7 (same 192×192×120 volume, so the absolute target still applies)')
    ap.add_argument('--json', type=Path, help='also write the figures to this JSON file')
    args = ap.parse_args(argv)
    if args.quick: args.repeat = 3
    return args


def measure(args) -> dict:
    "Run the benchmark described by `args`; print the figures and return the result rows and details."
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = tuple(args.shape)
    folder = Path(tempfile.mkdtemp(prefix='fastmed_bench_inference_'))
    try:
        t0 = time.perf_counter()
        path, df = make_files(folder, shape)
        print(f"generated a {'×'.join(map(str, shape))} float32 oblique/LPS 1×1×1.5 mm .nii.gz "
              f"({path.stat().st_size / 1e6:.1f} MB) + 4 tiny training pairs in {time.perf_counter() - t0:.1f} s (not counted)")
        size = pad_size(path, args.spacing)
        model = UNet(3, 1, 1, (8, 16, 32), (2, 2), num_res_units=1).eval()
        learn = make_learner(df, args.spacing, size, model)
        out_a, out_b = folder / 'fastmed', folder / 'baseline'
        out_b.mkdir()

        sides = {'fastmed': lambda: inference(learn, fn=path, save_path=out_a),
                 'baseline': lambda: baseline(model, args.spacing, size, path, out_b)}
        for f in sides.values(): f()  # warm-up
        pa, pb = out_a / 'case_000_pred.nii.gz', out_b / 'case_000_pred.nii.gz'
        ia, ib = nib.load(pa), nib.load(pb)
        ma, mb = np.asarray(ia.dataobj), np.asarray(ib.dataobj)
        agree = float((ma == mb).mean())
        assert ma.shape == mb.shape == shape and np.allclose(ia.affine, ib.affine, atol=1e-4), (ma.shape, mb.shape)
        assert agree >= 0.999, f"masks differ: {agree:.5f} equal voxels"
        assert ia.get_data_dtype() == ib.get_data_dtype() == np.int16

        times = {k: [] for k in sides}
        names = list(sides)
        for r in range(args.repeat):
            for k in (names if r % 2 == 0 else names[::-1]):
                t0 = time.perf_counter(); sides[k](); times[k].append(time.perf_counter() - t0)
        stages = [fastmed_stages(learn, args.spacing, path, out_a) for _ in range(args.repeat + 1)][1:]

        med = {k: statistics.median(v) for k, v in times.items()}
        ratios = [a / b for a, b in zip(times['fastmed'], times['baseline'])]
        ratio = statistics.median(ratios)
        stage_med = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
        print(f"model input {'×'.join(map(str, size))} ({args.spacing} mm, reorient + resample + PadOrCrop + "
              f"z-normalisation), UNet(3,1,1,(8,16,32),(2,2),num_res_units=1) random weights on CPU, "
              f"{args.threads} torch threads; {args.repeat} rounds after a warm-up; masks agree on {100 * agree:.3f}% "
              f"of voxels ({100 * float((ma > 0).mean()):.0f}% foreground: random weights)")
        print(f"load average now: {', '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores "
              f"(other processes share this machine: absolute times are inflated and scattered)")
        for k, lab in (('fastmed', '(a) fastmed inference()'), ('baseline', '(b) nibabel + TorchIO by hand')):
            print(f"{lab:31s}: median {med[k]:.3f} s/volume, best {min(times[k]):.3f} s")
        print(f"ratio (a)/(b): {ratio:.3f}x median of rounds (range {min(ratios):.3f}-{max(ratios):.3f}); "
              f"best/best {min(times['fastmed']) / min(times['baseline']):.3f}x")
        total = sum(stage_med.values())
        print("fastmed stages (median of rounds, s): " + ', '.join(f"{k} {v:.3f}" for k, v in stage_med.items())
              + f"; sum {total:.3f} (without forward {total - stage_med['forward']:.3f})")
        met = med['fastmed'] <= TARGET_S
        print(f"absolute target: <= {TARGET_S} s per volume: {'met' if met else 'NOT met'} (median {med['fastmed']:.3f} s, "
              f"best {min(times['fastmed']):.3f} s; the forward pass alone takes {stage_med['forward']:.3f} s of it)")
        if args.profile:
            profile(sides['fastmed'], args.profile, 'fastmed inference()')
            profile(sides['baseline'], args.profile, 'baseline')
        details = {'shape': shape, 'spacing': args.spacing, 'model_input': size, 'threads': args.threads,
                   'repeat': args.repeat, 'loadavg': os.getloadavg(), 'times_s': times, 'median_s': med,
                   'ratio': ratio, 'ratios': ratios, 'stages_median_s': stage_med, 'mask_agreement': agree,
                   'target_s': TARGET_S, 'met': met, 'machine': machine()}
        what = f"{'×'.join(map(str, shape))} to native space"
        rows = [row(f"whole-volume inference: inference() vs nibabel+TorchIO by hand ({what})", med['fastmed'],
                    med['baseline'], ratio, None, peak_rss_mb(), spread=(min(ratios), max(ratios))),
                row(f"whole-volume inference: inference() seconds per volume ({what})", med['fastmed'], med['baseline'],
                    ratio, TARGET_S, peak_rss_mb(), target_on='fastmed_s', note=f"forward alone {stage_med['forward']:.3f} s")]
        result = {'rows': rows, 'details': details}
        if args.json: args.json.write_text(json.dumps(result, indent=1, default=str))
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(quick: bool) -> dict:
    "The benchmark with its default (or `--quick`) settings, for `python -m bench`."
    return measure(parse_args(['--quick'] if quick else []))


if __name__ == '__main__':
    measure(parse_args())
