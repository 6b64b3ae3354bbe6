"End-to-end: a `preprocess_dataset` run killed with SIGKILL mid-way leaves only complete entries, and the next run finishes the job."
import os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fastmed.cache import preprocess_dataset, load_cached, _sidecar_path
from fastmed.core import MedImage, MedMask
from fastmed.dataset import MedDataset
from fastmed.io import write_nifti
from fastmed.synthetic import make_affine, make_segmentation_pair

N = 12


def _make_sources(folder: Path) -> pd.DataFrame:
    "N LPS image/mask pairs at 1.2 mm, big enough that one entry takes a noticeable time to write."
    rows = []
    for i in range(N):
        shape, aff = (96, 96, 64), make_affine((1.2, 1.2, 1.2), 'LPS', shape=(96, 96, 64))
        img, mask = make_segmentation_pair(shape, aff, seed=i)
        rows.append(dict(image=str(write_nifti(folder/f'c{i:02d}_img.nii.gz', img, aff)),
                         mask=str(write_nifti(folder/f'c{i:02d}_msk.nii.gz', mask, aff, dtype=np.uint8))))
    return pd.DataFrame(rows)


def _start_run(csv: Path, cache: Path) -> subprocess.Popen:
    "A child process running `preprocess_dataset` on `csv` one volume at a time."
    code = textwrap.dedent(f"""
        import pandas as pd
        from fastmed.cache import preprocess_dataset
        preprocess_dataset(pd.read_csv({str(csv)!r}), 'image', {str(cache)!r}, mask_cols='mask', reorder=True,
                           resample=2, max_workers=0, progress=False)
    """)
    return subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after_some_entries(proc: subprocess.Popen, cache: Path, n: int, timeout: float = 120.):
    "SIGKILL `proc` once `n` sidecars exist in `cache` (the run is then part-way through)."
    t0 = time.time()
    while len(list(cache.glob('*.json'))) < n:
        assert proc.poll() is None, 'the run ended before it could be interrupted'
        assert time.time() - t0 < timeout, 'the run made no progress'
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_killed_run_resumes(tmp_path):
    df = _make_sources(tmp_path/'src')
    df.to_csv(tmp_path/'df.csv', index=False)
    cache = tmp_path/'cache'
    _kill_after_some_entries(_start_run(tmp_path/'df.csv', cache), cache, 5)
    complete = [p for p in cache.glob('*.nii') if _sidecar_path(p).exists()]
    assert 5 <= len(complete) < 2 * N
    for p in complete: load_cached(p)  # every entry with a sidecar is whole and readable
    visible = [p for p in cache.iterdir() if not p.name.startswith('.')]
    assert all(p.suffix in ('.nii', '.json') for p in visible)  # a half-written file can only be a hidden temp file

    cdf, failed = preprocess_dataset(df, 'image', cache, mask_cols='mask', reorder=True, resample=2, progress=False)
    assert len(failed) == 0 and len(cdf) == N
    assert cdf.attrs['cache']['reused'] >= len(complete) and sum(cdf.attrs['cache'].values()) == 2 * N
    for row in cdf.itertuples():
        for cls, cached, source in ((MedImage, row.image, row.image_source), (MedMask, row.mask, row.mask_source)):
            a, b = cls.create(cached), cls.create(source, reorder=True, resample=2)
            assert torch.equal(a.as_subclass(torch.Tensor), b.as_subclass(torch.Tensor)), cached
            assert np.allclose(a.affine, b.affine, atol=1e-4) and a.orientation == 'RAS'
    assert len(MedDataset(cache).df) == 2 * N  # hidden temp files of the killed run are not images
