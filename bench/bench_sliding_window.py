"""Time fastmed's sliding-window prediction against MONAI's `sliding_window_inference` called directly.

    python bench/bench_sliding_window.py [--shape 160 160 96] [--roi 64] [--sw-batch 4] [--overlap 0.25]
                                         [--threads 2] [--repeat 7] [--quick] [--json PATH]

One seeded volume (1×1×X×Y×Z float32: a smooth phantom plus noise) and a small MONAI
`UNet(3, 1, 2, (8, 16, 32), (2, 2), num_res_units=1)` with seeded random weights, in eval mode, on the CPU.
All three ways predict the same volume with the same window (`roi` voxels), `sw_batch_size`, `overlap` and
`mode='gaussian'`, under `torch.no_grad()`:
(a) MONAI: `monai.inferers.sliding_window_inference(x, roi, sw_batch_size, model, overlap, mode)` on a plain tensor;
(b) fastmed: `fastmed.patches.sliding_window_logits(model, x, roi, sw_batch_size, overlap, mode)` on the
    `MedImage` batch (with its geometry) a user holds;
(c) fastmed module: `fastmed.patches.SlidingWindow(model, roi, sw_batch_size, overlap, mode)(x)` on the same
    `MedImage` (what `SlidingWindowValidation` swaps in for validation).
The three outputs are checked to be identical. Every way is warmed up once; then `repeat` rounds run each
way once, in a rotating order (so drift in machine load hits all alike), with `torch.set_num_threads(threads)`
for all. The figures are medians over the rounds; the ratio is fastmed / MONAI (median of the per-round ratios,
with its spread). Since (b) and (c) end in the very same MONAI call, the ratio is 1 up to noise; the cost
fastmed adds (unwrapping the MedImage, checking the arguments) is also measured on its own: 300 calls of each
way on an 8³ volume with one window and an identity network. Target (bench/README.md): ratio ≤ 1.0×.
"""
import argparse, json, statistics, sys, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore', category=FutureWarning)
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import default_threads, machine, peak_rss_mb, row
from fastmed.core import MedImage, VolumeGeometry
from fastmed.patches import SlidingWindow, sliding_window_logits
from fastmed.synthetic import make_affine

TARGET = 1.0


def make_volume(shape, seed: int = 0) -> torch.Tensor:
    "A (1, 1, *shape) float32 volume: a smooth blob plus seeded noise, roughly z-normalised."
    g = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1, 1, s) for s in shape]
    d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    return (2 * torch.exp(-3 * d2) - 0.5 + 0.3 * torch.randn(*shape, generator=g))[None, None]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--shape', type=int, nargs=3, default=(160, 160, 96), help='spatial shape of the volume')
    ap.add_argument('--roi', type=int, default=64, help='cubic window size (roi_size)')
    ap.add_argument('--sw-batch', type=int, default=4, help='windows per forward pass (sw_batch_size)')
    ap.add_argument('--overlap', type=float, default=0.25, help='overlap of neighbouring windows')
    ap.add_argument('--threads', type=int, default=default_threads(2), help='torch.set_num_threads for every side')
    ap.add_argument('--repeat', type=int, default=7, help='timed rounds (each runs every side once)')
    ap.add_argument('--quick', action='store_true', help='96×96×64 volume, roi 48, 5 rounds')
    ap.add_argument('--json', type=Path, help='also write the figures to this JSON file')
    args = ap.parse_args(argv)
    if args.quick: args.shape, args.roi, args.repeat = (96, 96, 64), 48, 5
    return args


def measure(args) -> dict:
    "Run the benchmark described by `args`; print the figures and return the result rows and details."
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape, roi = tuple(args.shape), (args.roi,) * 3
    model = UNet(3, 1, 2, (8, 16, 32), (2, 2), num_res_units=1).eval()
    x = make_volume(shape)
    aff = make_affine((1., 1., 1.5), 'LPS', shape=shape)
    med = MedImage.from_data(x, VolumeGeometry.from_source(aff, shape, 'synthetic'))  # a batch of one, as from a DataLoader
    kw = dict(sw_batch_size=args.sw_batch, overlap=args.overlap, mode='gaussian')
    module = SlidingWindow(model, args.roi, **kw).eval()

    sides = {
        'monai': lambda: sliding_window_inference(x, roi, predictor=model, **kw),
        'fastmed': lambda: sliding_window_logits(model, med, args.roi, **kw),
        'fastmed_module': lambda: module(med),
    }
    with torch.no_grad():
        outs = {k: f() for k, f in sides.items()}  # warm-up (and the outputs to compare)
        for k in ('fastmed', 'fastmed_module'):
            assert outs[k].shape == (1, 2, *shape) and torch.equal(outs[k].as_subclass(torch.Tensor), outs['monai']), k
        times = {k: [] for k in sides}
        names = list(sides)
        for r in range(args.repeat):
            for k in names[r % 3:] + names[:r % 3]:  # rotate the order between rounds
                t0 = time.perf_counter(); sides[k](); times[k].append(time.perf_counter() - t0)

        # the wrapper's own cost, free of the model: many calls on an 8³ volume with one window and an identity net
        tiny, ident = torch.randn(1, 1, 8, 8, 8), torch.nn.Identity()
        tiny_med = MedImage.from_data(tiny, VolumeGeometry.from_source(np.eye(4), (8, 8, 8)))
        calls = {'monai': lambda: sliding_window_inference(tiny, (8, 8, 8), 1, ident, mode='gaussian'),
                 'fastmed': lambda: sliding_window_logits(ident, tiny_med, 8, 1, mode='gaussian')}
        per_call = {}
        for k, f in calls.items():
            f(); t0 = time.perf_counter()
            for _ in range(300): f()
            per_call[k] = (time.perf_counter() - t0) / 300
    overhead_us = 1e6 * (per_call['fastmed'] - per_call['monai'])

    med_t = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: [f / m for f, m in zip(times[k], times['monai'])] for k in ('fastmed', 'fastmed_module')}
    ratio = {k: statistics.median(v) for k, v in ratios.items()}
    print(f"volume 1×1×{'×'.join(map(str, shape))} float32, UNet(3,1,2,(8,16,32),(2,2),num_res_units=1) on CPU, "
          f"{args.threads} torch threads; roi {args.roi}³, sw_batch_size {args.sw_batch}, overlap {args.overlap}, "
          f"mode gaussian; {args.repeat} rounds after a warm-up, outputs identical")
    labels = {'monai': '(a) MONAI sliding_window_inference', 'fastmed': '(b) fastmed sliding_window_logits(MedImage)',
              'fastmed_module': '(c) fastmed SlidingWindow module(MedImage)'}
    for k, lab in labels.items():
        print(f"{lab:44s}: median {med_t[k]:.3f} s, best {min(times[k]):.3f} s")
    def verdict(r, lo, hi):
        if r <= TARGET: return 'met'
        return 'NOT met, within run-to-run noise' if lo <= TARGET else 'NOT met'
    for k, tag in (('fastmed', '(b)/(a)'), ('fastmed_module', '(c)/(a)')):
        lo, hi = min(ratios[k]), max(ratios[k])
        print(f"ratio {tag}: {ratio[k]:.3f}x median of rounds (range {lo:.3f}-{hi:.3f}) "
              f"(target <= {TARGET:.1f}x: {verdict(ratio[k], lo, hi)})")
    print(f"fastmed wrapper overhead per call (identity net, 8³ volume, 300 calls): {overhead_us:+.0f} µs "
          f"({1e6 * per_call['monai']:.0f} µs for MONAI alone), i.e. {overhead_us / 1e4 / med_t['monai']:+.3f}% of (a)")
    details = {'shape': shape, 'roi': args.roi, 'sw_batch_size': args.sw_batch, 'overlap': args.overlap,
               'threads': args.threads, 'repeat': args.repeat, 'times_s': times, 'median_s': med_t,
               'ratio': ratio, 'wrapper_overhead_us': overhead_us, 'target': TARGET, 'machine': machine()}
    what = f"{'×'.join(map(str, shape))}, roi {args.roi}³"
    rows = [row(f"sliding-window inference: sliding_window_logits vs MONAI direct ({what})", med_t['fastmed'],
                med_t['monai'], ratio['fastmed'], TARGET, peak_rss_mb(),
                spread=(min(ratios['fastmed']), max(ratios['fastmed'])), note=f"wrapper {overhead_us:+.0f} µs/call"),
            row(f"sliding-window inference: SlidingWindow module vs MONAI direct ({what})", med_t['fastmed_module'],
                med_t['monai'], ratio['fastmed_module'], TARGET, peak_rss_mb(),
                spread=(min(ratios['fastmed_module']), max(ratios['fastmed_module'])))]
    result = {'rows': rows, 'details': details}
    if args.json: args.json.write_text(json.dumps(result, indent=1, default=str))
    return result


def run(quick: bool) -> dict:
    "The benchmark with its default (or `--quick`) settings, for `python -m bench`."
    return measure(parse_args(['--quick'] if quick else []))


if __name__ == '__main__':
    measure(parse_args())
