"""One table of image suffixes (`fastmed.io.IMAGE_SUFFIXES`), and every reader accepts exactly that table.

One small volume is written in each format of the table; each place that reads, scans, pairs or names image files must
take all of them and nothing else (near misses such as `.nii.bz2`, `.png`, `.img` are not images).
"""
import numpy as np
import pytest
import SimpleITK as sitk

from fastmed.io import IMAGE_SUFFIXES, NIFTI_SUFFIXES, image_suffix, read_volume, write_nifti, MedicalInputError
from fastmed.dataset import read_header, MedDataset
from fastmed.data import pair_image_mask_files
from fastmed.fingerprint import split_image_name
from fastmed.utils import prediction_name

NOT_IMAGES = ('.nii.bz2', '.png', '.img', '.json')
VOL = np.arange(60, dtype=np.float32).reshape(3, 4, 5)


def write(path):
    "One 3×4×5 volume at `path`, in the format its suffix names."
    if image_suffix(path) in NIFTI_SUFFIXES: write_nifti(path, VOL, np.eye(4))
    else: sitk.WriteImage(sitk.GetImageFromArray(VOL.transpose(2, 1, 0).copy()), str(path))
    return path


@pytest.fixture
def folder(tmp_path):
    for i, s in enumerate(IMAGE_SUFFIXES): write(tmp_path/f'case{i}{s}')
    for s in NOT_IMAGES: (tmp_path/f'other{s}').write_bytes(b'not an image')
    return tmp_path


def test_table_is_the_single_list():
    assert IMAGE_SUFFIXES == ('.nii.gz', '.nii', '.nrrd', '.nhdr', '.mha', '.mhd')
    import fastmed.fingerprint, fastmed.dataset, fastmed.external
    assert fastmed.fingerprint.IMAGE_SUFFIXES is IMAGE_SUFFIXES


def test_readers_accept_exactly_the_table(folder):
    for i, s in enumerate(IMAGE_SUFFIXES):
        f = folder/f'case{i}{s}'
        data, affine = read_volume(f)
        np.testing.assert_array_equal(data[0].numpy(), VOL)
        h = read_header(f)
        assert (h['dim0'], h['dim1'], h['dim2']) == (3, 4, 5), s
        assert split_image_name(f) == (f'case{i}', s)
        assert prediction_name(f) == f'case{i}_pred.nii.gz'
    for s in NOT_IMAGES:
        f = folder/f'other{s}'
        with pytest.raises(MedicalInputError, match='unknown suffix'): read_volume(f)
        with pytest.raises(MedicalInputError, match='unknown suffix'): read_header(f)
        assert split_image_name(f) is None


def test_scanners_list_exactly_the_table(folder):
    ds = MedDataset(folder)
    assert sorted(ds.df.path) == sorted(str(folder/f'case{i}{s}') for i, s in enumerate(IMAGE_SUFFIXES))
    assert len(ds.failed) == 0
    pairs = pair_image_mask_files(folder, folder)
    assert sorted(p[0] for p in pairs) == sorted(str(folder/f'case{i}{s}') for i, s in enumerate(IMAGE_SUFFIXES))
