"""Catalogue of bad inputs for `fastmed.io.read_volume`.

Each case builds a broken image (file, DICOM folder or channel list) in a temporary folder and checks that
`read_volume` raises `MedicalInputError` with a single-line message naming the culprit and the problem.
"""
import numpy as np
import nibabel as nib
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from fastmed.io import MedicalInputError, read_volume


def nifti(path, arr, affine=None):
    "Save `arr` as float32 NIfTI with `affine` written as a raw sform (no qform), so broken affines survive."
    arr = np.asarray(arr, dtype=np.float32)
    hdr = nib.Nifti1Header(); hdr.set_data_shape(arr.shape)
    hdr['srow_x'], hdr['srow_y'], hdr['srow_z'], hdr['sform_code'] = *(np.eye(4) if affine is None else affine)[:3], 1
    nib.save(nib.Nifti1Image(arr, None, hdr), path)
    return path


def dicom_series(folder, n=7, spacing=3.0, series_uid=None, skip=(), orientation=None):
    "Write an 8×8×`n` CT series (one file `kk.dcm` per slice, `spacing` mm apart) into `folder`."
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    for k in range(n):
        if k in skip: continue
        ds, uid = Dataset(), generate_uid()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID, ds.file_meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.Modality = CTImageStorage, uid, series_uid, 'CT'
        ds.ImageOrientationPatient = (orientation or {}).get(k, [1, 0, 0, 0, 1, 0])
        ds.ImagePositionPatient = [0, 0, DSfloat(k*spacing, auto_format=True)]
        ds.PixelSpacing, ds.Rows, ds.Columns = [1, 1], 8, 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 'MONOCHROME2'
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.full((8, 8), k, '<i2').tobytes()
        ds.save_as(folder/f'{k:02d}.dcm', enforce_file_format=True)
    return folder


def _vol(shape=(6, 7, 8)): return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def missing(d): return d/'missing.nii.gz', {}
def empty(d): (d/'empty.nii.gz').touch(); return d/'empty.nii.gz', {}
def unknown_suffix(d): (d/'scan.png').write_bytes(b'\x89PNG'); return d/'scan.png', {}


def truncated_gz(d):
    b = nifti(d/'ok.nii.gz', _vol()).read_bytes()
    (d/'trunc.nii.gz').write_bytes(b[:len(b)//2]); return d/'trunc.nii.gz', {}


def not_gzip(d): (d/'plain.nii.gz').write_bytes(b'not gzip at all' * 30); return d/'plain.nii.gz', {}


def wrong_magic(d):
    b = nifti(d/'ok.nii', _vol()).read_bytes()
    (d/'magic.nii').write_bytes(b[:344] + b'xxxx' + b[348:]); return d/'magic.nii', {}


def header_claims_more(d):
    b = nifti(d/'ok.nii', _vol()).read_bytes()
    (d/'short.nii').write_bytes(b[:-100]); return d/'short.nii', {}


def nan_voxels(d): v = _vol(); v[0, 0, :3] = np.nan; return nifti(d/'nan.nii.gz', v), {}
def inf_voxels(d): v = _vol(); v[1, 1, 1] = np.inf; return nifti(d/'inf.nii.gz', v), {}
def image_2d(d): return nifti(d/'flat.nii.gz', np.ones((64, 64))), {}
def slice_2d(d): return nifti(d/'slice.nii.gz', np.ones((64, 64, 1))), {}
def image_5d(d): return nifti(d/'five.nii.gz', np.ones((4, 4, 4, 1, 2))), {}
def wrong_channels(d): return nifti(d/'four.nii.gz', np.ones((4, 4, 4, 4))), {'expected_channels': 1}
def zero_spacing(d): return nifti(d/'zero.nii.gz', _vol(), np.diag([1., 0, 2, 1])), {}
def nan_affine(d): return nifti(d/'nanaff.nii.gz', _vol(), np.diag([1., np.nan, 2, 1])), {}


def singular_affine(d):
    a = np.eye(4); a[:3, 1] = [1, 0, 0]; return nifti(d/'singular.nii.gz', _vol(), a), {}


def zero_pixdim(d):
    b = bytearray(nifti(d/'ok.nii', _vol()).read_bytes())
    b[80:92] = np.array([1, 0, 2], '<f4').tobytes()  # pixdim[1:4]
    (d/'pixdim.nii').write_bytes(bytes(b)); return d/'pixdim.nii', {}


def corrupt_mha(d): (d/'bad.mha').write_bytes(b'garbage\n' * 8); return d/'bad.mha', {}


def nan_nrrd(d):
    v = _vol(); v[2, 2, 2] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(v.transpose(2, 1, 0).copy()), str(d/'nan.nrrd')); return d/'nan.nrrd', {}


def channels_affine(d):
    a = np.eye(4); b = a.copy(); b[0, 3] = 2.0
    return [nifti(d/'t1.nii.gz', _vol(), a), nifti(d/'odd_affine.nii.gz', _vol(), b)], {}


def channels_shape(d):
    return [nifti(d/'t1.nii.gz', _vol()), nifti(d/'odd_shape.nii.gz', _vol((6, 7, 9)))], {}


def channels_count(d):
    return [nifti(d/'t1.nii.gz', _vol()), nifti(d/'t2.nii.gz', _vol())], {'expected_channels': 3}


def dicom_missing_slice(d): return dicom_series(d/'gap_series', skip={5}), {}


def dicom_mixed_series(d):
    s = dicom_series(d/'mixed_series')
    (dicom_series(d/'other', n=1)/'00.dcm').rename(s/'zz.dcm')  # a slice of another series
    return s, {}


def dicom_mixed_orientation(d): return dicom_series(d/'oblique_series', orientation={3: [0, 1, 0, 1, 0, 0]}), {}
def dicom_empty_folder(d): (d/'no_dicom').mkdir(); (d/'no_dicom'/'README').write_text('x'); return d/'no_dicom', {}


CASES = [  # (builder, text naming the culprit, keyword for the problem)
    (missing, 'missing.nii.gz', 'does not exist'),
    (empty, 'empty.nii.gz', 'empty'),
    (unknown_suffix, 'scan.png', 'unknown suffix'),
    (truncated_gz, 'trunc.nii.gz', 'truncated'),
    (not_gzip, 'plain.nii.gz', 'Not a gzipped file'),
    (wrong_magic, 'magic.nii', 'not a readable NIfTI'),
    (header_claims_more, 'short.nii', 'truncated'),
    (nan_voxels, 'nan.nii.gz', '3 NaN'),
    (inf_voxels, 'inf.nii.gz', '1 Inf'),
    (image_2d, 'flat.nii.gz', 'is 2D'),
    (slice_2d, 'slice.nii.gz', 'is 2D'),
    (image_5d, 'five.nii.gz', '5D'),
    (wrong_channels, 'four.nii.gz', 'has 4 channels (4D image), expected 1'),
    (zero_spacing, 'zero.nii.gz', 'spacing'),
    (nan_affine, 'nanaff.nii.gz', 'non-finite'),
    (singular_affine, 'singular.nii.gz', 'singular'),
    (zero_pixdim, 'pixdim.nii', 'spacing'),
    (corrupt_mha, 'bad.mha', 'not a readable ITK'),
    (nan_nrrd, 'nan.nrrd', '1 NaN'),
    (channels_affine, 'odd_affine.nii.gz', 'affine mismatch'),
    (channels_shape, 'odd_shape.nii.gz', 'shape mismatch'),
    (channels_count, 't2.nii.gz', 'expected 3'),
    (dicom_missing_slice, 'gap_series', 'missing slice'),
    (dicom_mixed_series, 'mixed_series', 'mixed series: 2 series'),
    (dicom_mixed_orientation, 'oblique_series', 'mixed orientations'),
    (dicom_empty_folder, 'no_dicom', 'no DICOM'),
]


@pytest.mark.parametrize('build,name,keyword', CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input(tmp_path, build, name, keyword):
    source, kwargs = build(tmp_path)
    with pytest.raises(MedicalInputError) as info:
        read_volume(source, **kwargs)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert '\n' not in msg and '\r' not in msg, msg
    assert name in msg, msg
    assert keyword in msg.replace(str(tmp_path), '<tmp>'), msg  # the tmp folder is named after the test id


def test_good_inputs_still_read(tmp_path):
    "The builders' healthy versions read fine, so each case above fails for its own reason only."
    x, a = read_volume(nifti(tmp_path/'ok.nii.gz', _vol()), expected_channels=1)
    assert x.shape == (1, 6, 7, 8) and a.shape == (4, 4)
    x, a = read_volume(dicom_series(tmp_path/'series'))
    assert x.shape == (1, 8, 8, 7) and np.allclose(np.diag(a), [-1, -1, 3, 1]) and x[0, 0, 0, 4] == 4
