"""Tutorial 01 run end to end on real data: the AdrenalMNIST3D release of MedMNIST v2 committed in tests/data
(CC BY 4.0, see tests/data/README.md), found through `FASTMED_DATA` and used without the network."""
import shutil
import urllib.request
from pathlib import Path

import pytest
import torch
from fastcore.nbio import read_nb
from execnb.shell import CaptureShell
from fastmed.external import file_digest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / 'nbs' / 'tutorials' / '01_classification.ipynb'
NPZ = ROOT / 'tests' / 'data' / 'adrenalmnist3d.npz'
NPZ_MD5 = 'bbd3c5a5576322bc4cdfea780653b1ce'  # MedMNIST's published checksum of the 28³ file


def _no_network(*args, **kwargs): raise AssertionError('tutorial 01 reached for the network although a local copy was given')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "The tutorial's namespace after running every cell in quick mode on the real AdrenalMNIST3D copy, offline."
    mp, threads = pytest.MonkeyPatch(), torch.get_num_threads()
    mp.setenv('FASTMED_DATA', str(NPZ.parent)); mp.setenv('FASTMED_STUDY', 'AdrenalMNIST3D')
    mp.setenv('FASTMED_OFFLINE', '1'); mp.setenv('FASTMED_QUICK', '1'); mp.setenv('MPLBACKEND', 'Agg')
    mp.setattr(urllib.request, 'urlopen', _no_network)
    mp.chdir(tmp_path_factory.mktemp('tutorial01'))
    shell = CaptureShell()
    try:
        shell.run_all(read_nb(TUTORIAL), exc_stop=True)
        yield shell.user_ns
    finally:
        mp.undo(); torch.set_num_threads(threads)
        work = shell.user_ns.get('WORK')  # the temporary folder the tutorial wrote its NIfTI cubes into
        if work is not None and Path(work).name.startswith('fastmed_tutorial_'): shutil.rmtree(work, ignore_errors=True)


def test_tutorial01_used_the_committed_real_file(run):
    ns = run
    assert NPZ.stat().st_size == 276833 and file_digest(NPZ) == NPZ_MD5  # used, not modified
    assert ns['STUDY'] == 'AdrenalMNIST3D' and not ns['SYNTHETIC'] and ns['LOCAL_COPY'] == NPZ
    assert ns['QUICK'] and ns['EPOCHS'] == 2  # quick mode: 2 epochs
    assert Path(ns['df'].img_path[0]).is_relative_to(ns['WORK'])  # cubes written to a work folder, not tests/data


def test_tutorial01_real_splits_and_labels(run):
    ns = run
    df, test_df = ns['df'], ns['test_df']
    assert (~df.is_val).sum() == 1188 and df.is_val.sum() == 98 and len(test_df) == 298  # MedMNIST's official splits
    counts = df.groupby('is_val').labels.value_counts().unstack()
    assert counts.loc[False].to_dict() == {'0': 929, '1': 259} and counts.loc[True].to_dict() == {'0': 76, '1': 22}
    assert test_df.labels.value_counts().to_dict() == {'0': 229, '1': 69}
    assert list(ns['dls'].vocab) == ['0', '1'] and tuple(ns['xb'].shape) == (16, 1, 28, 28, 28)
    assert ns['cm'].sum() == 98 and ns['preds'].shape == (98, 2)


def test_tutorial01_learns_on_real_test_split(run):
    ns = run
    probs = ns['test_probs']
    assert probs.shape == (298, 2) and torch.allclose(probs.sum(1), torch.ones(298))
    assert ns['test_auc'] > 0.70, ns['test_auc']  # chance is 0.5 (measured: 0.797); MedMNIST v2's ResNet-18 (3D): 0.827
    # balanced accuracy: the class weights trade the majority rate for sensitivity, so plain accuracy is not the bar
    pred, truth = probs.argmax(1), ns['test_targs']
    balanced = sum(float((pred[truth == c] == c).float().mean()) for c in (0, 1)) / 2
    assert balanced > 0.62, balanced  # measured: 0.717
