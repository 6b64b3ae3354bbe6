"""Time fastmed's batch augmentation against per-item TorchIO for the same transforms.

    python bench/bench_batch_augment.py [--size 128] [--bs 4] [--device cpu|cuda] [--repeat 3] [--quick] [--json PATH]

A batch of `bs` images (bs×1×size³ float32, a smooth phantom plus noise, positive) and int64 masks. Times
(a) per-item TorchIO on the CPU, the fastMONAI way: each item wrapped in a `tio.Subject` (image + label map),
`tio.Compose([RandomFlip(axes=(0, 1, 2), flip_probability=0.5), RandomAffine(scales=0.1, degrees=10),
RandomGamma(log_gamma=0.3), RandomNoise(std=(0, 0.1))])`, tensors taken back and stacked into a batch; and
(b) fastmed's `BatchFlip(p=0.5)`, `BatchAffine(degrees=10, scale=0.1, p=1)`, `BatchGamma(0.3, p=1)` and
`BatchNoise(0.1, p=1)` on the same batch on `--device` (already there, as after a DataLoader's `to_device`).
Every transform is applied to every item on both sides (flips: each axis with probability 0.5).
Each side runs in its own subprocess (so imports and peak memory do not mix), warms up once, then runs
`repeat` times; CUDA is synchronised around each run. Peak memory: the growth of the process's peak RSS
over the run on the CPU, `torch.cuda.max_memory_allocated` above the batch itself on CUDA.
Target (bench/README.md, GPU only): ≥20× faster than per-item TorchIO on the CPU for a batch of 128³, i.e. time
ratio (b)/(a) ≤ 0.05; no target on the CPU. `--device` defaults to cuda when available. `--quick`: 64³, 2 runs.
"""
import argparse, json, resource, statistics, subprocess, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import default_threads, machine, row

TARGET_GPU = 0.05


def make_batch(bs: int, size: int, seed: int = 0) -> tuple:
    "(images (bs, 1, S, S, S) float32 in about [0, 2], masks int64 spheres) with a seeded generator."
    g = torch.Generator().manual_seed(seed)
    r = torch.linspace(-1, 1, size)
    d2 = r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2
    radii = 0.3 + 0.3 * torch.rand(bs, generator=g)
    masks = (d2[None] < radii[:, None, None, None] ** 2).long()[:, None]
    images = (1 + masks + 0.1 * torch.randn(bs, 1, size, size, size, generator=g)).clamp_min(0)
    return images, masks


def torchio_augment():
    "A function doing per-item TorchIO on the CPU, stacked back into a batch."
    import numpy as np, torchio as tio
    tfm = tio.Compose([tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5), tio.RandomAffine(scales=0.1, degrees=10),
                       tio.RandomGamma(log_gamma=0.3), tio.RandomNoise(std=(0, 0.1))])
    def augment(images, masks):
        out_x, out_y = [], []
        for x, y in zip(images, masks):
            s = tio.Subject(image=tio.ScalarImage(tensor=x, affine=np.eye(4)), mask=tio.LabelMap(tensor=y.int(), affine=np.eye(4)))
            s = tfm(s)
            out_x.append(s['image'].data.float()); out_y.append(s['mask'].data.long())
        return torch.stack(out_x), torch.stack(out_y)
    return augment


def fastmed_augment():
    "A function applying fastmed's batch transforms on the batch's device."
    from fasttransform.transform import Pipeline
    from fastmed.core import MedImage, MedMask
    from fastmed.batch_augment import BatchFlip, BatchAffine, BatchGamma, BatchNoise
    pipe = Pipeline([BatchFlip(p=0.5), BatchAffine(degrees=10, scale=0.1, p=1.), BatchGamma(0.3, p=1.), BatchNoise(0.1, p=1.)],
                    split_idx=0)
    def augment(images, masks):
        x, y = pipe((MedImage(images), MedMask(masks)))
        return x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)
    return augment


def time_method(method: str, size: int, bs: int, device: str, repeat: int) -> dict:
    "Run one method (warm-up + `repeat` timed runs) and return its timings and peak memory."
    torch.set_num_threads(default_threads(torch.get_num_threads()))
    fn = {'torchio': torchio_augment, 'fastmed': fastmed_augment}[method]()  # imports done here, not timed
    dev = torch.device(device if method == 'fastmed' else 'cpu')
    images, masks = make_batch(bs, size)
    images, masks = images.to(dev), masks.to(dev)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    if dev.type == 'cuda': base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = fn(images, masks); sync()  # warm-up
    assert out[0].shape == images.shape and out[1].dtype == torch.int64
    times = []
    for _ in range(repeat):
        sync(); t0 = time.perf_counter(); fn(images, masks); sync(); times.append(time.perf_counter() - t0)
    peak = ((torch.cuda.max_memory_allocated() - base) if dev.type == 'cuda'
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024)
    return {'method': method, 'device': str(dev), 'best': min(times), 'median': statistics.median(times),
            'peak_mb': peak / 2 ** 20, 'threads': torch.get_num_threads(),
            'gpu': torch.cuda.get_device_name() if dev.type == 'cuda' else None}


def run_child(method: str, args) -> dict:
    "Run `time_method` for `method` in a fresh Python process and parse its JSON line."
    cmd = [sys.executable, __file__, '--method', method, '--size', str(args.size), '--bs', str(args.bs),
           '--device', args.device, '--repeat', str(args.repeat)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0: sys.exit(f"{method} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--size', type=int, default=128, help='spatial size of the cubic volumes')
    ap.add_argument('--bs', type=int, default=4, help='batch size')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'],
                    help='device of the fastmed batch transforms')
    ap.add_argument('--repeat', type=int, default=3, help='timed runs of each method (after one warm-up)')
    ap.add_argument('--method', choices=['torchio', 'fastmed'], help=argparse.SUPPRESS)  # child process mode
    ap.add_argument('--quick', action='store_true', help='64³ volumes, 2 timed runs')
    ap.add_argument('--json', type=Path, help='also write the result to this JSON file')
    args = ap.parse_args(argv)
    if args.quick: args.size, args.repeat = 64, 2
    return args


def measure(args) -> dict:
    "Run the benchmark described by `args` (each side in its own process); print the figures, return the rows."
    if args.device == 'cuda' and not torch.cuda.is_available(): sys.exit("--device cuda: no CUDA device available")
    if args.method: return print(json.dumps(time_method(args.method, args.size, args.bs, args.device, args.repeat)))
    print(f"batch {args.bs}×1×{args.size}³ float32 images + int64 masks; flip, affine, gamma, noise on every item")
    a, b = run_child('torchio', args), run_child('fastmed', args)
    for tag, r in (('(a) TorchIO per item', a), ('(b) fastmed batch', b)):
        where = r['gpu'] or f"cpu, {r['threads']} torch threads"
        print(f"{tag:22s} [{where}]: best {r['best']:.3f} s, median {r['median']:.3f} s, peak memory +{r['peak_mb']:.0f} MB")
    print(f"ratio (a)/(b): {a['best'] / b['best']:.1f}x best, {a['median'] / b['median']:.1f}x median")
    target = TARGET_GPU if args.device == 'cuda' else None
    rows = [row(f"batch augmentation: fastmed batch tfms ({b['device']}) vs per-item TorchIO (cpu), {args.bs}×{args.size}³",
                b['median'], a['median'], b['median'] / a['median'], target, b['peak_mb'],
                note=f"peak memory: growth over the run; TorchIO side +{a['peak_mb']:.0f} MB")]
    result = {'rows': rows, 'details': dict(vars(args), json=None, torchio=a, fastmed=b, machine=machine())}
    if args.json: args.json.write_text(json.dumps(result, indent=1, default=str))
    return result


def run(quick: bool) -> dict:
    "The benchmark with its default (or `--quick`) settings, for `python -m bench`."
    return measure(parse_args(['--quick'] if quick else []))


if __name__ == '__main__':
    measure(parse_args())
