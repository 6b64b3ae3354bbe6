"""Files fastmed writes for a user get the mode a plain write would give them (issue 10, item 8).

`tempfile.mkstemp` creates files with mode 0600, so an atomic write built on it left models, checkpoints,
`volumes.csv` and variables readable by their owner only: other users of a shared machine could not load a model
that a colleague saved. Every writer now goes through `fastmed.io.atomic_write`; under a umask of 022 a new file is
0644, and an existing file keeps its own mode when it is rewritten.
"""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastai.data.transforms import ColReader, IndexSplitter
from fastai.learner import Learner
from fastai.vision.data import ImageBlock
from monai.losses import DiceLoss

from fastmed.io import write_nifti
from fastmed.core import MedImage
from fastmed.data import MedDataBlock, MedMaskBlock
from fastmed.losses import CustomLoss
from fastmed.export import build_model, save_model
from fastmed.checkpoint import save_checkpoint
from fastmed.inference import store_variables
from fastmed.cache import preprocess_dataset
from fastmed.synthetic import make_brain_dataset
from fastmed.cli import main


def mode(path) -> int: return Path(path).stat().st_mode & 0o777


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


@pytest.fixture
def learner(tmp_path):
    m = np.zeros((8, 8, 8), np.uint8); m[2:6, 2:6, 2:6] = 1
    rows = [(str(write_nifti(tmp_path / f'i{i}.nii.gz', m + np.float32(0.1 * i), np.eye(4))),
             str(write_nifti(tmp_path / f'm{i}.nii.gz', m, np.eye(4), dtype=np.uint8))) for i in range(3)]
    dls = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader(0), get_y=ColReader(1),
                       splitter=IndexSplitter([2])).dataloaders(pd.DataFrame(rows), bs=1, num_workers=0)
    net = build_model('torch.nn.Conv3d', in_channels=1, out_channels=1, kernel_size=1)
    learn = Learner(dls, net, loss_func=CustomLoss(DiceLoss(sigmoid=True)))
    learn.create_opt()
    return learn


def test_model_checkpoint_variables_volume(tmp_path, umask_022, learner):
    contract = save_model(learner, tmp_path / 'out' / 'model')
    written = [contract, contract.with_suffix('.safetensors'),
               save_checkpoint(learner, tmp_path / 'out' / 'ckpt.safetensors', epoch=0, n_epoch=1),
               store_variables(tmp_path / 'out' / 'vars.pkl', 8, True, [1, 1, 1]),
               write_nifti(tmp_path / 'out' / 'x.nii.gz', np.zeros((2, 2, 2)), np.eye(4))]
    assert {str(p): mode(p) for p in written} == {str(p): umask_022 for p in written}


def test_rewrite_keeps_the_existing_mode(tmp_path, umask_022, learner):
    contract = save_model(learner, tmp_path / 'model')
    contract.chmod(0o640)
    save_model(learner, tmp_path / 'model')
    assert mode(contract) == 0o640 and mode(contract.with_suffix('.safetensors')) == umask_022


def test_cli_volumes_csv_and_cache(tmp_path, umask_022, learner):
    contract = save_model(learner, tmp_path / 'model')
    scan = write_nifti(tmp_path / 'scans' / 'scan.nii.gz', np.ones((8, 8, 8), np.float32), np.eye(4))
    assert main(['predict', str(contract), str(scan), '-o', str(tmp_path / 'pred')]) == 0
    assert mode(tmp_path / 'pred' / 'volumes.csv') == umask_022
    assert all(mode(p) == umask_022 for p in (tmp_path / 'pred').iterdir())
    study = make_brain_dataset(tmp_path / 'study', n=1)
    assert mode(study / 'dataset.csv') == umask_022
    cached = preprocess_dataset(pd.read_csv(study / 'dataset.csv'), 't1_path', tmp_path / 'cache', resample=4,
                                max_workers=0, progress=False)
    files = [p for p in (tmp_path / 'cache').rglob('*') if p.is_file()]
    assert files and {mode(p) for p in files} == {umask_022}, cached
