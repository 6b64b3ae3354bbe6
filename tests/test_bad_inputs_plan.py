"""Bad-input catalogue of `fastmed plan` / `fastmed train` (issue 13): data set layouts, plan.json edits, the commands.

Rows follow `tests/test_bad_inputs.py`: (id, stage, builder, culprit, problem, error type or exit status). The test
asserts the error type, ONE line, that the culprit (file or argument) is named, that the problem is stated, and that
no file of the user was modified or deleted outside the outputs the call names.
"""
import contextlib, io, json
from pathlib import Path

import numpy as np
import pytest

from test_bad_inputs import Case, file_states, assert_user_files_kept, _one_line
from fastmed.io import MedicalInputError, write_nifti
from fastmed.fingerprint import find_cases, fingerprint_dataset
from fastmed.plan import plan_main, load_plan, plan_dataset
from fastmed.train import train_main, make_spheres_dataset, load_ensemble

AFF = np.diag([2., 2., 3., 1.])


def _cli(main, *argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def _msd(d, n=3, **kw):
    "A small nnU-Net-layout data set in d/'data'."
    return make_spheres_dataset(d/'data', n=n, shape=(12, 12, 10), **kw)


def _fingerprint(d):
    return lambda: fingerprint_dataset(find_cases(d/'data'), d/'out', n_voxels=50, progress=False)


# ---------------------------------------------------------------- layouts

def label_without_image(d):
    _msd(d); (d/'data'/'imagesTr'/'ball_002_0000.nii.gz').unlink()
    return lambda: find_cases(d/'data')


def image_without_label(d):
    _msd(d); (d/'data'/'labelsTr'/'ball_001.nii.gz').unlink()
    return lambda: find_cases(d/'data')


def channel_files_differ(d):
    _msd(d)
    img = d/'data'/'imagesTr'/'ball_000_0000.nii.gz'
    (d/'data'/'imagesTr'/'ball_000_0001.nii.gz').write_bytes(img.read_bytes())  # case 0 gets a second channel
    return lambda: find_cases(d/'data')


def _as_folders(d):
    "The nnU-Net set of `_msd` as two plain folders, images/ and labels/."
    (d/'data'/'imagesTr').rename(d/'data'/'images'); (d/'data'/'labelsTr').rename(d/'data'/'labels')


def folders_label_without_image(d):
    label_without_image(d); _as_folders(d); return lambda: find_cases(d/'data')


def folders_image_without_label(d):
    image_without_label(d); _as_folders(d); return lambda: find_cases(d/'data')


def folders_channel_files_differ(d):
    channel_files_differ(d); _as_folders(d); return lambda: find_cases(d/'data')


def channel_count_in_headers_differs(d):
    "MSD style: one 4D file per case, one case with 2 channels among single-channel ones."
    for i, c in enumerate((1, 1, 2)):
        data = np.random.default_rng(i).random((c, 12, 12, 10)).astype(np.float32)
        write_nifti(d/'data'/'imagesTr'/f'case_{i}.nii.gz', data, AFF)
        lbl = np.zeros((12, 12, 10), np.uint8); lbl[3:7, 3:7, 3:6] = 1
        write_nifti(d/'data'/'labelsTr'/f'case_{i}.nii.gz', lbl, AFF, dtype=np.uint8)
    return _fingerprint(d)


def label_not_in_dataset_json(d):
    _msd(d)
    meta = json.loads((d/'data'/'dataset.json').read_text())
    meta['labels'] = {'background': 0, 'bright': 1}  # label 2 (dim) is in every label map
    (d/'data'/'dataset.json').write_text(json.dumps(meta))
    return _fingerprint(d)


def dataset_json_channel_count(d):
    _msd(d)
    meta = json.loads((d/'data'/'dataset.json').read_text())
    meta['channel_names'] = {'0': 'T1', '1': 'T2'}
    (d/'data'/'dataset.json').write_text(json.dumps(meta))
    return lambda: find_cases(d/'data')


def label_on_another_grid(d):
    _msd(d)
    shifted = AFF.copy(); shifted[0, 3] = 4.
    write_nifti(d/'data'/'labelsTr'/'ball_001.nii.gz', np.zeros((12, 12, 10), np.uint8), shifted, dtype=np.uint8)
    return _fingerprint(d)


def not_a_layout(d):
    (d/'scans').mkdir(); write_nifti(d/'scans'/'a.nii.gz', np.ones((8, 8, 8), np.float32), AFF)
    return lambda: find_cases(d/'scans')


def csv_without_label_column(d):
    _msd(d); (d/'cases.csv').write_text('image,subject\ndata/imagesTr/ball_000_0000.nii.gz,p1\n')
    return lambda: find_cases(d/'cases.csv')


def non_consecutive_labels(d):
    _msd(d)
    meta = json.loads((d/'data'/'dataset.json').read_text())
    for f in (d/'data'/'labelsTr').iterdir():  # labels 1, 2 become 1, 3
        import nibabel as nib
        img = nib.load(f); a = np.asarray(img.dataobj).copy(); a[a == 2] = 3
        write_nifti(f, a, img.affine, dtype=np.uint8)
    meta['labels'] = {'background': 0, 'bright': 1, 'dim': 3}
    (d/'data'/'dataset.json').write_text(json.dumps(meta))
    return lambda: plan_dataset(d/'data', d/'out', progress=False, folds=2, device='cpu', memory=2**28)


# ---------------------------------------------------------------- plan.json edits

def _plan_file(d, **changes):
    _msd(d)
    plan_dataset(d/'data', d/'plan', progress=False, folds=2, device='cpu', memory=2**28, base_filters=4)
    p = d/'plan'/'plan.json'
    plan = json.loads(p.read_text())
    for k, v in changes.items():
        target, keys = plan, k.split('__')
        for key in keys[:-1]: target = target[key]
        target[keys[-1]] = v
    p.write_text(json.dumps(plan))
    return p


def plan_patch_not_divisible(d):
    p = _plan_file(d, patch_size=[13, 12, 8]); return lambda: load_plan(p)


def plan_wrong_in_channels(d):
    p = _plan_file(d, network__kwargs__in_channels=2); return lambda: load_plan(p)


def plan_negative_lr(d):
    p = _plan_file(d, training__lr=-0.1); return lambda: load_plan(p)


def plan_not_json(d):
    (d/'plan.json').write_text('{"format": "fastmed-plan",'); return lambda: load_plan(d/'plan.json')


def plan_of_another_tool(d):
    (d/'plan.json').write_text('{"format": "nnunet"}'); return lambda: load_plan(d/'plan.json')


def ensemble_of_untrained_folder(d):
    (d/'run').mkdir(); return lambda: load_ensemble(d/'run')


# ---------------------------------------------------------------- commands (error = exit status)

def cli_plan_missing_source(d): return lambda: _cli(plan_main, d/'no_such_data', '-o', d/'plan', '-q')


def cli_plan_bad_time_budget(d):
    _msd(d); return lambda: _cli(plan_main, d/'data', '-o', d/'plan', '--time-budget', 'soon', '-q')


def cli_train_invalid_plan(d):
    p = _plan_file(d, batch_size=0)
    return lambda: _cli(train_main, p, '-o', d/'run', '-q')


def cli_train_label_without_image(d):
    label_without_image(d)
    return lambda: _cli(train_main, d/'data', '-o', d/'run', '--device', 'cpu', '-q')


CATALOGUE = [
    Case('label_without_image', 'layout', label_without_image, 'labelsTr/ball_002.nii.gz', 'has no image in imagesTr'),
    Case('image_without_label', 'layout', image_without_label, 'imagesTr/ball_001_0000.nii.gz', 'has no label: labelsTr holds no file named'),
    Case('channel_files_differ', 'layout', channel_files_differ, 'imagesTr', "case 'ball_001' has 1 channel file, but case 'ball_000' has 2"),
    Case('folders_label_without_image', 'layout', folders_label_without_image, 'labels/ball_002.nii.gz', 'label without an image'),
    Case('folders_image_without_label', 'layout', folders_image_without_label, 'images/ball_001_0000.nii.gz', 'image without a label'),
    Case('folders_channel_files_differ', 'layout', folders_channel_files_differ, 'ball_001_0000.nii.gz', 'channel counts differ between cases'),
    Case('channel_count_in_headers_differs', 'layout', channel_count_in_headers_differs, 'case_2.nii.gz', 'channel counts differ between cases', outputs=('out',)),
    Case('label_not_in_dataset_json', 'layout', label_not_in_dataset_json, 'ball_000.nii.gz', "label(s) [2] that dataset.json does not declare", outputs=('out',)),
    Case('dataset_json_channel_count', 'layout', dataset_json_channel_count, 'dataset.json', 'names 2 channel(s), the cases have 1'),
    Case('label_on_another_grid', 'layout', label_on_another_grid, 'ball_001.nii.gz', 'label affine differs from image', outputs=('out',)),
    Case('not_a_layout', 'layout', not_a_layout, 'scans', 'is not a data set layout fastmed knows'),
    Case('csv_without_label_column', 'layout', csv_without_label_column, 'cases.csv', 'has no label column'),
    Case('non_consecutive_labels', 'layout', non_consecutive_labels, 'data', 'labels [0, 1, 3] are not consecutive', outputs=('out',)),
    Case('plan_patch_not_divisible', 'plan', plan_patch_not_divisible, 'plan.json', "not divisible by the network's total strides", outputs=('plan',)),
    Case('plan_wrong_in_channels', 'plan', plan_wrong_in_channels, 'plan.json', 'in_channels: is 2, the data have 1 channel(s)', outputs=('plan',)),
    Case('plan_negative_lr', 'plan', plan_negative_lr, 'plan.json', 'training.lr: expected a positive number, got -0.1', outputs=('plan',)),
    Case('plan_not_json', 'plan', plan_not_json, 'plan.json', 'is not valid JSON'),
    Case('plan_of_another_tool', 'plan', plan_of_another_tool, 'plan.json', "is not a fastmed plan"),
    Case('ensemble_of_untrained_folder', 'plan', ensemble_of_untrained_folder, 'run', 'holds no plan.json'),
    Case('cli_plan_missing_source', 'cli', cli_plan_missing_source, 'no_such_data', 'does not exist', 2),
    Case('cli_plan_bad_time_budget', 'cli', cli_plan_bad_time_budget, "time budget 'soon'", 'expected a duration', 2),
    Case('cli_train_invalid_plan', 'cli', cli_train_invalid_plan, 'plan.json', 'batch_size: expected a positive integer, got 0', 2, outputs=('plan',)),
    Case('cli_train_label_without_image', 'cli', cli_train_label_without_image, 'ball_002.nii.gz', 'has no image in imagesTr', 2),
]


@pytest.mark.parametrize('case', CATALOGUE, ids=[f'{c.stage}-{c.id}' for c in CATALOGUE])
def test_bad_input(tmp_path, case):
    call = case.build(tmp_path)
    before = file_states(tmp_path)
    if case.stage == 'cli':
        status, out, err = call()
        assert status == case.error, (status, out, err)
        msg = _one_line(err)
        assert msg.startswith('fastmed: error:'), err
    else:
        with pytest.raises(case.error) as info: call()
        msg = _one_line(str(info.value))
    assert case.culprit in msg, f"{case.culprit!r} not named in {msg!r}"
    assert case.problem in msg, f"{case.problem!r} not in {msg!r}"
    assert_user_files_kept(tmp_path, before, case.outputs)
