"""Bad-input catalogue, part CLI / model files / checkpoints: rows in the format of `test_bad_inputs.py`.

Each row is (id, stage, builder, culprit, problem, error type): the builder makes the bad input in a temporary folder
and returns the call a user would make (and optionally a check to run afterwards, e.g. "the scans are untouched").
The test asserts the error type (for 'cli' rows: the exit status), that the message is ONE line, that it names the
culprit and states the problem. The behaviour tests after the catalogue cover what is not an error but was wrong:
masks with clashing names, the contract's threshold, a re-run over earlier masks, a symlinked site folder.
"""
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_bad_inputs import file_states, assert_user_files_kept
import torch
from torch import nn
from fastai.callback.core import Callback
from fastai.learner import Learner
from monai.losses import DiceLoss
from safetensors.torch import load_file, save_file

import test_io_bad_inputs as rd
from test_bad_inputs import (Case, AFF, SHAPE, _img, _msk, _seg_df, _block, _cli, _one_line, _snapshot, _model_copy,
                             models)  # noqa: F401 -- `models` is the fixture of saved models the rows use
from fastmed.core import MedImage, MedMask
from fastmed.io import write_nifti
from fastmed.losses import CustomLoss
from fastmed.export import build_model, save_model, load_model, _sha256
from fastmed.checkpoint import CheckpointCallback, save_checkpoint, load_checkpoint, _read_checkpoint
from fastmed.inference import predict_volume, inference


# ---------------------------------------------------------------- makers

def _learner(d, net=None):
    "A small segmentation learner on three 12³ volumes (a 1×1×1 convolution unless `net` is given)."
    dls = _block().dataloaders(_seg_df(d), bs=1, num_workers=0)
    return Learner(dls, net or build_model('torch.nn.Conv3d', in_channels=1, out_channels=1, kernel_size=1),
                   loss_func=CustomLoss(DiceLoss(sigmoid=True)))


def _contract_variant(d, models, name, key, value):
    "A copy of the 'one' model named `name` whose contract entry `key` ('input.channels') is `value` (... deletes it)."
    j, _ = _model_copy(d, models, name)
    c = json.loads(j.read_text())
    *parents, last = key.split('.')
    entry = c
    for k in parents: entry = entry[k]
    if value is ...: del entry[last]
    else: entry[last] = value
    j.write_text(json.dumps(c))
    return j


def _variant_case(key, value):
    "A builder: `load_model` of the 'one' model with the contract entry `key` set to `value`; the file is `v.json`."
    return lambda d, models: (lambda: load_model(_contract_variant(d, models, 'v', key, value)))


def _scans(folder, n=2):
    "`n` scans `scan{i}.nii.gz` in `folder` (made if needed); returns the folder."
    Path(folder).mkdir(parents=True, exist_ok=True)
    for i in range(n): _img(folder, f'scan{i}.nii.gz')
    return Path(folder)


class _Poison(Callback):
    "From epoch `epoch` on (fastai's count), every training input is NaN: what a NaN in the data does to a run."
    def __init__(self, epoch): self.at = epoch
    def before_batch(self):
        if self.training and self.epoch >= self.at: self.learn.xb = (self.xb[0] * float('nan'),)


# ---------------------------------------------------------------- item 1: an output folder among the inputs

def cli_output_is_input_folder(d, models):
    scans = _scans(d / 'scans')
    (scans / 'scan0_pred.nii.gz').write_bytes(b'a manual segmentation the user made')  # must survive
    before = _snapshot(scans)
    def check(): assert _snapshot(scans) == before, "the scans folder changed"
    return (lambda: _cli('predict', models['one'], scans, '-o', scans, '-q')), check


def cli_output_inside_input_folder(d, models):
    scans = _scans(d / 'scans')
    def check(): assert sorted(p.name for p in scans.iterdir()) == ['scan0.nii.gz', 'scan1.nii.gz']  # no 'preds' made
    return (lambda: _cli('predict', models['one'], scans, '-o', scans / 'preds', '-q')), check


def cli_output_holds_input(d, models):
    _scans(d / 'study' / 'scans')
    return lambda: _cli('predict', models['one'], d / 'study' / 'scans' / 'scan0.nii.gz', '-o', d / 'study', '-q')


def cli_output_is_link_to_input(d, models):
    scans = _scans(d / 'scans'); os.symlink(scans, d / 'preds')
    return lambda: _cli('predict', models['one'], scans, '-o', d / 'preds', '-q')


def cli_only_own_masks_as_input(d, models):
    _cli('predict', models['one'], _scans(d / 'scans'), '-o', d / 'preds', '-q')
    return lambda: _cli('predict', models['one'], d / 'preds', '-o', d / 'preds_again', '-q')


# ---------------------------------------------------------------- item 4 and more: checkpoints

def checkpoint_after_diverged_epoch(d, models):
    learn, path = _learner(d), d / 'ckpt' / 'run.safetensors'
    def check():
        meta, tensors = _read_checkpoint(path)
        assert meta['epoch'] == 1, meta['epoch']  # the good checkpoint of epoch 0, all finite:
        assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
        assert [p.name for p in path.parent.iterdir()] == ['run.safetensors']
    return (lambda: learn.fit(3, 1e-2, cbs=[CheckpointCallback(path), _Poison(1)])), check


def checkpoint_resume_nan_weights(d, models):
    learn = _learner(d)
    save_checkpoint(learn, d / 'good.safetensors', 1, 3)
    meta, tensors = _read_checkpoint(d / 'good.safetensors')
    for k in tensors:
        if k.startswith('model'): tensors[k][:] = float('nan')
    save_file(tensors, str(d / 'diverged.safetensors'), metadata={'fastmed_checkpoint': json.dumps(meta)})  # as old fastmed did
    return lambda: load_checkpoint(learn, d / 'diverged.safetensors')


def checkpoint_save_nan_weights(d, models):
    learn = _learner(d)
    with torch.no_grad(): learn.model.weight.fill_(float('nan'))
    learn.create_opt()
    return lambda: save_checkpoint(learn, d / 'run.safetensors', 2, 3)


def checkpoint_path_is_a_folder(d, models):
    (d / 'run.safetensors').mkdir()
    learn = _learner(d)
    return lambda: learn.fit(1, cbs=CheckpointCallback(d / 'run.safetensors'))


def checkpoint_path_under_a_file(d, models):
    (d / 'a_file').write_text('x')
    learn = _learner(d)
    return lambda: learn.fit(1, cbs=CheckpointCallback(d / 'a_file' / 'run.safetensors'))


# ---------------------------------------------------------------- item 6 and more: model files

@pytest.fixture(scope='module')
def unet_model(tmp_path_factory):
    "A saved MONAI UNet model (its contract names `spatial_dims`, which old MONAI called `dimensions`)."
    d = tmp_path_factory.mktemp('unet')
    net = build_model('UNet', spatial_dims=3, in_channels=1, out_channels=1, channels=(2, 4), strides=(2,))
    return save_model(_learner(d, net), d / 'unet')


def contract_unknown_module(d, models):
    return lambda: load_model(_contract_variant(d, models, 'gone', 'architecture.class', 'fastmed.old_nets.UNet'))


def contract_old_keyword(d, models):
    src = models['unet']
    c = json.loads(src.read_text())
    c['architecture']['kwargs']['dimensions'] = c['architecture']['kwargs'].pop('spatial_dims')
    (d / 'old.json').write_text(json.dumps(c)); shutil.copy(src.with_suffix('.safetensors'), d / 'old.safetensors')
    return lambda: load_model(d / 'old.json')


def contract_network_far_larger(d, models):
    kwargs = dict(in_channels=1, out_channels=4096, kernel_size=9)  # 3 million numbers for a file of 2
    return lambda: load_model(_contract_variant(d, models, 'far', 'architecture.kwargs', kwargs))


def model_weights_nan(d, models):
    j, w = _model_copy(d, models, 'nan')
    state = load_file(w); state = {k: torch.full_like(v, float('nan')) for k, v in state.items()}
    save_file(state, str(w))
    c = json.loads(j.read_text()); c['weights']['sha256'] = _sha256(w); j.write_text(json.dumps(c))
    return lambda: load_model(j)


def save_model_nan_weights(d, models):
    learn = _learner(d)
    with torch.no_grad(): learn.model.bias.fill_(float('inf'))
    def check(): assert not (d / 'out').exists()
    return (lambda: save_model(learn, d / 'out' / 'net')), check


def model_path_is_a_folder(d, models): return lambda: load_model(Path(models['one']).parent)


def model_is_a_checkpoint(d, models):
    save_checkpoint(_learner(d), d / 'run.safetensors', 1, 3)
    return lambda: load_model(d / 'run.safetensors')


def cli_classification_model(d, models):
    j = _contract_variant(d, models, 'classifier', 'output.task', 'classification')
    return lambda: _cli('predict', j, models['image'], '-o', d / 'p', '-q')


def cli_summary_workers_zero(d, models):
    return lambda: _cli('summary', _scans(d / 'scans'), '--workers', '0')


# ---------------------------------------------------------------- the catalogue

CATALOGUE = [
    # item 1: the output folder must be apart from the inputs (nothing is written)
    Case('cli_output_is_input_folder', 'cli', cli_output_is_input_folder, 'scans', 'output folder is also an input', 2),
    Case('cli_output_inside_input_folder', 'cli', cli_output_inside_input_folder, 'scans/preds', 'output folder lies inside the input folder', 2),
    Case('cli_output_holds_input', 'cli', cli_output_holds_input, 'study', 'output folder holds the input', 2),
    Case('cli_output_is_link_to_input', 'cli', cli_output_is_link_to_input, 'preds', 'output folder is also an input', 2),
    Case('cli_only_own_masks_as_input', 'cli', cli_only_own_masks_as_input, 'inputs', 'masks fastmed predict wrote', 2),
    # item 4: checkpoints of a diverged run
    Case('checkpoint_after_diverged_epoch', 'training', checkpoint_after_diverged_epoch, 'run.safetensors', 'not written: epoch 1 ended with train_loss=nan'),
    Case('checkpoint_save_nan_weights', 'training', checkpoint_save_nan_weights, 'run.safetensors', 'not written: after 2 epoch(s), 1 of 2 numbers are NaN or infinite (first in weight)'),
    Case('checkpoint_resume_nan_weights', 'training', checkpoint_resume_nan_weights, 'diverged.safetensors', 'cannot be resumed: 2 of'),
    Case('checkpoint_path_is_a_folder', 'training', checkpoint_path_is_a_folder, 'run.safetensors', 'is a folder; CheckpointCallback needs a file path'),
    Case('checkpoint_path_under_a_file', 'training', checkpoint_path_under_a_file, 'a_file/run.safetensors', 'checkpoint folder is not writable'),
    # item 6: model contracts
    Case('contract_unknown_module', 'model', contract_unknown_module, 'gone.json', "no module named 'fastmed.old_nets'"),
    Case('contract_old_keyword', 'model', contract_old_keyword, 'old.json', "UNet takes no argument 'dimensions'"),
    Case('contract_null_entry', 'model', _variant_case('input.transforms', None), 'v.json', 'input.transforms=null: expected a list'),
    Case('contract_null_architecture', 'model', _variant_case('architecture', None), 'v.json', 'architecture=null: expected an object'),
    Case('contract_string_channels', 'model', _variant_case('input.channels', '1'), 'v.json', 'input.channels="1": expected a positive integer'),
    Case('contract_network_far_larger', 'model', contract_network_far_larger, 'far.json', 'architecture builds a network of 2,990,080 numbers but far.safetensors holds 2'),
    # more contracts
    Case('contract_threshold_above_one', 'model', _variant_case('output.threshold', 1.5), 'v.json', 'output.threshold=1.5: expected a probability in [0, 1]'),
    Case('contract_threshold_nan', 'model', _variant_case('output.threshold', float('nan')), 'v.json', 'output.threshold=NaN'),
    Case('contract_unknown_activation', 'model', _variant_case('output.activation', 'relu'), 'v.json', 'output.activation="relu": expected "sigmoid" or "softmax"'),
    Case('contract_missing_output', 'model', _variant_case('output', ...), 'v.json', 'output is missing'),
    Case('contract_format_version_string', 'model', _variant_case('format_version', '1'), 'v.json', 'format_version="1": expected a version number'),
    Case('contract_format_version_zero', 'model', _variant_case('format_version', 0), 'v.json', 'format_version=0: expected a version number'),
    Case('contract_bad_window', 'model', _variant_case('inference.window', {'roi_size': [32, 32], 'sw_batch_size': 4, 'overlap': 0.25}), 'v.json', 'inference.window='),
    Case('contract_transform_bad_arguments', 'model', _variant_case('input.transforms', [{'name': 'PadOrCrop', 'kwargs': {'target_shape': 16}}]), 'v.json', 'input.transforms: transform PadOrCrop: arguments'),
    Case('contract_network_kwarg_quoted', 'model', _variant_case('architecture.kwargs', {'in_channels': '1', 'out_channels': 1, 'kernel_size': 1}), 'v.json', 'architecture.kwargs: in_channels="1" is a number in quotes'),
    Case('contract_negative_channels', 'model', _variant_case('architecture.kwargs', {'in_channels': 1, 'out_channels': -1, 'kernel_size': 1}), 'v.json', 'architecture Conv3d cannot be built from its kwargs (RuntimeError: Trying to create tensor with negative dimension'),
    Case('contract_sha256_not_hex', 'model', _variant_case('weights.sha256', 'not-a-digest'), 'v.json', 'weights.sha256="not-a-digest": expected a SHA-256 digest'),
    # model files
    Case('model_weights_nan', 'model', model_weights_nan, 'nan.safetensors', '2 of 2 numbers are NaN or infinite'),
    Case('save_model_nan_weights', 'model', save_model_nan_weights, 'net.safetensors', "not written: the network's 1 of 2 numbers are NaN or infinite"),
    Case('model_path_is_a_folder', 'model', model_path_is_a_folder, 'saved', "is a folder; name the model's .json contract in it (four.json, one.json)"),
    Case('model_is_a_checkpoint', 'model', model_is_a_checkpoint, 'run.safetensors', 'is a training checkpoint'),
    Case('cli_classification_model', 'cli', cli_classification_model, 'classifier.json', 'is a classification model; fastmed predict writes segmentation masks', 2),
    Case('cli_summary_workers_zero', 'cli', cli_summary_workers_zero, '--workers', 'expected a positive number of threads, got 0', 2),
]


@pytest.fixture(scope='module')
def all_models(models, unet_model): return {**models, 'unet': unet_model}


def test_catalogue_rows():
    assert len({c.id for c in CATALOGUE}) == len(CATALOGUE) >= 30


@pytest.mark.parametrize('case', CATALOGUE, ids=[f'{c.stage}-{c.id}' for c in CATALOGUE])
def test_bad_input(tmp_path, all_models, case):
    built = case.build(tmp_path, all_models)
    call, check = built if isinstance(built, tuple) else (built, None)
    before = file_states(tmp_path)
    if case.stage == 'cli':
        status, out, err = call()
        assert status == case.error, (status, out, err)
        msg = _one_line(next((l for l in err.splitlines() if case.culprit in l), err))
        assert msg.startswith('fastmed: error:') and len(err.strip().splitlines()) == 1, err
    else:
        with pytest.raises(case.error) as info: call()
        msg = _one_line(str(info.value))
    assert case.culprit in msg, f"{case.culprit!r} not named in {msg!r}"
    assert case.problem in msg.replace(str(tmp_path), '<tmp>'), f"{case.problem!r} not in {msg!r}"
    assert_user_files_kept(tmp_path, before, getattr(case, "outputs", ()))  # no user file modified or deleted
    if check is not None: check()


# ---------------------------------------------------------------- behaviour: what was silently wrong

def test_rerun_skips_the_masks_it_wrote(tmp_path, models):
    "Item 1: masks an earlier run left among the scans (old `-o` = scans folder) are not predicted as scans."
    scans = _scans(tmp_path / 'scans')
    assert _cli('predict', models['one'], scans, '-o', tmp_path / 'first', '-q')[0] == 0
    for f in (tmp_path / 'first').iterdir(): shutil.copy(f, scans / f.name)  # what `-o scans` used to leave
    status, out, err = _cli('predict', models['one'], scans, '-o', tmp_path / 'second', '-q')
    assert status == 0 and 'skipped 2 file(s) that fastmed predict wrote' in out, (out, err)
    assert sorted(Path(p).name for p in pd.read_csv(tmp_path / 'second' / 'volumes.csv').input) == ['scan0.nii.gz', 'scan1.nii.gz']
    assert sorted(p.name for p in (tmp_path / 'second').iterdir()) == ['scan0_pred.nii.gz', 'scan1_pred.nii.gz', 'volumes.csv']


def test_same_file_names_get_distinct_masks(tmp_path, models):
    "Item 2: siteA/scan.nii.gz and siteB/scan.nii.gz give two masks, each of its own scan, and two rows for two files."
    rng = np.random.default_rng(1)
    for site, shape in (('siteA', (12, 12, 12)), ('siteB', (10, 14, 9))):
        write_nifti(tmp_path / site / 'scan.nii.gz', rng.random(shape).astype(np.float32), AFF)
    status, out, err = _cli('predict', models['one'], tmp_path / 'siteA', tmp_path / 'siteB', '-o', tmp_path / 'p', '-q')
    assert status == 0, err
    table = pd.read_csv(tmp_path / 'p' / 'volumes.csv')
    assert [Path(p).name for p in table.output] == ['siteA_scan_pred.nii.gz', 'siteB_scan_pred.nii.gz']
    model = load_model(models['one'])
    for src, dst in zip(table.input, table.output):
        assert torch.equal(MedMask.create(dst).as_subclass(torch.Tensor), model.predict(src).as_subclass(torch.Tensor))
    assert MedMask.create(table.output[1]).shape[1:] == (10, 14, 9)


def test_dicom_folders_with_the_same_name(tmp_path, models):
    "Item 2: two DICOM series folders both called T1 give two masks of their own shapes."
    rd.dicom_series(tmp_path / 'p1' / 'T1', n=7); rd.dicom_series(tmp_path / 'p2' / 'T1', n=9)
    status, out, err = _cli('predict', models['one'], tmp_path / 'p1' / 'T1', tmp_path / 'p2' / 'T1', '-o', tmp_path / 'p', '-q')
    assert status == 0, err
    table = pd.read_csv(tmp_path / 'p' / 'volumes.csv')
    assert [Path(p).name for p in table.output] == ['p1_T1_pred.nii.gz', 'p2_T1_pred.nii.gz']
    assert [MedMask.create(p).shape[-1] for p in table.output] == [7, 9]


def test_cli_decodes_with_the_contract_threshold(tmp_path):
    "Item 3: a model saved with threshold 0.9 gives, from the command line, exactly MedModel.predict's mask."
    net = build_model('torch.nn.Conv3d', in_channels=1, out_channels=1, kernel_size=1)
    nn.init.constant_(net.weight, 20.); nn.init.constant_(net.bias, -10.)   # probability sigmoid(20x - 10)
    saved = save_model(_learner(tmp_path, net), tmp_path / 'strict', threshold=0.9)
    ramp = np.broadcast_to(np.linspace(0, 1, 40, dtype=np.float32)[:, None, None], (40, 6, 5)).copy()
    scan = write_nifti(tmp_path / 'ramp' / 'ramp.nii.gz', ramp, AFF)
    status, out, err = _cli('predict', saved, scan, '-o', tmp_path / 'p', '-q')
    assert status == 0, err
    model = load_model(saved)
    cli = MedMask.create(tmp_path / 'p' / 'ramp_pred.nii.gz').as_subclass(torch.Tensor)
    assert torch.equal(cli, model.predict(scan).as_subclass(torch.Tensor))
    # at 0.9 the foreground is x > 0.61: ramp positions 24..39 of 40; at 0.5 it would be x > 0.5: positions 20..39
    assert int(cli[0, :, 0, 0].sum()) == 16
    assert int(predict_volume(model, scan, 0.5)[0, :, 0, 0].sum()) == 20
    # every other path to a prediction decodes the same way: predict_volume and inference without a threshold
    assert torch.equal(predict_volume(model, scan).as_subclass(torch.Tensor), cli)
    assert torch.equal(inference(model, fn=scan).as_subclass(torch.Tensor), cli)


def test_summary_follows_a_symlinked_site(tmp_path):
    "Item 5: a site folder that is a symbolic link is counted; a link looping back does not hang or double-count."
    for i in range(2): _img(tmp_path / 'study' / 'siteA', f'a{i}.nii.gz')
    for i in range(2): _img(tmp_path / 'disk2' / 'siteB', f'b{i}.nii.gz')
    os.symlink(tmp_path / 'disk2' / 'siteB', tmp_path / 'study' / 'siteB')
    os.symlink(tmp_path / 'study', tmp_path / 'disk2' / 'siteB' / 'back_to_study')  # a loop through the link
    status, out, err = _cli('summary', tmp_path / 'study')
    assert status == 0, err
    total = int(out.splitlines()[1].split()[-1])  # the 'total' column of the one geometry row
    assert total == 4, out


def test_upper_case_sha256_is_the_same_digest(tmp_path, models):
    "Item 6: a contract whose checksum a tool wrote in upper case loads, and predicts like the original."
    j = _contract_variant(tmp_path, models, 'upper', 'weights.sha256', json.loads(Path(models['one']).read_text())['weights']['sha256'].upper())
    upper, original = load_model(j), load_model(models['one'])
    assert torch.equal(upper.predict(models['image']).as_subclass(torch.Tensor), original.predict(models['image']).as_subclass(torch.Tensor))


def test_network_far_larger_is_refused_before_it_is_built(tmp_path, models, monkeypatch):
    "Item 6: the size check uses the safetensors header and a meta-device build: no real network is allocated."
    built = []
    real_init = nn.Conv3d.__init__
    def spy(self, *a, **k):
        real_init(self, *a, **k); built.append(self.weight.device.type)
    monkeypatch.setattr(nn.Conv3d, '__init__', spy)
    j = _contract_variant(tmp_path, models, 'far', 'architecture.kwargs', dict(in_channels=1, out_channels=4096, kernel_size=9))
    with pytest.raises(ValueError, match='architecture builds a network of'): load_model(j)
    assert built == ['meta'], built
