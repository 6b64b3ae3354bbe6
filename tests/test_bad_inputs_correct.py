"""Bad-input catalogue of click-guided correction (`fastmed.correct`, issue 16): clicks, windows, grids.

Rows follow `tests/test_bad_inputs.py`: (id, stage, builder, culprit, problem, error type). The test asserts the error
type, ONE line, that the culprit (argument) is named, that the problem is stated, and that no file of the user was
modified or deleted (correction writes nothing).
"""
import numpy as np
import pytest
import torch

from test_bad_inputs import Case, file_states, assert_user_files_kept, _one_line
from fastmed.io import write_nifti
from fastmed.core import MedImage, MedMask
from fastmed.synthetic import make_affine
from fastmed.correct import Click, correct, correction_unet, simulate_click, CorrectionSamples

SHAPE = (16, 12, 8)


def _image(d, orientation='LPS'):
    "An image file in d and the MedImage read from it (its source grid), with an empty mask on that grid."
    aff = make_affine((1., 1.2, 2.), orientation, shape=SHAPE)
    write_nifti(d/'image.nii.gz', np.random.default_rng(0).random(SHAPE).astype(np.float32), aff)
    image = MedImage.create(d/'image.nii.gz')
    return image, MedMask.from_data(torch.zeros(1, *SHAPE, dtype=torch.long), image.geometry)


def _correct(d, clicks, **kw):
    image, mask = _image(d)
    return lambda: correct(correction_unet(), image, mask, clicks, **kw)


def click_outside_volume(d): return _correct(d, [Click((3, 3, 3)), Click((3, 40, 3), False)], space='voxel', patch=8)
def click_world_far_away(d): return _correct(d, [Click((500., 0., 0.))], patch=8)
def click_two_coordinates(d): return _correct(d, [((4, 5), True)], patch=8)
def click_not_a_number(d): return _correct(d, [Click(('a', 1, 2))], patch=8)
def click_dict_without_point(d): return _correct(d, [{'pt': [1, 2, 3], 'positive': True}], patch=8)
def unknown_space(d): return _correct(d, [Click((1, 1, 1))], space='pixels', patch=8)
def patch_zero(d): return _correct(d, [Click((1, 1, 1))], space='voxel', patch=0)
def patch_fractional(d): return _correct(d, [Click((1, 1, 1))], space='voxel', patch=(8, 8.5, 8))


def mask_on_other_grid(d):
    image, _ = _image(d)
    return lambda: correct(correction_unet(), image, torch.zeros(1, 8, 8, 8), [Click((1, 1, 1))], space='voxel', patch=8)


def image_without_geometry(d):
    _, mask = _image(d)
    return lambda: correct(correction_unet(), torch.zeros(1, *SHAPE), mask, [Click((1, 1, 1))], space='voxel', patch=8)


def simulated_user_mask_shape(d):
    return lambda: simulate_click(np.ones(SHAPE), np.ones((8, 8, 8)))


def samples_with_bad_patch(d):
    image, mask = _image(d)
    ds = CorrectionSamples([(image, mask)], length=2, patch=-4)
    return lambda: ds[0]


CATALOGUE = [
    Case('click_outside_volume', 'inference', click_outside_volume, 'clicks[1]=(3, 40, 3) (voxel)', 'outside the image of shape (16, 12, 8)'),
    Case('click_world_far_away', 'inference', click_world_far_away, 'clicks[0]=(500.0, 0.0, 0.0) (world)', 'outside the image'),
    Case('click_two_coordinates', 'inference', click_two_coordinates, 'clicks[0]=(4, 5)', 'expected 3 finite coordinates'),
    Case('click_not_a_number', 'inference', click_not_a_number, "clicks[0]=('a', 1, 2)", 'expected 3 finite coordinates'),
    Case('click_dict_without_point', 'inference', click_dict_without_point, "clicks[0]={'pt': [1, 2, 3], 'positive': True}", 'expected a Click, (point, positive)'),
    Case('unknown_space', 'inference', unknown_space, "space='pixels'", "expected 'world' or 'voxel'"),
    Case('patch_zero', 'inference', patch_zero, 'patch=0', 'expected a positive whole number of voxels'),
    Case('patch_fractional', 'inference', patch_fractional, 'patch=(8, 8.5, 8)', 'expected a positive whole number of voxels'),
    Case('mask_on_other_grid', 'inference', mask_on_other_grid, 'mask', 'is not the image'),
    Case('image_without_geometry', 'inference', image_without_geometry, 'image', 'expected a MedImage'),
    Case('simulated_user_mask_shape', 'training', simulated_user_mask_shape, 'mask', "shape (8, 8, 8) differs from the truth's (16, 12, 8)"),
    Case('samples_with_bad_patch', 'training', samples_with_bad_patch, 'patch=-4', 'expected a positive whole number of voxels'),
]


@pytest.mark.parametrize('case', CATALOGUE, ids=[f'{c.stage}-{c.id}' for c in CATALOGUE])
def test_bad_input(tmp_path, case):
    call = case.build(tmp_path)
    before = file_states(tmp_path)
    with pytest.raises(case.error) as info: call()
    msg = _one_line(str(info.value))
    assert msg.startswith(case.culprit.split('=')[0]), f"{msg!r} does not start with the culprit"
    assert case.culprit in msg, f"{case.culprit!r} not named in {msg!r}"
    assert case.problem in msg, f"{case.problem!r} not in {msg!r}"
    assert_user_files_kept(tmp_path, before, case.outputs)
