"""`fastmed predict --format dicom-seg` end to end: DICOM series written with pydicom in three geometries (axial LPS,
sagittal, oblique), a saved two-label model, the SEG read back with highdicom (through the source slices' UIDs) and
compared voxel for voxel with the NIfTI prediction of the same series; NIfTI input and a series with a missing slice
refused. `blob_model` and `blob_series` are shared with test_pacs.py and test_app.py.
"""
import contextlib, io, json
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from fastai.vision.all import Learner, ImageBlock, ColReader, RandomSplitter
from monai.losses import DiceLoss

from fastmed.cli import main
from fastmed.core import MedImage, MedMask
from fastmed.data import MedDataBlock, MedMaskBlock
from fastmed.dicomseg import write_dicom_series, read_dicom_seg
from fastmed.export import build_model, save_model, load_model
from fastmed.inference import predict_volume
from fastmed.io import write_nifti
from fastmed.losses import CustomLoss
from fastmed.postprocess import label_volumes
from fastmed.synthetic import make_affine

SHAPE = (30, 26, 14)


def _sagittal(spacing=(1.1, 1.3, 2.5), shape=SHAPE):
    "RAS affine of a sagittal series: columns run anterior→posterior, rows superior→inferior, slices left→right."
    m = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float) * spacing
    aff = np.eye(4); aff[:3, :3] = m; aff[:3, 3] = -m @ ((np.array(shape) - 1) / 2)
    return aff


GEOMETRIES = {'axial': make_affine((1.2, 1.2, 2.5), 'LPS', shape=SHAPE), 'sagittal': _sagittal(),
              'oblique': make_affine((1.3, 1.1, 2.2), 'oblique', shape=SHAPE)}


def blob_volume(affine, shape=SHAPE, radius=10., core=5., centre=(2., -3., 1.)):
    "Intensities 0 outside, 1 in a ball of `radius` mm, 2 in its core (world mm, so every grid sees the same body)."
    ijk = np.indices(shape).reshape(3, -1)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:]).reshape(3, *shape) - np.array(centre)[:, None, None, None]
    r2 = (world ** 2).sum(0)
    return (r2 < radius ** 2).astype(np.float32) + (r2 < core ** 2).astype(np.float32)


def blob_series(folder, affine, **study):
    "A CT series of `blob_volume(affine)`, as a scanner would write it."
    return write_dicom_series(folder, blob_volume(affine), affine, **study)


def blob_model(d: Path) -> Path:
    "A saved 3-class model (1×1×1 convolution, softmax): label 1 where the intensity is near 1, label 2 near 2."
    aff = make_affine((1.5, 1.5, 1.5), 'RAS', shape=SHAPE)
    vol = blob_volume(aff)
    write_nifti(d / 'img.nii.gz', vol[None], aff); write_nifti(d / 'msk.nii.gz', vol[None], aff, dtype=np.uint8)
    df = pd.DataFrame({'img': [str(d / 'img.nii.gz')] * 2, 'msk': [str(d / 'msk.nii.gz')] * 2})
    dls = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('img'), get_y=ColReader('msk'),
                       splitter=RandomSplitter(0.5, seed=0), reorder=True, resample=1.5).dataloaders(df, bs=1)
    net = build_model('torch.nn.Conv3d', in_channels=1, out_channels=3, kernel_size=1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([-10., 0., 10.]).view(3, 1, 1, 1, 1)); net.bias.copy_(torch.tensor([5., 0., -15.]))
    learn = Learner(dls, net, loss_func=CustomLoss(DiceLoss(softmax=True, to_onehot_y=True)))
    return save_model(learn, d / 'model' / 'blob')


def run_cli(*argv) -> tuple:
    "fastmed's main(argv) in this process: (status, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope='module')
def model(tmp_path_factory) -> Path: return blob_model(tmp_path_factory.mktemp('model'))


@pytest.fixture(scope='module')
def series(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp('series')
    return {name: blob_series(d / name, aff) for name, aff in GEOMETRIES.items()}


SEGMENTS = {'1': {'name': 'lesion rim', 'color': '#00ff00', 'category': ['49755003', 'SCT', 'Morphologically abnormal structure'],
                  'type': ['108369006', 'SCT', 'Neoplasm']},
            '2': {'name': 'lesion core', 'color': [255, 0, 0], 'category': ['49755003', 'SCT', 'Morphologically abnormal structure'],
                  'type': ['86049000', 'SCT', 'Malignant neoplasm, primary']}}


def test_seg_equals_nifti_prediction(tmp_path, model, series):
    (tmp_path / 'segments.json').write_text(json.dumps(SEGMENTS))
    status, out, err = run_cli('predict', model, *series.values(), '-o', tmp_path / 'seg', '--format', 'dicom-seg',
                               '--segments', tmp_path / 'segments.json', '-q')
    assert (status, err) == (0, ''), err
    status, out, err = run_cli('predict', model, *series.values(), '-o', tmp_path / 'nii', '-q')
    assert status == 0, err
    seg_table, nii_table = (pd.read_csv(tmp_path / f / 'volumes.csv') for f in ('seg', 'nii'))
    assert [Path(p).name for p in seg_table.output] == [f'{n}_seg.dcm' for n in series]
    for name, folder in series.items():
        nifti = MedMask.create(tmp_path / 'nii' / f'{name}_pred.nii.gz')
        seg_file = tmp_path / 'seg' / f'{name}_seg.dcm'
        seg = hd.seg.segread(seg_file)
        slices = sorted((pydicom.dcmread(f) for f in folder.iterdir()), key=lambda ds: int(ds.InstanceNumber))
        frames = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in slices], combine_segments=True)
        assert np.array_equal(frames.transpose(2, 1, 0), nifti[0].numpy()), name        # voxel for voxel, via highdicom
        assert np.array_equal(read_dicom_seg(seg_file, folder), nifti[0].numpy()), name  # and via fastmed's reader
        counts = np.bincount(nifti[0].numpy().ravel(), minlength=3)
        assert counts[1] > 500 and counts[2] > 20, (name, counts)                          # both labels really there
        truth = blob_volume(GEOMETRIES[name]).astype(int)
        assert (nifti[0].numpy() == truth).mean() > 0.97, name
        assert seg.FrameOfReferenceUID == slices[0].FrameOfReferenceUID and seg.StudyInstanceUID == slices[0].StudyInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == slices[0].SeriesInstanceUID
        assert int(seg.NumberOfFrames) == 2 * len(slices)
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ['lesion rim', 'lesion core']
        assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == '86049000'
        rgb = hd.color.CIELabColor.from_dicom_value(seg.SegmentSequence[0].RecommendedDisplayCIELabValue).to_rgb()
        assert np.allclose(rgb, (0, 255, 0), atol=1)
        ml = {k: round(v, 4) for k, v in label_volumes(nifti).items()}
        assert ml == {1: seg_table.ml_1[list(series).index(name)], 2: seg_table.ml_2[list(series).index(name)]}


def test_seg_matches_python_api(tmp_path, model, series):
    "The CLI's SEG equals what predict_volume + read_dicom_seg give in Python, with default segment names."
    status, _, err = run_cli('predict', model, series['oblique'], '-o', tmp_path, '--format', 'dicom-seg', '-q')
    assert status == 0, err
    mask = predict_volume(load_model(model), series['oblique'])
    assert np.array_equal(read_dicom_seg(tmp_path / 'oblique_seg.dcm', series['oblique']), mask[0].numpy())
    seg = pydicom.dcmread(tmp_path / 'oblique_seg.dcm')
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ['label 1', 'label 2']
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == 'blob'


def test_nifti_input_refused(tmp_path, model, series):
    aff = GEOMETRIES['axial']
    nii = write_nifti(tmp_path / 'scan.nii.gz', blob_volume(aff)[None], aff)
    status, out, err = run_cli('predict', model, series['axial'], nii, '-o', tmp_path / 'out', '--format', 'dicom-seg', '-q')
    assert status == 2 and err.count('\n') == 1, err
    assert err.startswith(f"fastmed: error: '{nii}': is not a DICOM series folder"), err
    assert not (tmp_path / 'out').exists()                                                 # refused before any write


def test_missing_slice_refused(tmp_path, model):
    folder = blob_series(tmp_path / 'gap', GEOMETRIES['axial'])
    (folder / '0006.dcm').unlink()
    status, out, err = run_cli('predict', model, folder, '-o', tmp_path / 'out', '--format', 'dicom-seg', '-q')
    assert status == 1 and err.count('\n') == 1 and 'missing slice' in err and 'gap' in err, err
    assert not list((tmp_path / 'out').glob('*.dcm'))
    table = pd.read_csv(tmp_path / 'out' / 'volumes.csv')
    assert table.output.isna().all() and 'missing slice' in table.error[0]
