"""A training process killed mid-epoch (SIGKILL) resumes from its last checkpoint.

The script below trains a tiny segmentation learner on synthetic cubes with `CheckpointCallback`, printing a line
at the start of every epoch and after every training batch. The test kills it with SIGKILL during the third epoch,
checks the checkpoint on disk is complete (loadable, epoch 2, no temp file beside it), starts the same script again
with `--resume`, and checks that it continues at epoch 2 (not 0), finishes, and ends with a sane model.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent('''
    import sys, time, random
    from pathlib import Path
    import numpy as np, pandas as pd, torch
    from torch import nn
    from fastai.vision.all import Learner, Callback, ColReader, IndexSplitter, ImageBlock
    from fastmed.io import write_nifti
    from fastmed.core import MedImage
    from fastmed.data import MedDataBlock, MedMaskBlock
    from fastmed.transforms import RandomFlip
    from fastmed.losses import CustomLoss
    from fastmed.metrics import binary_dice_score
    from fastmed.checkpoint import CheckpointCallback
    from monai.losses import DiceCELoss

    work, resume = Path(sys.argv[1]), '--resume' in sys.argv
    torch.manual_seed(0); random.seed(0); np.random.seed(0); torch.set_num_threads(1)
    rows = []
    for i in range(8):
        rng = np.random.default_rng(i)
        m = np.zeros((16, 16, 16), np.uint8); a = rng.integers(2, 7, 3); m[a[0]:a[0]+7, a[1]:a[1]+7, a[2]:a[2]+7] = 1
        x = m + rng.normal(0, 0.3, m.shape).astype(np.float32)
        rows.append((str(write_nifti(work / f'img{i}.nii.gz', x, np.eye(4))),
                     str(write_nifti(work / f'msk{i}.nii.gz', m, np.eye(4), dtype=np.uint8))))
    df = pd.DataFrame(rows, columns=['img', 'mask'])
    dls = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('img'), get_y=ColReader('mask'),
                       splitter=IndexSplitter([6, 7]), item_tfms=[RandomFlip(axes=(0, 1, 2))]).dataloaders(df, bs=1, num_workers=0)
    net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 2, 1))

    class Say(Callback):
        "Marker lines for the test; a short sleep per batch so that a kill lands inside an epoch."
        order = 100
        def before_train(self): print(f'EPOCH {self.epoch} START', flush=True)
        def after_batch(self):
            if self.training: print(f'BATCH {self.epoch} {self.iter}', flush=True); time.sleep(0.15)
        def after_epoch(self): print(f'EPOCH {self.epoch} END', flush=True)

    learn = Learner(dls, net, loss_func=CustomLoss(DiceCELoss(to_onehot_y=True, softmax=True)), metrics=[binary_dice_score])
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(5, 2e-2, cbs=[CheckpointCallback(work / 'ckpt' / 'run.safetensors', resume=resume), Say()])
    loss, dice = learn.validate()
    print(f'DONE valid_loss={loss:.4f} dice={dice:.4f}', flush=True)
''')


def _start(work, *args):
    return subprocess.Popen([sys.executable, '-u', str(work / 'train.py'), str(work), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})


def _read_until(proc, marker, timeout=120):
    "Lines of `proc`'s output up to and including the first line starting with `marker`."
    lines, t0 = [], time.time()
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith(marker): return lines
        assert time.time() - t0 < timeout, f"no {marker!r} after {timeout} s:\n" + '\n'.join(lines[-20:])
    raise AssertionError(f"process ended before {marker!r}:\n" + '\n'.join(lines[-30:]))


@pytest.mark.skipif(not hasattr(signal, 'SIGKILL'), reason='needs SIGKILL')
def test_killed_training_resumes_from_last_checkpoint(tmp_path):
    from fastmed.checkpoint import _read_checkpoint
    (tmp_path / 'train.py').write_text(SCRIPT)
    ckpt = tmp_path / 'ckpt' / 'run.safetensors'

    proc = _start(tmp_path)
    try:
        first = _read_until(proc, 'BATCH 2 1')  # two batches into the third epoch (epochs count from 0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert 'EPOCH 1 END' in first and 'EPOCH 2 END' not in first

    # the checkpoint on disk is complete: a readable safetensors file holding epochs 0 and 1, nothing partial beside it
    assert [p.name for p in ckpt.parent.iterdir()] == ['run.safetensors']
    meta, tensors = _read_checkpoint(ckpt)
    assert (meta['epoch'], meta['n_epoch']) == (2, 5)
    assert any(k.startswith('model.') for k in tensors) and any(k.startswith('opt.') for k in tensors)

    proc = _start(tmp_path, '--resume')
    try: out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == 0, out[-3000:]
    started = [int(l.split()[1]) for l in out.splitlines() if l.startswith('EPOCH') and l.endswith('START')]
    assert started == [2, 3, 4], out[-3000:]  # continued at the saved epoch, not from 0
    done = next(l for l in out.splitlines() if l.startswith('DONE'))
    loss, dice = (float(kv.split('=')[1]) for kv in done.split()[1:])
    assert loss < 0.6 and dice > 0.5, done  # an untrained net scores Dice ~0.1 on these cubes
    assert _read_checkpoint(ckpt)[0]['epoch'] == 5
