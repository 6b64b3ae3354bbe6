"""Catalogue of bad inputs at the data, transform and inference level.

Each case builds its data in `tmp_path` and checks what the user actually sees: a `MedicalInputError` whose
message is one line, starts with the offending file (or argument) and says what is wrong. Errors raised while
fastai builds or iterates the DataLoaders are checked as they come out of `dblock.dataloaders(...)` /
`dls.one_batch()`, i.e. after any wrapping by fastai or PyTorch.
"""
import json
import pickle

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from fastai.data.transforms import ColReader, IndexSplitter
from fastai.learner import Learner
from fastai.vision.data import ImageBlock

from fastmed.io import MedicalInputError, write_nifti
from fastmed.core import MedImage, MedMask
from fastmed.transforms import PadOrCrop, ZNormalization
from fastmed.data import MedDataBlock, MedMaskBlock, MedImageDataLoaders
from fastmed.inference import inference, load_variables, store_variables

AFF = np.diag([2., 2., 2., 1.])
SHAPE = (12, 12, 12)


def _check(err, culprit, *words):
    "`err` is one line, starts with `culprit` (a file or `argument=`; possibly quoted) and holds all `words`."
    msg = str(err.value if hasattr(err, 'value') else err)
    assert isinstance(err.value if hasattr(err, 'value') else err, MedicalInputError), repr(msg)
    assert '\n' not in msg and msg.strip(), repr(msg)
    assert msg.lstrip("'").startswith(str(culprit)), f"message does not start with {str(culprit)!r}: {msg[:300]!r}"
    for w in words: assert w.lower() in msg.lower(), f"{w!r} not in {msg[:300]!r}"
    return msg


def _img(tmp_path, name='img.nii.gz', shape=SHAPE, affine=AFF, data=None):
    data = np.random.default_rng(0).random(shape).astype(np.float32) if data is None else data
    return str(write_nifti(tmp_path / name, data, affine))


def _msk(tmp_path, name='msk.nii.gz', shape=SHAPE, affine=AFF, data=None, dtype=np.uint8):
    if data is None: data = np.zeros(shape, np.uint8); data[3:8, 3:8, 3:8] = 1
    return str(write_nifti(tmp_path / name, data, affine, dtype=dtype))


def _block(valid=(2,), **kwargs):
    return MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('img'),
                        get_y=ColReader('mask'), splitter=IndexSplitter(list(valid)), **kwargs)


def _df(pairs): return pd.DataFrame(pairs, columns=['img', 'mask'])


def _load(df, bs=1, **kwargs):
    "What a user runs: build the DataLoaders and look at a batch."
    block_kw = {k: kwargs.pop(k) for k in list(kwargs) if k not in ('num_workers',)}
    dls = _block(**block_kw).dataloaders(df, bs=bs, **kwargs)
    dls.one_batch()
    return dls


# ---------------------------------------------------------------- image/mask pairs through MedDataBlock

def test_shape_mismatch(tmp_path):
    img, bad = _img(tmp_path), _msk(tmp_path, 'short_mask.nii.gz', shape=(12, 12, 10))
    with pytest.raises(MedicalInputError) as e: _load(_df([(img, bad)] * 3))
    _check(e, bad, 'mask shape (12, 12, 10)', 'does not match', img, '(12, 12, 12)')


def test_affine_mismatch_beyond_tolerance(tmp_path):
    img = _img(tmp_path)
    shifted = AFF.copy(); shifted[0, 3] = 0.5  # half a millimetre off
    bad = _msk(tmp_path, 'shifted_mask.nii.gz', affine=shifted)
    with pytest.raises(MedicalInputError) as e: _load(_df([(img, bad)] * 3))
    _check(e, bad, 'affine differs', img, '0.5 mm')
    flipped = AFF.copy(); flipped[0, 0] = -2.  # same shape and origin, other orientation
    bad = _msk(tmp_path, 'flipped_mask.nii.gz', affine=flipped)
    with pytest.raises(MedicalInputError) as e: _load(_df([(img, bad)] * 3))
    _check(e, bad, 'affine differs', img)


def test_affine_within_tolerance_is_accepted(tmp_path):
    img = _img(tmp_path)
    close = AFF.copy(); close[:3, 3] = 1e-4  # float32 header round-off is of this order
    dls = _load(_df([(img, _msk(tmp_path, affine=close))] * 3))
    assert tuple(dls.one_batch()[1].shape) == (1, 1, *SHAPE)


def test_non_integer_float_mask(tmp_path):
    img = _img(tmp_path)
    bad = _msk(tmp_path, 'half_mask.nii.gz', data=np.full(SHAPE, 0.5, np.float32), dtype=np.float32)
    with pytest.raises(MedicalInputError) as e: _load(_df([(img, bad)] * 3))
    _check(e, bad, 'non-integer', '0.5', 'integer')


def test_nearly_integer_float_mask_is_rounded(tmp_path):
    near = np.zeros(SHAPE, np.float32); near[3:8, 3:8, 3:8] = 0.99999997  # float32 noise of a resampling tool
    msk = _msk(tmp_path, 'near_mask.nii.gz', data=near, dtype=np.float32)
    m = MedMask.create(msk)
    assert m.dtype == torch.int64 and set(m.unique().tolist()) == {0, 1} and int(m.sum()) == 125
    dls = _load(_df([(_img(tmp_path), msk)] * 3), bs=2)
    for dl in (dls.train, dls.valid):
        y = dl.one_batch()[1]
        assert y.dtype == torch.int64 and set(y.unique().tolist()) == {0, 1} and int(y[0].sum()) == 125


def test_missing_image_file(tmp_path):
    missing = tmp_path / 'no_such_scan.nii.gz'
    with pytest.raises(MedicalInputError) as e: _load(_df([(str(missing), _msk(tmp_path))] * 3))
    _check(e, missing, 'does not exist')


def test_corrupt_gz_image(tmp_path):
    good = _img(tmp_path)
    corrupt = tmp_path / 'corrupt.nii.gz'
    corrupt.write_bytes(open(good, 'rb').read()[:300])  # gzip stream cut short
    with pytest.raises(MedicalInputError) as e: _load(_df([(str(corrupt), _msk(tmp_path))] * 3))
    _check(e, corrupt, 'corrupt or truncated')


def test_nan_voxels(tmp_path):
    data = np.random.default_rng(0).random(SHAPE).astype(np.float32); data[1, 2, 3:5] = np.nan
    path = tmp_path / 'nan.nii.gz'
    with pytest.raises(MedicalInputError) as e: write_nifti(path, data, AFF)  # fastmed refuses to write it ...
    _check(e, path, 'nan')
    nib.save(nib.Nifti1Image(data, AFF), path)  # ... so another tool wrote it
    for cls in (MedImage, MedMask):
        with pytest.raises(MedicalInputError) as e: cls.create(path, reorder=True, resample=1.)
        _check(e, path, '2 NaN')
    with pytest.raises(MedicalInputError) as e: _load(_df([(str(path), _msk(tmp_path))] * 3))
    _check(e, path, '2 NaN')


# ---------------------------------------------------------------- a bad item that is not the first one

def _later_bad_item(tmp_path, bad_img=None, bad_msk=None):
    "Train items 0, 1 and valid item 2 are fine; valid item 3 is bad (so fastai's setup pass does not see it)."
    good = [(_img(tmp_path, f'img{i}.nii.gz'), _msk(tmp_path, f'msk{i}.nii.gz')) for i in range(3)]
    return _df(good + [(bad_img or good[0][0], bad_msk or good[0][1])])


def _first_batch(dl): return dl.one_batch()  # fastai switches worker processes off for one_batch


def _all_batches(dl):  # what fit/validate/get_preds do: iterate, in worker processes if num_workers > 0
    # (fastai's default num_workers is > 0 on multi-core machines)
    for _ in dl: pass


@pytest.mark.parametrize('num_workers', [0, 1], ids=['main_process', 'worker_process'])
@pytest.mark.parametrize('look', [_first_batch, _all_batches], ids=['one_batch', 'iterate'])
@pytest.mark.parametrize('problem', ['missing_image', 'mask_shape'])
def test_bad_item_after_the_first(tmp_path, problem, look, num_workers):
    "The error raised while fastai/PyTorch load a later item reaches the user unchanged (type and one-line message)."
    if problem == 'missing_image':
        culprit, words = tmp_path / 'lost_scan.nii.gz', ('does not exist',)
        df = _later_bad_item(tmp_path, bad_img=str(culprit))
    else:
        culprit, words = _msk(tmp_path, 'short_mask.nii.gz', shape=(12, 12, 10)), ('mask shape (12, 12, 10)', 'does not match')
        df = _later_bad_item(tmp_path, bad_msk=culprit)
    dls = _block(valid=(2, 3)).dataloaders(df, bs=2, num_workers=num_workers)
    with pytest.raises(MedicalInputError) as e: look(dls.valid)
    _check(e, culprit, *words)


# ---------------------------------------------------------------- channels and dimensions

def test_2d_image_with_expected_channels(tmp_path):
    msk = _msk(tmp_path)
    slab = _img(tmp_path, 'slice.nii.gz', shape=(12, 12, 1))  # one slice: a 2D image
    with pytest.raises(MedicalInputError) as e: _load(_df([(slab, msk)] * 3), expected_channels=1)
    _check(e, slab, '2D', 'a 3D volume is needed')
    flat = tmp_path / 'flat.nii.gz'  # truly 2D file (write_nifti refuses to write one)
    nib.save(nib.Nifti1Image(np.ones((12, 12), np.float32), AFF), flat)
    with pytest.raises(MedicalInputError) as e: _load(_df([(str(flat), msk)] * 3), expected_channels=1)
    _check(e, flat, '2D', 'a 3D volume is needed')


def test_4d_three_channel_image_with_expected_channels(tmp_path):
    rgb = _img(tmp_path, 'three.nii.gz', shape=(3, *SHAPE))  # written as a 4D NIfTI, channels last
    with pytest.raises(MedicalInputError) as e: _load(_df([(rgb, _msk(tmp_path))] * 3), expected_channels=1)
    _check(e, rgb, 'has 3 channels', 'expected 1')
    # the mask is not held to the image's channel count, and a right image passes
    dls = _load(_df([(_img(tmp_path), _msk(tmp_path))] * 3), expected_channels=1)
    assert dls.one_batch()[0].shape[1] == 1


# ---------------------------------------------------------------- preprocessing arguments

BAD_SPACINGS = [0, -1.5, (1., 2.), (1., 1., 1., 1.), (1., 0., 1.), float('nan'), float('inf'), 'abc']


@pytest.mark.parametrize('value', BAD_SPACINGS, ids=repr)
@pytest.mark.parametrize('arg', ['resample', 'target_spacing'])
def test_bad_spacing_argument(tmp_path, arg, value):
    img = _img(tmp_path)
    for make in (lambda: MedImage.create(img, **{arg: value}),
                 lambda: MedMask.create(_msk(tmp_path), **{arg: value}),
                 lambda: _block(**{arg: value}),
                 lambda: MedImageDataLoaders.from_df(_df([(img, 'a')] * 3), **{arg: value})):
        with pytest.raises(MedicalInputError) as e: make()
        _check(e, f'{arg}=', 'expected', 'positive')


def test_conflicting_spellings(tmp_path):
    img = _img(tmp_path)
    for make in (lambda **kw: MedImage.create(img, **kw), lambda **kw: _block(**kw),
                 lambda **kw: MedImageDataLoaders.from_df(_df([(img, 'a')] * 3), **kw)):
        with pytest.raises(MedicalInputError) as e: make(reorder=True, apply_reorder=False)
        _check(e, 'reorder=True', 'apply_reorder=False', 'disagree')
        with pytest.raises(MedicalInputError) as e: make(resample=1., target_spacing=2.)
        _check(e, 'resample=1.0', 'target_spacing=2.0', 'disagree')


def test_same_setting_in_both_spellings_is_accepted(tmp_path):
    "Giving one setting under both names is not a conflict, whether the spacing is spelled as a scalar or 3 numbers."
    img = _img(tmp_path)
    item = MedImage.create(img, reorder=True, apply_reorder=True)
    assert item.spacing == (2., 2., 2.) and item.geometry.steps == ()  # already RAS: nothing to do
    for kw in (dict(resample=1., target_spacing=1.), dict(resample=(1, 1, 1), target_spacing=(1., 1., 1.)),
               dict(resample=1., target_spacing=(1, 1, 1)), dict(resample=(1., 1., 1.), target_spacing=1)):
        assert MedImage.create(img, **kw).spacing == (1., 1., 1.), kw
        assert _block(**kw).resample == (1., 1., 1.), kw


@pytest.mark.parametrize('size', [0, -3, (4, 4), (4, 0, 4), (4, 4, 4, 4), 2.5, (4., 4., 4.), None], ids=repr)
def test_pad_or_crop_bad_size(size):
    with pytest.raises(MedicalInputError) as e: PadOrCrop(size)
    _check(e, 'size=', 'expected', 'positive int')


@pytest.mark.parametrize('channel_wise', [True, False])
def test_znormalization_of_constant_image(tmp_path, channel_wise):
    zero = _img(tmp_path, 'blank.nii.gz', data=np.zeros(SHAPE, np.float32))
    with pytest.raises(MedicalInputError) as e: ZNormalization(channel_wise=channel_wise)((MedImage.create(zero),))
    _check(e, zero, 'ZNormalization', 'standard deviation is 0')
    # and the same through a DataBlock
    with pytest.raises(MedicalInputError) as e:
        _load(_df([(zero, _msk(tmp_path))] * 3), item_tfms=[ZNormalization(channel_wise=channel_wise)])
    _check(e, zero, 'ZNormalization', 'standard deviation is 0')


# ---------------------------------------------------------------- inference-level inputs

def test_load_variables_refuses_pickles(tmp_path):
    pkl = tmp_path / 'vars.pkl'
    pkl.write_bytes(pickle.dumps({'size': [16, 16, 16], 'reorder': True, 'resample': 1.}))
    with pytest.raises(MedicalInputError) as e: load_variables(pkl)
    _check(e, pkl, 'not a JSON variables file', 'pickle')
    with pytest.raises(MedicalInputError) as e: load_variables(tmp_path / 'missing.pkl')
    _check(e, tmp_path / 'missing.pkl', 'not found')
    # what store_variables writes (whatever the suffix) loads back
    store_variables(tmp_path / 'ok.pkl', (16, 16, 16), True, (1., 1., 1.))
    assert load_variables(tmp_path / 'ok.pkl') == ([16, 16, 16], True, [1., 1., 1.])


def test_load_variables_json_without_the_settings(tmp_path):
    path = tmp_path / 'other.json'
    path.write_text(json.dumps({'lr': 0.01}))  # JSON, but not a variables file
    with pytest.raises(MedicalInputError) as e: load_variables(path)
    _check(e, path)


@pytest.fixture
def learner(tmp_path):
    "A Learner whose DataLoaders reorient to RAS and resample to 2 mm; the model is a fixed 1×1×1 convolution."
    pairs = [(_img(tmp_path, f'img{i}.nii.gz'), _msk(tmp_path, f'msk{i}.nii.gz')) for i in range(3)]
    dls = _block(reorder=True, resample=2., item_tfms=[PadOrCrop(16)]).dataloaders(_df(pairs), bs=1, num_workers=0)
    return Learner(dls, nn.Conv3d(1, 1, 1), loss_func=nn.BCEWithLogitsLoss()), pairs[0][0]


def test_inference_with_other_preprocessing_than_training(learner, tmp_path):
    learn, fn = learner
    for resample in (1., (2., 2., 1.)):
        with pytest.raises(MedicalInputError) as e: inference(learn, resample=resample, fn=fn)
        _check(e, f'resample={resample!r}', 'trained with', '2.0')
    with pytest.raises(MedicalInputError) as e: inference(learn, reorder=False, fn=fn)
    _check(e, 'reorder=False', 'trained with reorder=True')
    # the training settings (in any spelling) or none at all are accepted, and the mask comes back on the source grid
    for kw in (dict(reorder=True, resample=2), dict(resample=(2., 2., 2.)), {}):
        m = inference(learn, fn=fn, **kw)
        assert isinstance(m, MedMask) and tuple(m.shape) == (1, *SHAPE)
        np.testing.assert_allclose(m.affine, AFF, atol=1e-5)
