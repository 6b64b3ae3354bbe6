"""The bad-input catalogue: every way a user's input can be wrong that fastmed knows of, in one table.

Each row is (id, stage, builder, culprit, problem, error type). The builder makes the bad input in a temporary folder
and returns the call a user would make (optionally with a check to run afterwards, e.g. "no partial file left").
The test asserts the error type, that the message is ONE line, that it names the culprit (file or argument) and
that it states the problem. CLI rows run `fastmed.cli.main` and check the exit status and the one stderr line.

Some of these are also tested, in more depth, in `tests/test_io_bad_inputs.py`, `tests/test_bad_inputs_data.py`
and the notebooks; this file is the one place that lists them all. Builders are reused from there where possible.
"""
import contextlib
import errno
import io
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from fastai.data.transforms import ColReader, IndexSplitter
from fastai.learner import Learner
from fastai.vision.data import ImageBlock
from monai.losses import DiceCELoss, DiceLoss

import test_io_bad_inputs as rd  # reading builders: nifti(), dicom_series(), truncated_gz(), ...
from fastmed.io import MedicalInputError, read_volume, read_nifti, write_nifti
from fastmed.core import MedImage, MedMask, save_medical
from fastmed.data import MedDataBlock, MedMaskBlock, MedImageDataLoaders
from fastmed.dataset import MedDataset
from fastmed.transforms import PadOrCrop, ZNormalization, RandomAffine, RandomFlip
from fastmed.losses import CustomLoss
from fastmed.patches import patch_dataloaders
from fastmed.inference import predict_volume, inference
from fastmed.export import build_model, save_model, load_model
from fastmed.checkpoint import load_checkpoint
from fastmed.cli import main

AFF = np.diag([2., 2., 2., 1.])
SHAPE = (12, 12, 12)


# ---------------------------------------------------------------- small makers

def _img(d, name='img.nii.gz', data=None, affine=AFF, channels=1):
    data = np.random.default_rng(0).random((channels, *SHAPE)).astype(np.float32) if data is None else data
    return str(write_nifti(Path(d) / name, data, affine))


def _msk(d, name='msk.nii.gz', data=None, affine=AFF, dtype=np.uint8):
    if data is None: data = np.zeros(SHAPE, np.uint8); data[3:8, 3:8, 3:8] = 1
    return str(write_nifti(Path(d) / name, data, affine, dtype=dtype))


def _seg_df(d, n=3, mask=None, image=None):
    "n image/mask rows; `mask`/`image` (paths) replace those of every row if given."
    return pd.DataFrame([(image or _img(d, f'img{i}.nii.gz'), mask or _msk(d, f'msk{i}.nii.gz')) for i in range(n)],
                        columns=['img', 'mask'])


def _block(x='img', **kw):
    return MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader(x), get_y=ColReader('mask'),
                        splitter=IndexSplitter([2]), **kw)


def _batch(df, **kw):
    "What a user runs: DataLoaders, then a batch."
    return _block(**kw).dataloaders(df, bs=1, num_workers=0).one_batch()


def _read(builder):
    "A reading case from a `test_io_bad_inputs` builder: `read_volume(source, **kwargs)`."
    def build(d, models):
        source, kwargs = builder(d)
        return lambda: read_volume(source, **kwargs)
    return build


def _cli(*argv):
    "`fastmed ...` with captured output: (status, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def _patched(obj, name, fake):
    real = getattr(obj, name); setattr(obj, name, fake)
    try: yield
    finally: setattr(obj, name, real)


def _enospc_after_partial_write(fname):
    "What a full disk does: part of the file is written, then the write fails."
    Path(fname).write_bytes(b'partial'); raise OSError(errno.ENOSPC, 'No space left on device', str(fname))


def _untouched(folder, before: dict):
    "Check: `folder` holds exactly the files of `before` with the same bytes (nothing partial, no temp file)."
    def check():
        now = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
        assert now == before, f"files changed or left behind: {sorted(set(now) ^ set(before)) or 'contents differ'}"
    return check


def _snapshot(folder): return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


# ---------------------------------------------------------------- saved models (built once)

@pytest.fixture(scope='module')
def models(tmp_path_factory):
    "Two saved fastmed models (safetensors + JSON): 'one' reads 1-channel images, 'four' 4-channel ones."
    d, out = tmp_path_factory.mktemp('models'), {}
    for name, c in (('one', 1), ('four', 4)):
        df = pd.DataFrame([(_img(d, f'{name}{i}.nii.gz', channels=c), _msk(d, f'{name}_m{i}.nii.gz')) for i in range(3)],
                          columns=['img', 'mask'])
        dls = _block().dataloaders(df, bs=1, num_workers=0)
        net = build_model('torch.nn.Conv3d', in_channels=c, out_channels=1, kernel_size=1)
        out[name] = save_model(Learner(dls, net, loss_func=CustomLoss(DiceLoss(sigmoid=True))), d / 'saved' / name)
    out['image'] = Path(_img(d, 'good_input.nii.gz'))
    return out


# ---------------------------------------------------------------- builders not covered by the reading catalogue

def directory_instead_of_file(d, models): (d / 'scan.nii.gz').mkdir(); return lambda: read_nifti(d / 'scan.nii.gz')


def corrupt_nrrd_header(d, models):
    (d / 'bad.nrrd').write_text('NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4\nencoding: raw\n\n')
    return lambda: read_volume(d / 'bad.nrrd')


def four_d_where_3d_expected(d, models):
    df = _seg_df(d, image=_img(d, 'three_volumes.nii.gz', channels=3))
    return lambda: _batch(df, expected_channels=1)


def image_mask_shape_mismatch(d, models):
    return lambda: _batch(_seg_df(d, mask=_msk(d, 'short_mask.nii.gz', data=np.ones((12, 12, 10), np.uint8))))


def image_mask_affine_mismatch(d, models):
    shifted = AFF.copy(); shifted[0, 3] = 0.5
    return lambda: _batch(_seg_df(d, mask=_msk(d, 'shifted_mask.nii.gz', affine=shifted)))


def non_integer_mask(d, models):
    bad = _msk(d, 'soft_mask.nii.gz', data=np.full(SHAPE, 0.5, np.float32), dtype=np.float32)
    return lambda: _batch(_seg_df(d, mask=bad))


def negative_labels(d, models):
    m = np.zeros(SHAPE, np.int16); m[2:5, 2:5, 2:5] = -1
    return lambda: _batch(_seg_df(d, mask=_msk(d, 'ignore_mask.nii.gz', data=m, dtype=np.int16)))


def missing_mask_in_row(d, models):
    df = _seg_df(d); df['mask'] = str(d / 'lost_mask.nii.gz')  # every row: whichever item the batch draws
    return lambda: _batch(df)


def empty_dataframe(d, models): return lambda: _batch(_seg_df(d).iloc[:0])
def wrong_column_name(d, models): return lambda: _batch(_seg_df(d), x='image_path')


def from_df_wrong_column(d, models):
    df = pd.DataFrame({'img_path': [_img(d)] * 3, 'labels': ['a', 'b', 'a']})
    return lambda: MedImageDataLoaders.from_df(df, fn_col='image', label_col='labels', bs=1, num_workers=0)


def meddataset_empty_folder(d, models): (d / 'no_images').mkdir(); return lambda: MedDataset(path=d / 'no_images')
def meddataset_missing_folder(d, models): return lambda: MedDataset(path=d / 'no_such_study')
def probability_above_one(d, models): return lambda: RandomFlip(p=1.5)
def negative_degrees(d, models): return lambda: RandomAffine(degrees=-5)
def pad_size_zero(d, models): return lambda: PadOrCrop(0)


def all_zero_image_znormalization(d, models):
    df = _seg_df(d, image=_img(d, 'blank.nii.gz', data=np.zeros(SHAPE, np.float32)))
    return lambda: _batch(df, item_tfms=[ZNormalization()])


def resample_negative(d, models): return lambda: MedImage.create(_img(d), resample=-1.5)
def resample_nan(d, models): return lambda: _block(resample=float('nan'))
def resample_wrong_length(d, models): return lambda: MedImage.create(_img(d), resample=(1., 2.))


def label_beyond_model_classes(d, models):
    m = np.zeros(SHAPE, np.uint8); m[3:8, 3:8, 3:8] = 3
    dls = _block().dataloaders(_seg_df(d, mask=_msk(d, 'label3_mask.nii.gz', data=m)), bs=1, num_workers=0)
    learn = Learner(dls, nn.Conv3d(1, 2, 1), loss_func=CustomLoss(DiceCELoss(to_onehot_y=True, softmax=True)))
    def fit():
        with learn.no_logging(): learn.fit(1)
    return fit


def empty_mask_foreground_sampling(d, models):
    dls = _block().dataloaders(_seg_df(d, mask=_msk(d, 'empty_mask.nii.gz', data=np.zeros(SHAPE, np.uint8))),
                               bs=1, num_workers=0)
    return lambda: patch_dataloaders(dls, 8, samples_per_volume=2, bs=2, pos_fraction=1).train.one_batch()


def checkpoint_truncated(d, models):
    (d / 'run.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    learn = Learner(_block().dataloaders(_seg_df(d), bs=1, num_workers=0), nn.Conv3d(1, 1, 1), loss_func=nn.MSELoss())
    return lambda: load_checkpoint(learn, d / 'run.safetensors')


def wrong_channels_for_model(d, models):
    return lambda: predict_volume(load_model(models['four']), _img(d, 'one_channel.nii.gz'))


def prediction_target_under_a_file(d, models):
    (d / 'a_file').write_text('x')
    return lambda: inference(load_model(models['one']), fn=models['image'], save_path=d / 'a_file' / 'preds')


def prediction_target_in_proc(d, models):
    return lambda: inference(load_model(models['one']), fn=models['image'], save_path='/proc/fastmed_preds')


def disk_full_write_nifti(d, models):
    target = Path(write_nifti(d / 'out' / 'old.nii.gz', np.ones(SHAPE), AFF))
    def call():
        with _patched(nib, 'save', lambda img, fname: _enospc_after_partial_write(fname)):
            write_nifti(target, np.zeros(SHAPE), AFF)
    return call, _untouched(target.parent, _snapshot(target.parent))


def disk_full_save_medical(d, models):
    mask = MedMask.create(_msk(d))
    target = Path(save_medical(mask, d / 'out' / 'pred.nii.gz'))
    def call():
        with _patched(nib, 'save', lambda img, fname: _enospc_after_partial_write(fname)): save_medical(mask, target)
    return call, _untouched(target.parent, _snapshot(target.parent))


def disk_full_save_model(d, models):
    import fastmed.export as ex
    df = _seg_df(d)
    learn = Learner(_block().dataloaders(df, bs=1, num_workers=0), build_model('torch.nn.Conv3d', in_channels=1,
                    out_channels=1, kernel_size=1), loss_func=CustomLoss(DiceLoss(sigmoid=True)))
    folder = save_model(learn, d / 'models' / 'net').parent
    def call():
        with _patched(ex, '_save_safetensors', lambda net, fname: _enospc_after_partial_write(fname)):
            save_model(learn, folder / 'net')
    return call, _untouched(folder, _snapshot(folder))


def _model_copy(d, models, name='m'):
    "A writable copy of the 'one' model in `d`: (json path, safetensors path)."
    src = Path(models['one'])
    j, w = d / f'{name}.json', d / f'{name}.safetensors'
    j.write_text(src.read_text()); w.write_bytes(src.with_suffix('.safetensors').read_bytes())
    c = json.loads(j.read_text()); c['weights']['file'] = w.name; j.write_text(json.dumps(c))
    return j, w


def model_pickle_payload(d, models):
    j, w = _model_copy(d, models, 'pickled')
    torch.save({'w': torch.ones(1)}, w)  # a zip with a pickle inside
    return lambda: load_model(j)


def model_newer_major_version(d, models):
    j, _ = _model_copy(d, models, 'future')
    c = json.loads(j.read_text()); c['format_version'] = 99; c['fastmed_version'] = '99.0.0'; j.write_text(json.dumps(c))
    return lambda: load_model(j)


def model_checksum_mismatch(d, models):
    j, w = _model_copy(d, models, 'tampered')
    b = bytearray(w.read_bytes()); b[-1] ^= 0xFF; w.write_bytes(bytes(b))
    return lambda: load_model(j)


def safetensors_truncated(d, models):
    j, w = _model_copy(d, models, 'cut')
    w.write_bytes(w.read_bytes()[:12])
    return lambda: load_model(j)


def model_missing(d, models): return lambda: load_model(d / 'nowhere' / 'model.json')


def cli_nonexistent_model(d, models): return lambda: _cli('predict', d / 'no_model.json', models['image'], '-o', d / 'p')


def cli_one_bad_file_among_good(d, models):
    (d / 'broken.nii.gz').write_bytes(b'\x1f\x8b\x08 not really gzip')
    good = d / 'good.nii.gz'; good.write_bytes(Path(models['image']).read_bytes())
    def check():
        table = pd.read_csv(d / 'p' / 'volumes.csv')
        assert len(table) == 2 and (d / 'p' / 'good_pred.nii.gz').exists()  # kept going after the bad file
        assert table.error.isna().tolist() == [True, False]
    return (lambda: _cli('predict', models['one'], good, d / 'broken.nii.gz', '-o', d / 'p', '-q')), check


def cli_output_not_writable(d, models):
    (d / 'a_file').write_text('x')
    return lambda: _cli('predict', models['one'], models['image'], '-o', d / 'a_file' / 'preds', '-q')


def cli_disk_full_volumes_csv(d, models):
    out = d / 'p'; _cli('predict', models['one'], models['image'], '-o', out, '-q')
    def call():
        with _patched(pd.DataFrame, 'to_csv', lambda self, path, **kw: _enospc_after_partial_write(path)):
            return _cli('predict', models['one'], models['image'], '-o', out, '-q')
    return call, _untouched(out, _snapshot(out))


# ---------------------------------------------------------------- the catalogue

@dataclass
class Case:
    id: str
    stage: str  # reading, datablock, dataset, transforms, training, inference, writing, model, cli
    build: object  # (tmp_path, models) -> call, or (call, check)
    culprit: str  # file or argument the message must name
    problem: str  # fragment stating what is wrong
    error: type = MedicalInputError  # for stage 'cli': the exit status instead
    outputs: tuple = ()  # paths (relative to the case's folder) the call was asked to write; nothing else may change


CATALOGUE = [
    # reading: one file or DICOM folder
    Case('missing_file', 'reading', _read(rd.missing), 'missing.nii.gz', 'does not exist'),
    Case('directory_instead_of_file', 'reading', directory_instead_of_file, 'scan.nii.gz', 'is not a file'),
    Case('empty_file', 'reading', _read(rd.empty), 'empty.nii.gz', 'empty (0 bytes)'),
    Case('unsupported_extension', 'reading', _read(rd.unknown_suffix), 'scan.png', 'unknown suffix'),
    Case('truncated_gzip', 'reading', _read(rd.truncated_gz), 'trunc.nii.gz', 'corrupt or truncated'),
    Case('not_gzip_but_gz_suffix', 'reading', _read(rd.not_gzip), 'plain.nii.gz', 'Not a gzipped file'),
    Case('wrong_nifti_magic', 'reading', _read(rd.wrong_magic), 'magic.nii', 'not a readable NIfTI'),
    Case('header_claims_more_voxels', 'reading', _read(rd.header_claims_more), 'short.nii', 'truncated'),
    Case('nan_voxels', 'reading', _read(rd.nan_voxels), 'nan.nii.gz', '3 NaN'),
    Case('inf_voxels', 'reading', _read(rd.inf_voxels), 'inf.nii.gz', '1 Inf'),
    Case('image_2d', 'reading', _read(rd.image_2d), 'flat.nii.gz', 'is 2D'),
    Case('single_slice', 'reading', _read(rd.slice_2d), 'slice.nii.gz', 'a 3D volume is needed'),
    Case('image_5d', 'reading', _read(rd.image_5d), 'five.nii.gz', 'is 5D'),
    Case('spacing_zero_in_affine', 'reading', _read(rd.zero_spacing), 'zero.nii.gz', 'invalid voxel spacing'),
    Case('spacing_zero_in_pixdim', 'reading', _read(rd.zero_pixdim), 'pixdim.nii', 'invalid voxel spacing 1×0×2'),
    Case('nan_affine', 'reading', _read(rd.nan_affine), 'nanaff.nii.gz', 'non-finite'),
    Case('singular_affine', 'reading', _read(rd.singular_affine), 'singular.nii.gz', 'singular affine'),
    Case('corrupt_nrrd_header', 'reading', corrupt_nrrd_header, 'bad.nrrd', 'not a readable ITK'),
    Case('corrupt_mha', 'reading', _read(rd.corrupt_mha), 'bad.mha', 'not a readable ITK'),
    Case('dicom_gap', 'reading', _read(rd.dicom_missing_slice), 'gap_series', 'missing slice'),
    Case('dicom_mixed_orientations', 'reading', _read(rd.dicom_mixed_orientation), 'oblique_series', 'mixed orientations'),
    Case('dicom_mixed_series', 'reading', _read(rd.dicom_mixed_series), 'mixed_series', 'mixed series: 2 series'),
    Case('dicom_folder_without_images', 'reading', _read(rd.dicom_empty_folder), 'no_dicom', 'no DICOM image files'),
    Case('channel_files_shape_mismatch', 'reading', _read(rd.channels_shape), 'odd_shape.nii.gz', 'shape mismatch'),
    Case('channel_files_affine_mismatch', 'reading', _read(rd.channels_affine), 'odd_affine.nii.gz', 'affine mismatch'),
    # DataBlocks and DataFrames
    Case('4d_with_3_volumes_where_3d_expected', 'datablock', four_d_where_3d_expected, 'three_volumes.nii.gz', 'has 3 channels (4D image), expected 1'),
    Case('image_mask_shape_mismatch', 'datablock', image_mask_shape_mismatch, 'short_mask.nii.gz', 'mask shape (12, 12, 10) does not match'),
    Case('image_mask_affine_mismatch', 'datablock', image_mask_affine_mismatch, 'shifted_mask.nii.gz', 'affine differs'),
    Case('non_integer_mask', 'datablock', non_integer_mask, 'soft_mask.nii.gz', 'non-integer voxels'),
    Case('negative_labels', 'datablock', negative_labels, 'ignore_mask.nii.gz', '27 negative voxels (e.g. -1)'),
    Case('missing_mask_file_in_row', 'datablock', missing_mask_in_row, 'lost_mask.nii.gz', 'does not exist'),
    Case('empty_dataframe', 'datablock', empty_dataframe, 'source', 'is empty (0 rows'),
    Case('wrong_column_in_colreader', 'datablock', wrong_column_name, "ColReader('image_path')", 'no such column'),
    Case('wrong_fn_col_in_from_df', 'datablock', from_df_wrong_column, "ColReader('image')", 'no such column'),
    # MedDataset
    Case('meddataset_empty_folder', 'dataset', meddataset_empty_folder, 'no_images', 'holds no image files'),
    Case('meddataset_missing_folder', 'dataset', meddataset_missing_folder, 'no_such_study', 'does not exist'),
    # transforms and preprocessing arguments
    Case('probability_1.5', 'transforms', probability_above_one, 'p=1.5', 'expected a probability in [0, 1]'),
    Case('negative_degrees', 'transforms', negative_degrees, 'degrees=-5', 'second value must be equal or greater'),
    Case('pad_or_crop_size_0', 'transforms', pad_size_zero, 'size=0', 'positive int'),
    Case('all_zero_image_znormalization', 'transforms', all_zero_image_znormalization, 'blank.nii.gz', 'standard deviation is 0'),
    Case('resample_negative', 'transforms', resample_negative, 'resample=-1.5', 'positive number'),
    Case('resample_nan', 'transforms', resample_nan, 'resample=nan', 'positive number'),
    Case('resample_wrong_length', 'transforms', resample_wrong_length, 'resample=(1.0, 2.0)', '3 positive numbers'),
    # training
    Case('label_beyond_model_classes', 'training', label_beyond_model_classes, 'targ', 'mask label 3 is outside 0..1'),
    Case('empty_mask_with_foreground_sampling', 'training', empty_mask_foreground_sampling, 'empty_mask.nii.gz', 'no voxel to centre a patch on'),
    Case('checkpoint_truncated', 'training', checkpoint_truncated, 'run.safetensors', 'not a readable checkpoint'),
    # inference and writing
    Case('wrong_channel_count_for_model', 'inference', wrong_channels_for_model, 'one_channel.nii.gz', 'has 1 channel (3D image), expected 4'),
    Case('prediction_target_under_a_file', 'inference', prediction_target_under_a_file, 'a_file/preds', 'Not a directory', OSError),
    Case('prediction_target_in_proc', 'inference', prediction_target_in_proc, '/proc/fastmed_preds', 'No such file or directory', OSError),
    Case('disk_full_write_nifti', 'writing', disk_full_write_nifti, 'old.nii.gz', 'No space left on device', OSError),
    Case('disk_full_save_medical', 'writing', disk_full_save_medical, 'pred.nii.gz', 'No space left on device', OSError),
    Case('disk_full_save_model', 'writing', disk_full_save_model, 'net.safetensors', 'No space left on device', OSError),
    # model loading
    Case('model_with_pickle_payload', 'model', model_pickle_payload, 'pickled.safetensors', 'holds a pickle payload'),
    Case('model_contract_newer_major_version', 'model', model_newer_major_version, 'future.json', 'model format version 99 was written by a newer fastmed'),
    Case('model_checksum_mismatch', 'model', model_checksum_mismatch, 'tampered.safetensors', 'do not match the checksum'),
    Case('safetensors_truncated', 'model', safetensors_truncated, 'cut.safetensors', 'not a safetensors file'),
    Case('model_missing', 'model', model_missing, 'model.json', 'file not found'),
    # command line (error = exit status)
    Case('cli_nonexistent_model', 'cli', cli_nonexistent_model, 'no_model.json', 'file not found', 2),
    Case('cli_one_bad_file_among_good', 'cli', cli_one_bad_file_among_good, 'broken.nii.gz', 'corrupt or truncated', 1),
    Case('cli_output_not_writable', 'cli', cli_output_not_writable, 'a_file/preds', 'output folder is not writable', 2),
    Case('cli_disk_full_volumes_csv', 'cli', cli_disk_full_volumes_csv, 'volumes.csv', 'No space left on device', 2),
]


def test_catalogue_is_complete():
    assert len({c.id for c in CATALOGUE}) == len(CATALOGUE) >= 40
    assert {c.stage for c in CATALOGUE} >= {'reading', 'datablock', 'dataset', 'transforms', 'training', 'inference', 'cli', 'model'}


def _one_line(msg):
    assert msg.strip() and '\n' not in msg.strip() and '\r' not in msg, repr(msg)
    return msg.strip()


def file_states(folder) -> dict:
    "Every file under `folder` (links not followed) with its bytes: what a bad input must leave as it was."
    return {p: (p.read_bytes() if p.is_file() and not p.is_symlink() else str(p.readlink()) if p.is_symlink() else None)
            for p in Path(folder).rglob('*') if not p.is_dir() or p.is_symlink()}


def assert_user_files_kept(folder, before: dict, outputs=()):
    "No file of `before` was modified or deleted, except under `outputs` (the paths the user named for writing)."
    outputs = [Path(folder) / o for o in outputs]
    kept = {p: v for p, v in before.items() if not any(p == o or o in p.parents for o in outputs)}
    now = file_states(folder)
    lost = [str(p) for p, v in kept.items() if p not in now or now[p] != v]
    assert not lost, f"user files modified or deleted: {lost}"


@pytest.mark.parametrize('case', CATALOGUE, ids=[f'{c.stage}-{c.id}' for c in CATALOGUE])
def test_bad_input(tmp_path, models, case):
    built = case.build(tmp_path, models)
    call, check = built if isinstance(built, tuple) else (built, None)
    before = file_states(tmp_path)
    if case.stage == 'cli':
        status, out, err = call()
        assert status == case.error, (status, out, err)
        msg = _one_line(next(l for l in err.splitlines() if case.culprit in l))  # the line reporting it ...
        assert msg.startswith('fastmed: error:') and len(err.strip().splitlines()) == 1, err  # ... is the only one
    else:
        with pytest.raises(case.error) as info: call()
        msg = _one_line(str(info.value))
    assert case.culprit in msg, f"{case.culprit!r} not named in {msg!r}"
    assert case.problem in msg.replace(str(tmp_path), '<tmp>'), f"{case.problem!r} not in {msg!r}"
    assert_user_files_kept(tmp_path, before, case.outputs)
    if check is not None: check()


def test_patch_larger_than_volume_pads(tmp_path):
    "Not an error: a patch bigger than the (12³) volume pads the volume and returns patches of the asked size."
    dls = _block().dataloaders(_seg_df(tmp_path), bs=1, num_workers=0)
    x, y = patch_dataloaders(dls, (16, 20, 8), samples_per_volume=2, bs=2).train.one_batch()
    assert tuple(x.shape) == (2, 1, 16, 20, 8) and tuple(y.shape) == (2, 1, 16, 20, 8)
    assert y.sum() > 0  # the foreground is still in the (label-sampled) patches
    out, = PadOrCrop(20)((MedImage.create(_img(tmp_path)),))
    assert tuple(out.shape) == (1, 20, 20, 20)
