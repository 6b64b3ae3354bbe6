"""Bad-input catalogue, reading and DataLoaders: files whose header lies, tables with holes, splits and batches that train
nothing or are scored on what was trained on (issue 10).

Three tables, in the format of `tests/test_bad_inputs.py`:
- `CATALOGUE`: rows (id, stage, builder, culprit, problem, error type) of inputs that must raise one clear line;
- `WARNINGS`: inputs that still train but not as the user meant: exactly one `MedDataWarning`, one line, naming the
  culprit;
- `READS`: inputs that used to fail or come back wrong and must now be read right (the builder returns a check).
Builders take the test's temporary folder and return the call a user would make.
"""
import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from torch import nn
from fastai.data.block import CategoryBlock, MultiCategoryBlock, RegressionBlock
from fastai.data.transforms import ColReader, IndexSplitter, RandomSplitter
from fastai.learner import Learner
from fastai.vision.data import ImageBlock
from monai.losses import DiceCELoss, DiceLoss

from test_bad_inputs import Case, _one_line, _img, _msk, _seg_df, _block, AFF, SHAPE
from fastmed.io import MedicalInputError, read_volume
from fastmed.core import MedImage, MedMask
from fastmed.data import MedDataBlock, MedMaskBlock, MedImageDataLoaders, MedDataWarning
from fastmed.losses import CustomLoss


# ---------------------------------------------------------------- small makers

def _fit(dls, model, loss_func, epochs=1):
    "What a user runs: a Learner and `fit`."
    learn = Learner(dls, model, loss_func=loss_func)
    with learn.no_logging(): learn.fit(epochs)
    return learn


def _all_batches(dls):
    "Every training and validation batch, as an epoch of `fit` draws them."
    return [b for dl in (dls.train, dls.valid) for b in dl]


def _cls_df(d, labels, **cols):
    "One 12³ image per label, with a `labels` column (and any extra columns)."
    return pd.DataFrame({'img': [_img(d, f'img{i}.nii.gz') for i in range(len(labels))], 'labels': labels, **cols})


def _from_df(df, **kw):
    return MedImageDataLoaders.from_df(df, fn_col='img', label_col=kw.pop('label_col', 'labels'), bs=kw.pop('bs', 1),
                                       num_workers=0, **kw)


def _nifti_bytes(data, dtype=np.float32, slope=None):
    "A NIfTI-1 file's bytes for `data` (an `(X, Y, Z)` array) with an optional `scl_slope`."
    img = nib.Nifti1Image(np.asarray(data, dtype), AFF, dtype=dtype)
    if slope is not None: img.header.set_slope_inter(slope, 0)
    return img.to_bytes()


def _huge_header_nifti(d, name):
    "A NIfTI file whose header says 2000³ float32 voxels (30 GiB) while it holds 400 bytes of them."
    hdr = nib.Nifti1Header(); hdr.set_data_shape((2000, 2000, 2000)); hdr.set_data_dtype(np.float32); hdr.set_data_offset(352)
    blob = hdr.binaryblock + bytes(4) + bytes(400)
    (d / name).write_bytes(gzip.compress(blob) if name.endswith('.gz') else blob)
    return d / name


def _itk(d, name, data=None):
    "An ITK file written by SimpleITK (6×5×4 float32 voxels; `.mhd`/`.nhdr` write a `<stem>.raw` data file)."
    data = np.ones((4, 5, 6), np.float32) if data is None else data
    sitk.WriteImage(sitk.GetImageFromArray(data), str(d / name))
    return d / name


# ---------------------------------------------------------------- issue 10, item 5: NaN regression target

def nan_regression_target(d):
    df = _cls_df(d, [30., 41., np.nan, 55.])
    return lambda: _from_df(df, y_block=RegressionBlock, valid_pct=0.25, seed=0)


# ---------------------------------------------------------------- issue 10, item 6: traps that must be reported

def bs_larger_than_training_set(d):
    dls = _block().dataloaders(_seg_df(d, n=4), bs=4, num_workers=0)  # 3 training items (IndexSplitter([2]))
    return lambda: _fit(dls, nn.Conv3d(1, 1, 1), CustomLoss(DiceLoss(sigmoid=True)))


def one_class_label_column(d):
    df = _cls_df(d, ['b', 'b', 'b', 'b'])
    return lambda: _from_df(df, valid_pct=0.25, seed=0)


# ---------------------------------------------------------------- issue 10, item 7: errors naming the culprit

def header_declares_30_gib(d): p = _huge_header_nifti(d, 'huge.nii'); return lambda: read_volume(p)
def header_declares_30_gib_gz(d): p = _huge_header_nifti(d, 'huge.nii.gz'); return lambda: read_volume(p)


def scl_slope_overflows_float32(d):
    (d / 'slope.nii').write_bytes(_nifti_bytes(np.full(SHAPE, 1000), np.int16, slope=1e38))
    return lambda: read_volume(d / 'slope.nii')


def mhd_data_file_missing(d):
    p = _itk(d, 'scan.mhd'); (d / 'scan.raw').unlink()
    return lambda: read_volume(p)


def empty_csv_cell_mask_path(d):
    _seg_df(d, n=3).to_csv(d / 'data.csv', index=False)
    lines = (d / 'data.csv').read_text().splitlines()
    lines[2] = lines[2].split(',')[0] + ','  # row 1: the mask cell left empty
    (d / 'data.csv').write_text('\n'.join(lines) + '\n')
    df = pd.read_csv(d / 'data.csv')
    return lambda: _block().dataloaders(df, bs=1, num_workers=0)


def mask_label_out_of_range_names_file(d):
    m = np.zeros(SHAPE, np.uint8); m[3:8, 3:8, 3:8] = 3
    df = _seg_df(d, n=4)
    df.loc[1, 'mask'] = _msk(d, 'label3_mask.nii.gz', data=m)  # one of the 3 training masks
    dls = _block().dataloaders(df, bs=3, num_workers=0)  # the 3 training items in one batch, in random order
    return lambda: _fit(dls, nn.Conv3d(1, 2, 1), CustomLoss(DiceCELoss(to_onehot_y=True, softmax=True)))


def four_d_mask(d):
    regions = np.stack([np.zeros(SHAPE, np.uint8)] * 3); regions[:, 3:8, 3:8, 3:8] = 1
    df = _seg_df(d); df.loc[0, 'mask'] = _msk(d, 'regions_mask.nii.gz', data=regions)
    return lambda: _all_batches(_block().dataloaders(df, bs=1, num_workers=0))


def four_d_image_among_3d(d):
    df = _seg_df(d, n=3); df.loc[1, 'img'] = _img(d, 'three_volumes.nii.gz', channels=3)
    return lambda: _all_batches(_block().dataloaders(df, bs=2, num_workers=0))


# ---------------------------------------------------------------- more reading cases

def nhdr_data_file_missing(d):
    p = _itk(d, 'detached.nhdr'); (d / 'detached.raw').unlink()
    return lambda: read_volume(p)


def mha_truncated(d):
    blob = _itk(d, 'ok.mha').read_bytes()
    (d / 'short.mha').write_bytes(blob[:-8])
    return lambda: read_volume(d / 'short.mha')


def mhd_data_file_short(d):
    p = _itk(d, 'short.mhd'); (d / 'short.raw').write_bytes(bytes(472))
    return lambda: read_volume(p)


def nrrd_header_declares_437_tib(d):
    blob = _itk(d, 'ok.nrrd').read_bytes()
    (d / 'huge.nrrd').write_bytes(blob.replace(b'sizes: 6 5 4', b'sizes: 60000 50000 40000'))
    return lambda: read_volume(d / 'huge.nrrd')


def nii_gz_shorter_than_header(d):
    hdr = nib.Nifti1Header(); hdr.set_data_shape((10, 10, 4)); hdr.set_data_dtype(np.float32); hdr.set_data_offset(352)
    (d / 'cut.nii.gz').write_bytes(gzip.compress(hdr.binaryblock + bytes(4) + bytes(400)))  # a valid gzip, 1200 B short
    return lambda: read_volume(d / 'cut.nii.gz')


def complex_voxels(d):
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.complex64) * (1 + 2j), AFF), d / 'complex.nii')
    return lambda: read_volume(d / 'complex.nii')


def rgb_voxels(d):
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, [('R', 'u1'), ('G', 'u1'), ('B', 'u1')]), AFF), d / 'rgb.nii')
    return lambda: read_volume(d / 'rgb.nii')


def mask_label_above_int32(d):
    ids = np.zeros(SHAPE, np.int64); ids[3:8, 3:8, 3:8] = 2**31 + 5
    nib.save(nib.Nifti1Image(ids, AFF, dtype=np.int64), d / 'huge_id_mask.nii.gz')
    return lambda: MedMask.create(d / 'huge_id_mask.nii.gz', resample=1.)


# ---------------------------------------------------------------- more DataFrame cases

def regression_target_text(d): df = _cls_df(d, [30, 'unknown', 40.]); return lambda: _from_df(df, y_block=RegressionBlock)
def regression_target_as_text(d): df = _cls_df(d, ['30', '41', '40']); return lambda: _from_df(df, y_block=RegressionBlock)
def regression_target_inf(d): df = _cls_df(d, [30., 40., np.inf]); return lambda: _from_df(df, y_block=RegressionBlock)
def category_label_empty(d): df = _cls_df(d, ['b', np.nan, 'm', 'b']); return lambda: _from_df(df)


def multicategory_cell_nan(d):
    df = _cls_df(d, ['a', 'b', 'a'], findings=[np.nan, 'x;y', 'x'])
    return lambda: _from_df(df, label_col='findings', label_delim=';')


def path_cell_is_a_number(d):
    df = _cls_df(d, ['b', 'm', 'b']).assign(img=[7, 8, 9])  # fn_col pointed at an id column
    return lambda: _from_df(df)


def blank_path_string(d):
    df = _seg_df(d); df.loc[1, 'mask'] = '  '  # would have been read as the current folder (a "DICOM series")
    return lambda: _block().dataloaders(df, bs=1, num_workers=0)


def channel_list_cell_empty(d):
    df = _seg_df(d).assign(t2=lambda f: f['img']); df.loc[1, 't2'] = np.nan
    block = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader(['img', 't2']),
                         get_y=ColReader('mask'), splitter=IndexSplitter([2]))
    return lambda: block.dataloaders(df, bs=1, num_workers=0)


def valid_col_strings(d):
    df = _cls_df(d, ['b', 'm', 'b', 'm'], is_val=['False', 'False', 'True', 'False'])  # a CSV column read as text
    return lambda: _from_df(df, valid_col='is_val')


def valid_col_empty_cell(d):
    df = _cls_df(d, ['b', 'm', 'b', 'm'], is_val=[False, np.nan, True, False])
    return lambda: _from_df(df, valid_col='is_val')


def valid_col_missing(d): df = _cls_df(d, ['b', 'm', 'b']); return lambda: _from_df(df, valid_col='is_val')
def training_split_empty(d): df = _cls_df(d, ['b', 'm', 'b']); return lambda: _from_df(df, valid_pct=1.0)
def bs_zero(d): df = _cls_df(d, ['b', 'm', 'b', 'm']); return lambda: _from_df(df, bs=0)


def first_image_4d_others_3d(d):
    df = _seg_df(d, n=3); df.loc[0, 'img'] = _img(d, 'first_4d.nii.gz', channels=3)
    return lambda: _all_batches(_block().dataloaders(df, bs=1, num_workers=0))


CATALOGUE = [
    # issue 10 item 5
    Case('nan_regression_target', 'datablock', nan_regression_target, "column 'labels', row 2", 'is empty: every row needs a regression target'),
    # issue 10 item 6
    Case('bs_larger_than_training_set', 'training', bs_larger_than_training_set, 'bs=4', 'is larger than the 3 training items'),
    Case('one_class_label_column', 'datablock', one_class_label_column, "column 'labels'", "has 1 class ('b') in the training set"),
    # issue 10 item 7
    Case('header_declares_30_gib', 'reading', header_declares_30_gib, 'huge.nii', 'is truncated: its header declares 2000×2000×2000 float32 voxels (29.8 GiB) but the file holds 400 B'),
    Case('header_declares_30_gib_gz', 'reading', header_declares_30_gib_gz, 'huge.nii.gz', '(29.8 GiB) but the file holds at most'),
    Case('scl_slope_overflows_float32', 'reading', scl_slope_overflows_float32, 'slope.nii', "scl_slope 1e+38 (scl_inter 0) scales its voxels up to 1e+41, beyond float32's range"),
    Case('mhd_data_file_missing', 'reading', mhd_data_file_missing, 'scan.raw', "does not exist: it is the data file named in '<tmp>/scan.mhd'"),
    Case('empty_csv_cell_mask_path', 'datablock', empty_csv_cell_mask_path, "column 'mask', row 1", 'is empty (NaN), an image path is needed'),
    Case('mask_label_out_of_range_names_file', 'training', mask_label_out_of_range_names_file, 'label3_mask.nii.gz', 'mask label 3 is outside 0..1'),
    Case('four_d_mask', 'datablock', four_d_mask, 'regions_mask.nii.gz', 'has 3 channels (a 4D file), a mask must be one 3D label map'),
    Case('four_d_image_among_3d', 'datablock', four_d_image_among_3d, 'three_volumes.nii.gz', 'has 3 channels (4D image) but the first image'),
    # reading
    Case('nhdr_data_file_missing', 'reading', nhdr_data_file_missing, 'detached.raw', "does not exist: it is the data file named in '<tmp>/detached.nhdr'"),
    Case('mha_truncated', 'reading', mha_truncated, 'short.mha', 'is truncated: its header declares 6×5×4 float32 voxels (480 B) but the file holds 472 B'),
    Case('mhd_data_file_short', 'reading', mhd_data_file_short, 'short.mhd', "but its data file 'short.raw' holds 472 B"),
    Case('nrrd_header_declares_437_tib', 'reading', nrrd_header_declares_437_tib, 'huge.nrrd', '60000×50000×40000 float32 voxels (437 TiB) but the file holds 480 B'),
    Case('nii_gz_shorter_than_header', 'reading', nii_gz_shorter_than_header, 'cut.nii.gz', '10×10×4 float32 voxels (1.56 KiB) but the file holds 400 B'),
    Case('complex_voxels', 'reading', complex_voxels, 'complex.nii', 'holds complex (complex64) voxels'),
    Case('rgb_voxels', 'reading', rgb_voxels, 'rgb.nii', 'holds 3-field voxels (R, G, B, e.g. RGB)'),
    Case('mask_label_above_int32', 'reading', mask_label_above_int32, 'huge_id_mask.nii.gz', 'mask has label 2147483653, above 2147483647'),
    # DataFrames, splits and batches
    Case('regression_target_text', 'datablock', regression_target_text, "column 'labels', row 1", "is the text 'unknown', not a number"),
    Case('regression_target_as_text', 'datablock', regression_target_as_text, "column 'labels', row 0", "is the text '30', not a number"),
    Case('regression_target_inf', 'datablock', regression_target_inf, "column 'labels', row 2", 'is inf: regression targets must be finite'),
    Case('category_label_empty', 'datablock', category_label_empty, "column 'labels', row 1", 'is empty: every row needs a label'),
    Case('multicategory_cell_nan', 'datablock', multicategory_cell_nan, "column 'findings', row 0", "write '' for a row without labels"),
    Case('path_cell_is_a_number', 'datablock', path_cell_is_a_number, "column 'img', row 0", 'is 7 (int'),
    Case('blank_path_string', 'datablock', blank_path_string, "column 'mask', row 1", 'is empty (a blank string)'),
    Case('channel_list_cell_empty', 'datablock', channel_list_cell_empty, "column 't2', row 1", 'is empty (NaN)'),
    Case('valid_col_strings', 'datablock', valid_col_strings, "column 'is_val', row 0", "is 'False', not True/False (ColSplitter would put the row in the validation set)"),
    Case('valid_col_empty_cell', 'datablock', valid_col_empty_cell, "column 'is_val', row 1", 'is nan, not True/False'),
    Case('valid_col_missing', 'datablock', valid_col_missing, "valid_col='is_val'", 'no such column'),
    Case('training_split_empty', 'datablock', training_split_empty, 'splitter', 'put all 3 items in the validation set: none is left to train on'),
    Case('bs_zero', 'datablock', bs_zero, 'bs=0', 'expected a positive integer'),
    Case('first_image_4d_others_3d', 'datablock', first_image_4d_others_3d, 'img1.nii.gz', "has 1 channel (3D image) but the first image '<tmp>/first_4d.nii.gz' has 3"),
]


def test_catalogue_is_complete():
    assert len({c.id for c in CATALOGUE}) == len(CATALOGUE) >= 30


@pytest.mark.parametrize('case', CATALOGUE, ids=[f'{c.stage}-{c.id}' for c in CATALOGUE])
def test_bad_input(tmp_path, case):
    call = case.build(tmp_path)
    with pytest.raises(case.error) as info: call()
    msg = _one_line(str(info.value)).replace(str(tmp_path), '<tmp>')
    assert msg.lstrip("'").startswith(case.culprit) or msg.lstrip("'").startswith(f'<tmp>/{case.culprit}'), \
        f"message does not start with {case.culprit!r}: {msg!r}"
    assert case.problem in msg, f"{case.problem!r} not in {msg!r}"


# ---------------------------------------------------------------- warnings: it trains, but not as meant

def duplicated_rows_across_split(d):
    df = _seg_df(d, n=3); df = pd.concat([df, df.iloc[[0]]], ignore_index=True)  # row 3 repeats row 0
    return lambda: MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('img'),
                                get_y=ColReader('mask'), splitter=IndexSplitter([3])).dataloaders(df, bs=1, num_workers=0)


def empty_validation_split(d): df = _cls_df(d, ['b', 'm', 'b']); return lambda: _from_df(df, valid_pct=0.2, seed=0)


def every_mask_empty(d):
    dls = _block().dataloaders(_seg_df(d, n=3, mask=_msk(d, 'blank_mask.nii.gz', data=np.zeros(SHAPE, np.uint8))), bs=1, num_workers=0)
    return lambda: _fit(dls, nn.Conv3d(1, 1, 1), CustomLoss(DiceLoss(sigmoid=True)), epochs=2)


WARNINGS = [  # (id, builder, culprit the line starts with, problem)
    ('duplicated_rows_across_split', duplicated_rows_across_split, "column 'img'", "1 validation image(s) are also in the training set (e.g. '<tmp>/img0.nii.gz', row 3)"),
    ('empty_validation_split', empty_validation_split, 'splitter', 'the validation set is empty (0 of 3 items)'),
    ('every_mask_empty', every_mask_empty, 'blank_mask.nii.gz', 'like every mask of the 2 training items in an epoch'),
]


@pytest.mark.parametrize('build,culprit,problem', [w[1:] for w in WARNINGS], ids=[w[0] for w in WARNINGS])
def test_warns(tmp_path, build, culprit, problem):
    call = build(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        call()
    ours = [w for w in caught if w.category is MedDataWarning]
    assert len(ours) == 1, [str(w.message) for w in caught]
    msg = _one_line(str(ours[0].message)).replace(str(tmp_path), '<tmp>').lstrip("'")
    assert msg.startswith(culprit) or msg.startswith(f'<tmp>/{culprit}'), msg
    assert problem in msg, f"{problem!r} not in {msg!r}"


def test_no_warning_for_clean_data(tmp_path):
    "Distinct images, a non-empty validation set, masks with foreground: training runs without a `MedDataWarning`."
    dls = _block().dataloaders(_seg_df(tmp_path, n=4), bs=1, num_workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        _fit(dls, nn.Conv3d(1, 1, 1), CustomLoss(DiceLoss(sigmoid=True)))
    assert not [w for w in caught if w.category is MedDataWarning], [str(w.message) for w in caught]


# ---------------------------------------------------------------- read right: files that failed or came back wrong

def plain_nifti_named_nii_gz(d):
    vol = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    (d / 'plain.nii.gz').write_bytes(_nifti_bytes(vol))
    def check():
        x, a = read_volume(d / 'plain.nii.gz')
        assert torch.equal(x[0], torch.from_numpy(vol)) and np.allclose(a, AFF)
    return check


def gzipped_nifti_named_nii(d):
    vol = np.random.default_rng(1).random(SHAPE).astype(np.float32)
    (d / 'zipped.nii').write_bytes(gzip.compress(_nifti_bytes(vol)))
    def check(): assert torch.equal(read_volume(d / 'zipped.nii')[0][0], torch.from_numpy(vol))
    return check


def nifti_gz_of_two_members(d):
    "A valid multi-member gzip (`cat a.gz b.gz`): its trailer counts only the last member; the size check must not refuse it."
    blob = _nifti_bytes(np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE))
    (d / 'two.nii.gz').write_bytes(gzip.compress(blob[:1000]) + gzip.compress(blob[1000:]))
    def check(): assert float(read_volume(d / 'two.nii.gz')[0].max()) == np.prod(SHAPE) - 1
    return check


def int64_labels_above_2_24(d):
    ids = np.zeros(SHAPE, np.int64); ids[2:5, 2:5, 2:5] = 2**24; ids[6:9, 6:9, 6:9] = 2**24 + 1
    nib.save(nib.Nifti1Image(ids, AFF, dtype=np.int64), d / 'instances.nii.gz')
    def check():
        for kw in ({}, dict(reorder=True, resample=1.)):
            m = MedMask.create(d / 'instances.nii.gz', **kw)
            assert m.dtype == torch.int64 and m.unique().tolist() == [0, 2**24, 2**24 + 1], kw  # float32 merged the two
    return check


READS = [plain_nifti_named_nii_gz, gzipped_nifti_named_nii, nifti_gz_of_two_members, int64_labels_above_2_24]


@pytest.mark.parametrize('build', READS, ids=[f.__name__ for f in READS])
def test_reads_right(tmp_path, build):
    build(tmp_path)()
