"""Issue 4 end to end: train a patch-based model on volumes larger than the patch, save it as safetensors + JSON,
load it in a fresh process, and predict LPS and RAS volumes with the `fastmed` command; the masks must sit on the
inputs' grids and overlap the truth."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from fastmed.vision_all import *

PATCH = 32


def _fastmed_command() -> list:
    "The installed `fastmed` console script (next to this Python), else `python -m fastmed.cli`."
    script = Path(sys.executable).parent / 'fastmed'
    return [str(script)] if script.exists() else [sys.executable, '-m', 'fastmed.cli']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A UNet trained on 32³ patches of ~58×73×55 heads at 3 mm, validated on whole volumes by sliding window."
    root = tmp_path_factory.mktemp('patch_e2e')
    study = make_brain_dataset(root / 'train', n=8, orientations=('RAS', 'LPS', 'oblique'), seed=11)
    df = pd.read_csv(study / 'dataset.csv')
    dblock = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('t1_path'), get_y=ColReader('labels'),
                          splitter=RandomSplitter(valid_pct=0.25, seed=0), item_tfms=[RandomFlip(p=0.5), ZNormalization()],
                          reorder=True, resample=3)
    set_seed(0, reproducible=True)
    dls = patch_dataloaders(dblock.dataloaders(df, bs=4), PATCH, samples_per_volume=8, bs=4)
    volume = dls.valid.one_batch()[0]
    assert all(s > PATCH for s in volume.shape[2:]), volume.shape  # the volumes are larger than the patch
    model = build_model('UNet', spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16, 32), strides=(2, 2),
                        num_res_units=1)
    learn = Learner(dls, model, loss_func=CustomLoss(DiceCELoss(sigmoid=True)), metrics=binary_dice_score,
                    cbs=SlidingWindowValidation(overlap=0.25))
    learn.lr_find(num_it=20, show_plot=False)
    learn.fit_one_cycle(12, 1e-2)
    model_path = save_model(learn, root / 'models' / 'brain')
    return root, learn, model_path


def test_patch_training_validates_whole_volumes(trained):
    _, learn, _ = trained
    dice = float(learn.recorder.values[-1][2])
    assert dice > 0.8, dice
    assert type(learn.model).__name__ == 'UNet'


def test_fresh_process_loads_and_cli_predicts_lps_and_ras(trained):
    root, learn, model_path = trained
    new = make_brain_dataset(root / 'new', n=2, orientations=('LPS', 'RAS'), seed=99)
    cases = pd.read_csv(new / 'dataset.csv')
    loaded = subprocess.run([sys.executable, '-c', f"from fastmed.export import load_model; print(load_model({str(model_path)!r}))"],
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert 'MedModel(UNet, segmentation, reorder=True, resample=(3.0, 3.0, 3.0), window=[32, 32, 32])' in loaded.stdout
    out = root / 'predictions'
    run = subprocess.run([*_fastmed_command(), 'predict', str(model_path), *cases.t1_path, '-o', str(out), '--keep-largest', '-q'],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(out / 'volumes.csv')
    assert table.error.isna().all() and len(table) == 2
    for row in cases.itertuples():
        source, truth = MedImage.create(row.t1_path), MedMask.create(row.labels)
        pred = MedMask.create(out / f"{Path(row.t1_path).name.replace('.nii.gz', '')}_pred.nii.gz")
        assert pred.shape == source.shape
        assert np.allclose(pred.affine, source.affine, atol=1e-5)
        p, t = pred.as_subclass(torch.Tensor).bool(), truth.as_subclass(torch.Tensor).bool()
        dice = float(2 * (p & t).sum() / (p.sum() + t.sum()))
        assert dice > 0.8, (row.t1_path, dice)
    # the command's prediction is the library's prediction with the in-process learner, largest component kept
    first = cases.t1_path[0]
    ours = MedMask.create(out / f"{Path(first).name.replace('.nii.gz', '')}_pred.nii.gz")
    expected = keep_largest_component(predict_volume(learn, first))
    assert torch.equal(ours.as_subclass(torch.Tensor), expected.as_subclass(torch.Tensor).to(ours.dtype))
    orientations = {''.join(__import__('nibabel').aff2axcodes(MedImage.create(p).affine)) for p in cases.t1_path}
    assert orientations == {'LPS', 'RAS'}


def test_pickled_model_file_is_refused_unless_opted_in(trained):
    root, learn, _ = trained
    learn.export(root / 'models' / 'export.pkl')
    with pytest.raises(MedicalInputError, match="export.pkl': holds a pickle payload"):
        load_model(root / 'models' / 'export.pkl')
    trusted = load_model(root / 'models' / 'export.pkl', allow_pickle=True)
    assert type(trusted).__name__ == 'Learner'
