"""Helpers shared by the benchmarks: interleaved timing rounds, peak memory, and the result rows of the table.

Every benchmark module exposes `run(quick: bool) -> dict` returning `{'rows': [row(...), ...], 'details': {...}}`;
`python -m bench` runs each in its own subprocess and prints the rows as one table.
"""
import os, resource, statistics, sys, time

import torch


def default_threads(fallback: int) -> int:
    "torch threads for a benchmark: `$FASTMED_BENCH_THREADS` (set by `python -m bench --threads`), else `fallback`."
    return int(os.environ.get('FASTMED_BENCH_THREADS', fallback))


def peak_rss_mb() -> float:
    "Peak resident memory of this process and of its finished children (DataLoader workers, thread pools), in MB."
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 if sys.platform == 'darwin' else 1024  # Linux reports KiB, macOS bytes
    return max(own, kids) * scale / 2 ** 20


def sync(device) -> None:
    "Wait for queued CUDA work on `device` (no-op on the CPU) so a timer sees the real end of a step."
    if torch.device(device).type == 'cuda': torch.cuda.synchronize()


def interleaved(sides: dict, rounds: int, warmup: int = 1, device='cpu', on_round=None) -> dict:
    "Time each callable of `sides` once per round, rotating the order between rounds; `warmup` untimed rounds first."
    names, times = list(sides), {k: [] for k in sides}
    for r in range(warmup + rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            sync(device); t0 = time.perf_counter(); sides[k](); sync(device)
            if r >= warmup: times[k].append(time.perf_counter() - t0)
        if on_round: on_round(r)
    return times


def ratio_of_rounds(fast: list, base: list) -> tuple:
    "(median, min, max) of the per-round ratios `fast[i] / base[i]` (rounds ran side by side, so load drift cancels)."
    ratios = [f / b for f, b in zip(fast, base)]
    return statistics.median(ratios), min(ratios), max(ratios)


def row(benchmark: str, fastmed_s: float, baseline_s: float, ratio: float, target: float | None, peak_mb: float,
        target_on: str = 'ratio', note: str = '', spread: tuple = None) -> dict:
    "One line of the table: times in s, `ratio` = fastmed / baseline time; `target` bounds the ratio, or fastmed's seconds."
    value = ratio if target_on == 'ratio' else fastmed_s
    met = None if target is None else bool(value <= target)
    # the per-round ratios straddle the target: the miss is within this run's round-to-round noise
    noise = bool(target_on == 'ratio' and met is False and spread and min(spread) <= target)
    return dict(benchmark=benchmark, fastmed_s=fastmed_s, baseline_s=baseline_s, ratio=ratio, target=target,
                target_on=target_on, met=met, within_noise=noise, peak_mb=peak_mb, note=note,
                ratio_range=list(spread) if spread else None)


def machine() -> dict:
    "What the figures were measured on: cores, load, torch threads, GPU."
    return dict(cpus=os.cpu_count(), loadavg=list(os.getloadavg()), torch_threads=torch.get_num_threads(),
                torch=torch.__version__, gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
